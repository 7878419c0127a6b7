"""Reward functions for the `grpo` stage, chosen in config by `class_path` (a list, summed with weights).

Each scores a batch of completions against the prompts' reference answers, so a reward that needs
the whole batch (CIDEr-D's document frequencies) sees it. `name` keys its logged mean.
"""

from __future__ import annotations

import re
import string

from train.evaluation.caption_metrics import cider_d
from train.evaluation.mc_parsing import mmbench_letter_in_text
from train.evaluation.vqa_metric import normalize_vqa_answer


class Reward:
    """Base: `__call__(completions, answers) -> one float per completion`."""

    name = "reward"

    def __call__(self, completions: list[str], answers: list[str]) -> list[float]:
        raise NotImplementedError


class ExactMatch(Reward):
    """1 when the completion equals the answer after VQA normalisation (case, punctuation,
    articles, number words), the scoring `chimera eval` and validation use; else 0."""

    name = "exact_match"

    def __call__(self, completions: list[str], answers: list[str]) -> list[float]:
        return [float(normalize_vqa_answer(c) == normalize_vqa_answer(str(a))) for c, a in zip(completions, answers)]


class ChoiceLetter(Reward):
    """1 when the option letter the completion names ("B", "(B).", "The answer is B") is the answer's
    letter, read as MMBench's evaluator reads it; `letters` are the options' letters."""

    name = "choice_letter"

    def __init__(self, letters: str = string.ascii_uppercase[:6]) -> None:
        self.letters = letters

    def __call__(self, completions: list[str], answers: list[str]) -> list[float]:
        out = []
        for c, a in zip(completions, answers):
            picked = mmbench_letter_in_text(c, self.letters)
            out.append(float(picked is not None and picked == mmbench_letter_in_text(str(a), self.letters)))
        return out


class CaptionCIDEr(Reward):
    """Per-completion CIDEr-D against the reference caption, document frequencies over the batch's
    references (as CIDEr-D over an evaluated set; a batch is the set here)."""

    name = "cider"

    def __call__(self, completions: list[str], answers: list[str]) -> list[float]:
        return cider_d(completions, [[str(a)] for a in answers])[1]


class FormatReward(Reward):
    """1 when the stripped completion matches `pattern` whole (default: one to three words, a
    short answer as VQA wants it), else 0."""

    name = "format"

    def __init__(self, pattern: str = r"\S+(?: \S+){0,2}") -> None:
        try:
            self.pattern = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"FormatReward pattern {pattern!r} is not a regular expression: {err}") from err

    def __call__(self, completions: list[str], answers: list[str]) -> list[float]:
        return [float(self.pattern.fullmatch(c.strip()) is not None) for c in completions]
