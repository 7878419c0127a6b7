"""Synthetic near-duplicate pairs at a controlled word n-gram Jaccard similarity.

Why: a dedup step's recall is only meaningful against pairs whose true similarity is known.
A copy here differs from its source by replaced words placed so that every replacement's n-gram
windows are disjoint and every new word is unique, so the exact Jaccard of the two n-gram sets is
(S - d) / (S + d) for S shingles per document and d shingles destroyed: `d` is solved for the
requested similarity and the result is exact up to rounding d (reported by `pair_jaccard`).
Used by the dedup tests and scripts/bench_dedup.py.
"""

from __future__ import annotations

import numpy as np

_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def word(i: int) -> str:
    """A pronounceable-enough lowercase word for id `i` (base-26 letters, at least 3)."""
    out = []
    i = int(i)
    for _ in range(3):
        out.append(_LETTERS[i % 26])
        i //= 26
    while i:
        out.append(_LETTERS[i % 26])
        i //= 26
    return "".join(out)


def pair_jaccard(a: list, b: list, ngram: int = 5) -> float:
    """Exact Jaccard of two token lists' n-gram sets (plain Python sets: the ground truth)."""
    sa = {tuple(a[i:i + ngram]) for i in range(len(a) - ngram + 1)}
    sb = {tuple(b[i:i + ngram]) for i in range(len(b) - ngram + 1)}
    return len(sa & sb) / max(len(sa | sb), 1)


def near_duplicate_ids(rng: np.random.Generator, n_words: int, similarity: float, ngram: int = 5,
                       vocab: int = 10**6, fresh_start: int = 10**7) -> tuple[np.ndarray, np.ndarray]:
    """(source ids, copy ids): random word ids and a copy whose word-`ngram` Jaccard to the source
    is `similarity` (to the rounding of one shingle). New words get ids from `fresh_start` up,
    unique per call only if the caller advances `fresh_start` (see `near_duplicate_pairs`)."""
    if not 0 < similarity <= 1:
        raise ValueError(f"similarity must be in (0, 1], got {similarity}")
    src = rng.integers(vocab, size=n_words)
    copy = src.copy()
    shingles = n_words - ngram + 1
    d = int(round(shingles * (1 - similarity) / (1 + similarity)))
    if d == 0:
        return src, copy
    if d < ngram:
        raise ValueError(f"{n_words} words are too few for similarity {similarity} (need >= {ngram} shingles changed)")
    runs = [1] * (d // ngram - 1) + [d - (d // ngram) * ngram + 1]  # k runs: (k-1) single words + one of m
    spans = [m + ngram - 1 for m in runs]  # a run plus the gap that keeps its windows apart from the next
    room = n_words - 2 * (ngram - 1) - sum(spans)
    if room < 0:
        raise ValueError(f"{n_words} words are too few for similarity {similarity}")
    cuts = np.sort(rng.integers(0, room + 1, size=len(runs)))
    slack = np.diff(np.concatenate([[0], cuts]))
    pos = ngram - 1
    fresh = fresh_start
    for m, span, extra in zip(runs, spans, slack):
        pos += int(extra)
        copy[pos:pos + m] = np.arange(fresh, fresh + m)
        fresh += m
        pos += span
    return src, copy


def near_duplicate_pairs(n_pairs: int, similarity: float, n_words: int = 400, ngram: int = 5,
                         seed: int = 0) -> list[tuple[str, str]]:
    """`n_pairs` (source, copy) texts at word-`ngram` Jaccard `similarity`; all words lowercase."""
    rng = np.random.default_rng(seed)
    out = []
    for p in range(n_pairs):
        src, copy = near_duplicate_ids(rng, n_words, similarity, ngram, fresh_start=10**7 + p * n_words)
        out.append((" ".join(map(word, src)), " ".join(map(word, copy))))
    return out


def punctuated(text: str, rng: np.random.Generator, every: int = 4) -> str:
    """The same words as sentences: a random mark after about one word in `every`, and the word
    after a full stop capitalised. Two calls give copies that differ only in punctuation and case."""
    words = text.split()
    marks = rng.choice([",", ".", ";", "!", "?", ":"], size=len(words))
    use = rng.random(len(words)) < 1 / every
    out, cap = [], True
    for w, m, u in zip(words, marks, use):
        w = w.capitalize() if cap else w
        cap = bool(u) and m in ".!?"
        out.append(w + m if u else w)
    return " ".join(out) + "."
