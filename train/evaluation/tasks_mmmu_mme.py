"""MMMU (multiple choice and open answers, per subject) and MME (yes/no pairs, perception/cognition).

Both follow lmms-eval's prompts for the lmms-lab datasets and their official scorers
(`mmmu_parsing.py`, `mme_metric.py`); see `tasks_multiple_choice.py` for `prepare`, `choices` and
`row_fields`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from train.evaluation.mc_parsing import option_letters
from train.evaluation.mme_metric import mme_scores, parse_mme_answer
from train.evaluation.mmmu_parsing import (DOMAINS, eval_open, mmmu_subject, parse_multi_choice_response,
                                           parse_open_response)
from train.evaluation.tasks import SHORT_ANSWER, _require
from train.evaluation.tasks_multiple_choice import (LETTER_ANSWER, grouped_means, letter_choices, mean, with_row_ids,
                                                    yes_no_stripped)

MULTIPLE_CHOICE = "multiple-choice"


@dataclass
class MMMUTask:
    """MMMU (lmms-lab/MMMU: id "<split>_<Subject>_<n>", question, options as a string list,
    answer, question_type "multiple-choice" or "open", image_1...image_7). The model sees image_1, as
    MMMU's own `process_single_sample` gives it. Prompt: lmms-eval `construct_prompt` ("A. <option>"
    lines after the question, then a blank line and the instruction); `prompt_suffix` ends the
    multiple-choice prompts, `open_suffix` the open ones. Accuracy overall (instance level), per
    subject and per domain, as MMMU's `calculate_ins_level_acc`."""

    name: str = "mmmu"
    default_file: str = "mmmu_validation.parquet"
    prompt_template: str = "{question}\nA. {option}\n..."
    prompt_suffix: str = "\n" + LETTER_ANSWER  # a blank line before the instruction (`construct_prompt`)
    open_suffix: str = "\n" + SHORT_ANSWER
    max_new_tokens: int = 32
    row_fields: tuple[str, ...] = ("question_type",)

    def check(self, records: list[dict], source: str) -> None:
        _require(records, {"id", "question", "question_type"}, self.name, source)
        for rec in records:
            mmmu_subject(str(rec["id"]))
            if rec["question_type"] == MULTIPLE_CHOICE:
                self.options(rec)

    def options(self, rec: dict) -> list[str]:
        """The options list (lmms-lab stores it as the text of a Python list)."""
        value = rec.get("options")
        if isinstance(value, str):
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                value = None
        if not isinstance(value, list) or not value:
            raise ValueError(f"MMMU question {rec['id']!r}: options {rec.get('options')!r} are not a list of texts")
        return [str(v) for v in value]

    def prompt(self, rec: dict) -> str:
        if rec["question_type"] != MULTIPLE_CHOICE:
            return rec["question"] + self.open_suffix
        lines = "\n".join(f"{c}. {o}" for c, o in zip(option_letters(len(self.options(rec))), self.options(rec)))
        return f"{rec['question']}\n{lines}{self.prompt_suffix}"

    def references(self, rec: dict) -> list[str]:
        return [str(rec["answer"])] if rec.get("answer") is not None else []

    def choices(self, rec: dict) -> list[tuple[str, str]] | None:
        if rec["question_type"] != MULTIPLE_CHOICE:
            return None  # open questions are generated in either mode
        options = self.options(rec)
        return letter_choices(option_letters(len(options)), options)

    def score_sample(self, prediction: str, rec: dict) -> float:
        if rec["question_type"] == MULTIPLE_CHOICE:
            parsed = parse_multi_choice_response(prediction, dict(self.choices(rec)), seed=str(rec["id"]))
            return float(parsed == rec["answer"])
        return float(eval_open(str(rec["answer"]), parse_open_response(prediction)))

    def aggregate(self, records: list[dict]) -> dict[str, float]:
        rows = [{**r, "subject": mmmu_subject(str(r["id"]))} for r in records]
        out = {"accuracy": mean([r["score"] for r in rows])}
        subjects = grouped_means(rows, "subject")
        for domain, names in DOMAINS.items():
            scores = [r["score"] for r in rows if r["subject"] in names]
            if scores:
                out[f"accuracy_{domain.lower().replace(' ', '_')}"] = mean(scores)
        out.update({f"accuracy_{k}": v for k, v in subjects.items()})
        return out


@dataclass
class MMETask:
    """MME (lmms-lab/MME: question_id (the image, shared by its two questions), image, question,
    answer Yes/No, category = subtask). Prompt: lmms-eval mme's default, the question without its
    " Please answer yes or no." and with the short-answer suffix (LLaVA-1.5's llava_mme.jsonl)."""

    name: str = "mme"
    default_file: str = "mme.parquet"
    prompt_template: str = "{question}"
    prompt_suffix: str = SHORT_ANSWER
    max_new_tokens: int = 16
    row_fields: tuple[str, ...] = ("category", "pair")

    def prepare(self, records: list[dict]) -> list[dict]:
        return with_row_ids(records)

    def check(self, records: list[dict], source: str) -> None:
        _require(records, {"question", "answer", "category", "pair"}, self.name, source)
        for rec in records:
            if str(rec["answer"]).strip().lower().rstrip(".") not in ("yes", "no"):
                raise ValueError(f"{source}: MME answer {rec['answer']!r} (id {rec['id']!r}) is not Yes/No")

    def prompt(self, rec: dict) -> str:
        return yes_no_stripped(rec["question"], self.prompt_suffix)

    def references(self, rec: dict) -> list[str]:
        return [str(rec["answer"])]

    def choices(self, rec: dict) -> list[tuple[str, str]]:
        return [("Yes", "Yes"), ("No", "No")]

    def score_sample(self, prediction: str, rec: dict) -> float:
        gold = str(rec["answer"]).lower().strip().replace(".", "")
        return float(parse_mme_answer(prediction) == gold)

    def aggregate(self, records: list[dict]) -> dict[str, float]:
        out = {"accuracy": mean([r["score"] for r in records])}
        out.update(mme_scores({"category": r["category"], "image": r["pair"], "correct": r["score"]} for r in records))
        return out


MMMU_MME_TASKS = {"mmmu": MMMUTask, "mme": MMETask}
