"""Reading the chosen option out of a model's free text, one rule per benchmark's official scorer.

No rule here calls a judge model: where the official scorer would ask GPT (MMBench, when neither
a letter nor an option's text is found), the answer counts as wrong and as `unparsed`.
"""

from __future__ import annotations

import string

MMBENCH_LETTERS = "ABCDE"
# (prefix, suffix) around a letter, in the order MMBench tries them (VLMEvalKit `can_infer_option`)
_DECORATIONS = (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."),
                (":", ""), (":", ","), (":", "."), (":", ")"), (":", ")."))


def option_letters(n: int) -> str:
    return string.ascii_uppercase[:n]


def mmbench_letter_in_text(answer: str, letters: str = MMBENCH_LETTERS) -> str | None:
    """The letter an answer names on its own ("B", "(B).", "B. cat", "The answer is (B)."), as
    lmms-eval's `MMBench_Evaluator.can_infer_option` (mmbench/mmbench_evals.py) reads it: split on
    whitespace; exactly one bare letter wins, unless "A" is among more than 3 words (maybe the article);
    then each decoration in turn, where exactly one decorated letter wins."""
    words = [w.strip() for w in answer.split()]

    def count(prefix: str = "", suffix: str = "") -> int:
        return sum(prefix + c + suffix in words for c in letters)

    if count() == 1 and not ("A" in words and len(words) > 3):
        return next(c for c in letters if c in words)
    for prefix, suffix in _DECORATIONS:
        if count(prefix, suffix) == 1:
            return next(c for c in letters if prefix + c + suffix in words)
    return None


def mmbench_option_in_text(answer: str, options: dict[str, str]) -> str | None:
    """The letter of the one option whose text (lower-cased) occurs in the answer (`can_infer_text`)."""
    answer = answer.lower()
    hits = [k for k, text in options.items() if str(text).lower() in answer]
    return hits[0] if len(hits) == 1 else None


def mmbench_choice(answer: str, options: dict[str, str]) -> str | None:
    """MMBench's `can_infer`: a letter named on its own, else the one option whose text it contains."""
    return mmbench_letter_in_text(answer) or mmbench_option_in_text(answer, options)


def scienceqa_correct(prediction: str, target: str) -> bool:
    """lmms-eval's `sqa_process_results` (scienceqa/utils.py, "how llava parses it"): the prediction
    is the letter, or starts with "<capital letter>." and that letter is the target. (LLaVA's own
    eval_science_qa.py changed over time: one version reads only "The answer is X." and guesses at
    random otherwise; this deterministic rule is the one lmms-eval reports with.)"""
    if prediction == target:
        return True
    return len(prediction) >= 2 and prediction[0].isupper() and prediction[1] == "." and prediction[0] == target


def seed_choice(prediction: str) -> str:
    """lmms-eval's `seed_process_result` (seedbench/utils.py): the stripped answer's first character."""
    pred = prediction.strip()
    return pred[0] if len(pred) > 1 else pred


def mmstar_correct(prediction: str, answer: str) -> bool:
    """MMStar's `exact_match` (as in lmms-eval mmstar/utils.py): the answer letter is the first
    character, or follows "(", "option " or "the answer is " at the start."""
    gold = answer.lower().strip().replace("\n", " ")
    pred = prediction.lower().strip().replace("\n", " ")
    for prefix in ("", "(", "option ", "the answer is "):
        if pred.startswith(prefix) and len(pred) > len(prefix):
            if pred[len(prefix)] == gold:
                return True
    return False
