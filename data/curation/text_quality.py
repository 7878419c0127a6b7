"""Rule-based text quality filters: Gopher's document rules and DataComp's basic caption rule.

Why rules and not a classifier: they are cheap, transparent (every removal has a named
reason) and their published thresholds were tuned on web text at scale. Defaults are the
values of Rae et al. 2021 ("Scaling Language Models: Methods, Analysis & Insights from
Training Gopher", appendix A.1.1, quality + repetition filters) and of DataComp's "basic"
filter (Gadre et al. 2023) for captions. Each rule is a function returning the reason a
text fails (a short string such as ``"word_count<50"``) or ``None``, so a report can count
removals per rule and show examples.

Words are whitespace-separated tokens. This is our choice: the paper does not say how it
splits words, and datatrove uses a language-specific tokenizer (NLTK for English, which splits
punctuation off). Character fractions in the repetition rules count the characters of the words
involved, not whitespace.

Where we and datatrove's Gopher filters disagree, we follow the paper's wording (quoted in each
rule's docstring): alphabetic words are words *containing* a letter; stop words are matched
case-insensitively (the paper names the words, not a case); the duplicated n-gram rules count the
characters of every word covered by a repeated n-gram once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np

# Gopher's "at least two of these" stop-word list (Rae et al. 2021, A.1.1).
GOPHER_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("\u2022", "\u2023", "\u25e6", "\u2043", "\u2219", "-", "*", "\u00b7")
ELLIPSES = ("...", "\u2026")
# Gopher repetition thresholds: fraction of characters in the most frequent n-gram (n=2..4)
# and in all duplicated n-grams (n=5..10).
GOPHER_TOP_NGRAM = {2: 0.20, 3: 0.18, 4: 0.16}
GOPHER_DUP_NGRAM = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


# ---------------------------------------------------------------- single rules

def word_count(words: Sequence[str], lo: int = 50, hi: int = 100_000) -> str | None:
    """Gopher: too short documents carry little signal, huge ones are usually dumps."""
    if len(words) < lo:
        return f"word_count<{lo}"
    if len(words) > hi:
        return f"word_count>{hi}"
    return None


def mean_word_length(words: Sequence[str], lo: float = 3.0, hi: float = 10.0) -> str | None:
    """Gopher: mean word length outside 3..10 flags tables of numbers, URLs, base64."""
    if not words:
        return f"mean_word_length<{lo:g}"
    mean = sum(map(len, words)) / len(words)
    if mean < lo:
        return f"mean_word_length<{lo:g}"
    if mean > hi:
        return f"mean_word_length>{hi:g}"
    return None


def symbol_to_word_ratio(text: str, words: Sequence[str], max_ratio: float = 0.1) -> str | None:
    """Gopher: '#' (hashtag spam) or ellipsis (truncated snippets) per word above 0.1."""
    n = max(len(words), 1)
    if text.count("#") / n > max_ratio:
        return f"hash_ratio>{max_ratio:g}"
    if sum(text.count(e) for e in ELLIPSES) / n > max_ratio:
        return f"ellipsis_ratio>{max_ratio:g}"
    return None


def bullet_lines(lines: Sequence[str], max_fraction: float = 0.9) -> str | None:
    """Gopher: more than 90% of lines starting with a bullet = navigation menus / lists."""
    lines = [ln for ln in lines if ln.strip()]
    if lines and sum(ln.lstrip().startswith(BULLETS) for ln in lines) / len(lines) > max_fraction:
        return f"bullet_lines>{max_fraction:g}"
    return None


def ellipsis_lines(lines: Sequence[str], max_fraction: float = 0.3) -> str | None:
    """Gopher: more than 30% of lines ending in an ellipsis = truncated previews."""
    lines = [ln for ln in lines if ln.strip()]
    if lines and sum(ln.rstrip().endswith(ELLIPSES) for ln in lines) / len(lines) > max_fraction:
        return f"ellipsis_lines>{max_fraction:g}"
    return None


def alphabetic_words(words: Sequence[str], min_fraction: float = 0.8) -> str | None:
    """Gopher: "We also require that 80% of words in a document contain at least one alphabetic
    character" (else code, numbers, markup)."""
    alphabetic = sum(1 for w in words if w.isalpha() or any(c.isalpha() for c in w))  # fast path first
    if not words or alphabetic / len(words) < min_fraction:
        return f"alphabetic_words<{min_fraction:g}"
    return None


def stop_words(words: Sequence[str], min_count: int = 2, vocabulary=GOPHER_STOP_WORDS) -> str | None:
    """Gopher: "... remove documents that do not contain at least two of the following English
    words: the, be, to, of, and, that, have, with". Matched case-insensitively with surrounding
    punctuation stripped ("The", "with." count), so a sentence-initial "The" is not missed."""
    present = {w.lower().strip(".,;:!?\"'()") for w in words} & vocabulary
    if len(present) < min_count:
        return f"stop_words<{min_count}"
    return None


def _duplicate_fractions(items: Sequence[str]) -> tuple[float, float]:
    """(fraction of items that repeat an earlier one, fraction of characters in those repeats)."""
    items = [x for x in items if x.strip()]
    if not items:
        return 0.0, 0.0
    seen: set[str] = set()
    dup_n = dup_chars = 0
    for x in items:
        if x in seen:
            dup_n += 1
            dup_chars += len(x)
        seen.add(x)
    return dup_n / len(items), dup_chars / max(sum(map(len, items)), 1)


def duplicate_lines(lines: Sequence[str], max_fraction: float = 0.3, max_char_fraction: float = 0.2) -> str | None:
    """Gopher: boilerplate repeats whole lines (headers, 'share this')."""
    frac, chars = _duplicate_fractions(lines)
    if frac > max_fraction:
        return f"duplicate_lines>{max_fraction:g}"
    if chars > max_char_fraction:
        return f"duplicate_line_chars>{max_char_fraction:g}"
    return None


def duplicate_paragraphs(paragraphs: Sequence[str], max_fraction: float = 0.3,
                         max_char_fraction: float = 0.2) -> str | None:
    """Gopher: the same rule over blank-line-separated paragraphs."""
    frac, chars = _duplicate_fractions(paragraphs)
    if frac > max_fraction:
        return f"duplicate_paragraphs>{max_fraction:g}"
    if chars > max_char_fraction:
        return f"duplicate_paragraph_chars>{max_char_fraction:g}"
    return None


class NgramStats:
    """Word n-gram counts of one document for every n, computed once and shared by the n-gram rules.

    Why: the rules ask about n = 2..10; building Python tuples and a Counter for each n was most of
    the Gopher step's time. Here each distinct word gets an id, and the n-gram ids are built from
    the (n-1)-gram ids: pairs (id of the (n-1)-gram at i, id of word i+n-1) are ranked with
    `np.unique`, so equal ids mean exactly equal n-grams (no hashing, no collisions).
    """

    def __init__(self, words: Sequence[str]) -> None:
        vocab: dict[str, int] = {}
        self.ids = np.fromiter((vocab.setdefault(w, len(vocab)) for w in words), dtype=np.int64, count=len(words))
        self.vocab_size = max(len(vocab), 1)
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        self.chars = np.concatenate([[0], np.cumsum(lengths)])  # chars[j] - chars[i]: characters of words i..j-1
        self.lengths = lengths
        self.total = int(self.chars[-1])
        self._keys: dict[int, np.ndarray] = {}
        self._stats: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def grams(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(id of the n-gram starting at each position, count of each id, first position of each id)."""
        if n < 1:
            raise ValueError(f"n-gram size must be >= 1, got {n}")
        if n not in self._stats:
            m = len(self.ids) - n + 1
            if m <= 0:
                empty = np.zeros(0, dtype=np.int64)
                self._stats[n] = (empty, empty, empty)
                return self._stats[n]
            if n == 1:
                pair = self.ids
            else:
                if n - 1 not in self._keys:
                    self.grams(n - 1)
                pair = self._keys[n - 1][:m] * self.vocab_size + self.ids[n - 1:n - 1 + m]
            _, first, inverse, counts = np.unique(pair, return_index=True, return_inverse=True, return_counts=True)
            self._keys[n] = inverse.astype(np.int64)
            self._stats[n] = (self._keys[n], counts, first)
        return self._stats[n]


def top_ngram_fraction(words: Sequence[str], n: int, max_fraction: float,
                       stats: NgramStats | None = None) -> str | None:
    """Gopher: characters covered by the most frequent n-gram (count x its characters) over
    all word characters; catches "click here click here ..." spam. Among equally frequent
    n-grams the first to occur counts (as `Counter.most_common`). `stats`: shared `NgramStats`."""
    stats = stats or NgramStats(words)
    key, counts, first = stats.grams(n)
    if not len(key) or not stats.total:
        return None
    top = int(counts.max())
    start = int(first[counts == top].min())
    gram_chars = int(stats.chars[start + n] - stats.chars[start])
    if top > 1 and top * gram_chars / stats.total > max_fraction:
        return f"top_{n}gram>{max_fraction:g}"
    return None


def duplicate_ngram_fraction(words: Sequence[str], n: int, max_fraction: float,
                             stats: NgramStats | None = None) -> str | None:
    """Gopher: the fraction of characters "contained within all duplicate n-grams" (n = 5..10):
    characters of words covered by any n-gram occurring more than once, each word counted once
    even if covered by several duplicated n-grams (overlapping duplicates are not double counted),
    over all word characters. `stats`: shared `NgramStats`."""
    stats = stats or NgramStats(words)
    key, counts, _ = stats.grams(n)
    if not len(key) or not stats.total:
        return None
    repeated = (counts[key] > 1).astype(np.int64)
    covered = np.convolve(repeated, np.ones(n, dtype=np.int64))[:len(stats.lengths)] > 0  # word j: a start in j-n+1..j
    if int(stats.lengths[covered].sum()) / stats.total > max_fraction:
        return f"duplicate_{n}gram>{max_fraction:g}"
    return None


# ---------------------------------------------------------------- rule sets

@dataclass
class GopherQuality:
    """All Gopher quality + repetition rules with the paper's thresholds as defaults.

    `reasons(text)` lists every failing rule; `__call__(text)` returns the first (the one a
    report counts, so per-rule counts sum to the number removed). Set a threshold to None
    to disable that rule.
    """

    min_words: int | None = 50
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3.0
    max_mean_word_length: float | None = 10.0
    max_symbol_ratio: float | None = 0.1
    max_bullet_lines: float | None = 0.9
    max_ellipsis_lines: float | None = 0.3
    min_alphabetic_words: float | None = 0.8
    min_stop_words: int | None = 2
    max_duplicate_lines: float | None = 0.3
    max_duplicate_line_chars: float | None = 0.2
    max_duplicate_paragraphs: float | None = 0.3
    max_duplicate_paragraph_chars: float | None = 0.2
    top_ngram: dict[int, float] | None = field(default_factory=lambda: dict(GOPHER_TOP_NGRAM))
    duplicate_ngram: dict[int, float] | None = field(default_factory=lambda: dict(GOPHER_DUP_NGRAM))

    def reasons(self, text: str) -> list[str]:
        words = text.split()
        lines = text.splitlines()
        out: list[str | None] = []
        if self.min_words is not None or self.max_words is not None:
            out.append(word_count(words, self.min_words or 0, self.max_words or float("inf")))
        if self.min_mean_word_length is not None or self.max_mean_word_length is not None:
            out.append(mean_word_length(words, self.min_mean_word_length or 0.0,
                                        self.max_mean_word_length or float("inf")))
        if self.max_symbol_ratio is not None:
            out.append(symbol_to_word_ratio(text, words, self.max_symbol_ratio))
        if self.max_bullet_lines is not None:
            out.append(bullet_lines(lines, self.max_bullet_lines))
        if self.max_ellipsis_lines is not None:
            out.append(ellipsis_lines(lines, self.max_ellipsis_lines))
        if self.min_alphabetic_words is not None:
            out.append(alphabetic_words(words, self.min_alphabetic_words))
        if self.min_stop_words is not None:
            out.append(stop_words(words, self.min_stop_words))
        if self.max_duplicate_lines is not None:
            out.append(duplicate_lines(lines, self.max_duplicate_lines, self.max_duplicate_line_chars or 1.0))
        if self.max_duplicate_paragraphs is not None:
            paragraphs = [p.strip() for p in text.split("\n\n")]
            out.append(duplicate_paragraphs(paragraphs, self.max_duplicate_paragraphs,
                                            self.max_duplicate_paragraph_chars or 1.0))
        stats = NgramStats(words) if (self.top_ngram or self.duplicate_ngram) else None
        for n, t in sorted((self.top_ngram or {}).items()):
            out.append(top_ngram_fraction(words, int(n), t, stats))
        for n, t in sorted((self.duplicate_ngram or {}).items()):
            out.append(duplicate_ngram_fraction(words, int(n), t, stats))
        return [r for r in out if r is not None]

    def __call__(self, text: str) -> str | None:
        found = self.reasons(text)
        return found[0] if found else None

    @classmethod
    def from_config(cls, **kwargs) -> "GopherQuality":
        known = {f.name for f in fields(cls)}
        unknown = set(kwargs) - known
        if unknown:
            raise ValueError(f"text_quality: unknown option(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**kwargs)


@dataclass
class CaptionQuality:
    """DataComp's basic filter for image-text pairs (Gadre et al. 2023): caption with more than
    2 words and more than 5 characters, image whose smaller side is at least `min_image_side`
    (DataComp: 200 px) with aspect ratio at most 3. DataComp's fastText English-language check
    is not included (no model at run time).

    `max_word_repeat_fraction` is our addition (off unless set): the most frequent word's share
    of all words; it catches degenerate captions like "a a a a" that pass the length rules.
    """

    min_words: int = 3
    min_chars: int = 6
    min_image_side: int | None = 200
    max_aspect_ratio: float | None = 3.0
    max_word_repeat_fraction: float | None = None

    def text_reason(self, caption: str) -> str | None:
        words = caption.split()
        if len(words) < self.min_words:
            return f"caption_words<{self.min_words}"
        if len(caption.strip()) < self.min_chars:
            return f"caption_chars<{self.min_chars}"
        if self.max_word_repeat_fraction is not None:
            top = Counter(w.lower() for w in words).most_common(1)[0][1]
            if top / len(words) > self.max_word_repeat_fraction:
                return f"caption_word_repeat>{self.max_word_repeat_fraction:g}"
        return None

    def image_reason(self, width: int, height: int) -> str | None:
        if self.min_image_side is not None and min(width, height) < self.min_image_side:
            return f"image_side<{self.min_image_side}"
        if self.max_aspect_ratio is not None and max(width, height) > self.max_aspect_ratio * max(min(width, height), 1):
            return f"aspect_ratio>{self.max_aspect_ratio:g}"
        return None

    def __call__(self, caption: str, size: tuple[int, int] | None = None) -> str | None:
        """First failing reason for a caption and (optionally) an image size (width, height)."""
        reason = self.text_reason(caption)
        if reason is None and size is not None:
            reason = self.image_reason(*size)
        return reason
