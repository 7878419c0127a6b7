"""ROUGE-L as pycocoevalcap's `Rouge` scores captions (`pycocoevalcap/rouge/rouge.py`), in pure Python.

Per image: the longest common subsequence (LCS) of the candidate's and each reference's tokens
gives precision LCS/|candidate| and recall LCS/|reference|; the *maximum* precision and the
maximum recall over the references (each taken separately, not the best reference's pair) make
F = (1 + b^2) P R / (R + b^2 P) with b = 1.2. The corpus score is the mean over images.
Tokens are `caption_metrics.tokenize_caption`'s (pycocoevalcap splits its PTB-tokenised text).
"""

from __future__ import annotations

from collections.abc import Sequence

from train.evaluation.caption_metrics import tokenize_caption

BETA = 1.2


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        row = [0]
        for j, y in enumerate(b):
            row.append(prev[j] + 1 if x == y else max(prev[j + 1], row[j]))
        prev = row
    return prev[-1]


def rouge_l_sample(candidate: str, references: Sequence[str], beta: float = BETA) -> float:
    if not references:
        raise ValueError("ROUGE-L needs at least one reference caption")
    cand = tokenize_caption(candidate)
    if not cand:
        return 0.0
    precision, recall = [], []
    for ref in references:
        tokens = tokenize_caption(ref)
        lcs = lcs_length(tokens, cand)
        precision.append(lcs / len(cand))
        recall.append(lcs / len(tokens) if tokens else 0.0)
    p, r = max(precision), max(recall)
    if p == 0 or r == 0:
        return 0.0
    return (1 + beta**2) * p * r / (r + beta**2 * p)


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """Corpus ROUGE-L (mean over images) and the per-image scores."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference sets")
    scores = [rouge_l_sample(p, refs) for p, refs in zip(predictions, references)]
    return (sum(scores) / len(scores) if scores else 0.0), scores
