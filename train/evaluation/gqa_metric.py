"""GQA accuracy: exact match of one short answer, after the normalisation lmms-eval's `gqa` task applies.

GQA's own `eval.py` compares the prediction with the gold answer as they are (`predicted == gold`);
LLaVA-1.5's `scripts/convert_gqa_for_eval.py` lowercases and strips trailing periods before it;
lmms-eval (`lmms_eval/tasks/gqa/gqa.yaml`: `exact_match`, `ignore_case`, `ignore_punctuation`,
computed by `api/metrics.py:exact_match_hf_evaluate`) lowercases and deletes every
`string.punctuation` character. We follow lmms-eval, which covers LLaVA's rule, and also strip
surrounding whitespace (LLaVA's answer files are stripped). No rule drops articles: "the man"
does not match GQA's "man", as in every official scorer.
"""

from __future__ import annotations

import string

_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_gqa_answer(text: str) -> str:
    return text.strip().lower().translate(_NO_PUNCTUATION)


def gqa_match(prediction: str, answer: str) -> float:
    return float(normalize_gqa_answer(prediction) == normalize_gqa_answer(answer))
