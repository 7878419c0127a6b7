"""CIDEr-D and BLEU-4 in pure Python (no Java), following pycocoevalcap's definitions.

Tokenisation differs from the COCO toolkit's Stanford PTB tokenizer (Java): we lowercase and
keep runs of letters, digits and apostrophes, dropping all other punctuation. On plain
English captions the two agree almost always; hyphenated words ("t-shirt") are split here.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

_WORD = re.compile(r"[a-z0-9']+")


def tokenize_caption(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


# --------------------------------------------------------------------------- CIDEr-D


def _tfidf(words: list[str], df: Counter, log_num_images: float, max_n: int) -> tuple[list[dict], list[float], int]:
    """Per n: {ngram: tf * idf} and its L2 norm; length counts bigrams, as pycocoevalcap does."""
    vecs, norms, length = [], [], 0
    for n in range(1, max_n + 1):
        counts = ngrams(words, n)
        vec = {g: tf * (log_num_images - math.log(max(1.0, df[g]))) for g, tf in counts.items()}
        vecs.append(vec)
        norms.append(math.sqrt(sum(v * v for v in vec.values())))
        if n == 2:
            length = sum(counts.values())
    return vecs, norms, length


def _cider_similarity(hyp, ref, sigma: float) -> list[float]:
    (hv, hn, hl), (rv, rn, rl) = hyp, ref
    penalty = math.exp(-((hl - rl) ** 2) / (2 * sigma**2))
    out = []
    for vh, vr, nh, nr in zip(hv, rv, hn, rn):
        # CIDEr-D clips the candidate's weights at the reference's (no reward for repeating)
        val = sum(min(w, vr[g]) * vr[g] for g, w in vh.items() if g in vr)
        out.append(val / (nh * nr) * penalty if nh != 0 and nr != 0 else 0.0)
    return out


def cider_d(predictions: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4,
            sigma: float = 6.0) -> tuple[float, list[float]]:
    """Corpus CIDEr-D and per-image scores; document frequencies come from the references
    of the whole evaluated set, so a score depends on the set it is computed over."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference sets")
    if not predictions:
        return 0.0, []
    refs_tok = [[tokenize_caption(r) for r in refs] for refs in references]
    df: Counter = Counter()
    for refs in refs_tok:
        df.update({g for r in refs for n in range(1, max_n + 1) for g in ngrams(r, n)})
    log_n = math.log(float(len(predictions)))
    scores = []
    for pred, refs in zip(predictions, refs_tok):
        if not refs:
            raise ValueError("every image needs at least one reference caption")
        hyp = _tfidf(tokenize_caption(pred), df, log_n, max_n)
        total = [0.0] * max_n
        for r in refs:
            total = [a + b for a, b in zip(total, _cider_similarity(hyp, _tfidf(r, df, log_n, max_n), sigma))]
        scores.append(sum(total) / max_n / len(refs) * 10.0)
    return sum(scores) / len(scores), scores


# --------------------------------------------------------------------------- BLEU


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """Corpus BLEU-n (Papineni et al.): clipped n-gram precisions summed over the corpus,
    geometric mean, brevity penalty against the closest reference length (ties: shorter).
    A zero precision gives 0, with no smoothing."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference sets")
    matched, total = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for pred, refs in zip(predictions, references):
        hyp = tokenize_caption(pred)
        refs_tok = [tokenize_caption(r) for r in refs]
        hyp_len += len(hyp)
        ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in refs_tok)[1]
        for n in range(1, max_n + 1):
            counts = ngrams(hyp, n)
            max_ref: Counter = Counter()
            for r in refs_tok:
                max_ref |= ngrams(r, n)
            matched[n - 1] += sum(min(c, max_ref[g]) for g, c in counts.items())
            total[n - 1] += max(0, len(hyp) - n + 1)
    if hyp_len == 0 or any(m == 0 for m in matched):
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matched, total)) / max_n
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_precision)
