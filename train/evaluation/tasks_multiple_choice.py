"""Multiple-choice tasks: ScienceQA (image subset), MMBench (circular), SEED-Bench (image subset), MMStar.

Each reads the lmms-lab dataset's columns (`columns.py`), builds the prompt LLaVA-1.5's eval scripts
build, and scores with the benchmark's official answer reading (`mc_parsing.py`). Beyond the task
protocol of `tasks.py`, a multiple-choice task has:
  prepare(records)  the records to evaluate (MMBench: one per rotation of the options; SEED: the
                    image questions; ScienceQA/MME without ids: the row position as id)
  choices(rec)      [(label, continuation)] scored by `--mc-mode loglik` (`loglik.py`)
  row_fields        record fields copied into each per-sample row for `aggregate`
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from train.evaluation.mc_parsing import (mmbench_choice, mmstar_correct, option_letters, scienceqa_correct,
                                         seed_choice)
from train.evaluation.tasks import _require

# llava/eval/model_vqa_mmbench.py and model_vqa_science.py with --single-pred-prompt (scripts/v1_5/eval/
# mmbench.sh, sqa.sh); llava-seed-bench.jsonl ends its questions the same way (lmms-eval seedbench/utils.py)
LETTER_ANSWER = "\nAnswer with the option's letter from the given choices directly."
CIRCULAR_STRIDE = 1_000_000  # VLMEvalKit/MMBench: rotation k of question i has index i + k * 1e6

# SEED-Bench's image dimensions: question_type_id 1-9 of SEED-Bench.json's question_type table
SEED_DIMENSIONS = {1: "scene_understanding", 2: "instance_identity", 3: "instance_attributes",
                   4: "instance_location", 5: "instances_counting", 6: "spatial_relation",
                   7: "instance_interaction", 8: "visual_reasoning", 9: "text_understanding"}


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def grouped_means(rows: list[dict], field: str, score: str = "score") -> dict[str, float]:
    groups: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r.get(field) is not None:
            groups[str(r[field])].append(r[score])
    return {k: mean(v) for k, v in sorted(groups.items())}


def with_row_ids(records: list[dict]) -> list[dict]:
    """Records without an `id` (lmms-lab/ScienceQA, MME's shared question_id) get their row position
    (lmms-eval's doc_id); given ids are kept."""
    return [rec if "id" in rec else {**rec, "id": n} for n, rec in enumerate(records)]


def yes_no_stripped(question: str, suffix: str) -> str:
    """lmms-eval's MME / MMStar prompt: the question's own " Please answer yes or no." gives way to
    the task's suffix when there is one."""
    question = question.strip()
    if suffix:
        question = question.replace(" Please answer yes or no.", "")
    return question + suffix


def letter_choices(letters: str, texts: list[str]) -> list[tuple[str, str]]:
    return list(zip(letters, (str(t) for t in texts)))


def is_missing(value) -> bool:
    """An empty MMBench cell as pandas and lmms-lab store it (`is_none` of model_vqa_mmbench.py)."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or \
        (isinstance(value, str) and value.lower() in ("nan", "none"))


@dataclass
class ScienceQATask:
    """ScienceQA-IMG (lmms-lab/ScienceQA `ScienceQA-IMG`): `choices` list, `answer` index, `hint`
    context. Prompt: lmms-eval `sqa_doc_to_text` ("Context: <hint>\\n" when there is one, the question,
    "A. <choice>" lines) with LLaVA's single-prediction suffix."""

    name: str = "scienceqa_img"
    default_file: str = "scienceqa_img.parquet"
    prompt_template: str = "Context: {hint}\n{question}\n{options}"
    prompt_suffix: str = LETTER_ANSWER
    max_new_tokens: int = 16
    row_fields: tuple[str, ...] = ("subject",)

    def prepare(self, records: list[dict]) -> list[dict]:
        return with_row_ids(records)

    def check(self, records: list[dict], source: str) -> None:
        _require(records, {"question", "choices", "answer"}, self.name, source)

    def prompt(self, rec: dict) -> str:
        letters = option_letters(len(rec["choices"]))
        options = "\n".join(f"{c}. {t}" for c, t in zip(letters, rec["choices"]))
        context = f"Context: {rec['hint']}\n" if rec.get("hint") else ""
        return f"{context}{rec['question']}\n{options}{self.prompt_suffix}"

    def references(self, rec: dict) -> list[str]:
        return [option_letters(len(rec["choices"]))[int(rec["answer"])]]

    def choices(self, rec: dict) -> list[tuple[str, str]]:
        return letter_choices(option_letters(len(rec["choices"])), rec["choices"])

    def score_sample(self, prediction: str, rec: dict) -> float:
        return float(scienceqa_correct(prediction, self.references(rec)[0]))

    def aggregate(self, records: list[dict]) -> dict[str, float]:
        out = {"accuracy": mean([r["score"] for r in records])}
        out.update({f"accuracy_{k}": v for k, v in grouped_means(records, "subject").items()})
        return out


@dataclass
class MMBenchTask:
    """MMBench (lmms-lab/MMBench: index, question, hint, A-D, answer letter, category, L2-category).

    Circular evaluation (MMBench's official rule): a question with n options is asked n times, the
    options rotated by one each time (as `model_vqa_mmbench.py --all-rounds`), and counts as right only
    when every rotation is. Rotation k of index i has id i + k * 1e6, VLMEvalKit's numbering, so a
    data file that already holds the rotations (the official TSVs) is used as it is. Answers are read
    with MMBench's `can_infer` (`mc_parsing.mmbench_choice`); an answer it cannot read is wrong."""

    name: str = "mmbench"
    default_file: str = "mmbench_dev_en.parquet"
    prompt_template: str = "{hint}\n{question}\nA. {A}\nB. {B}..."
    prompt_suffix: str = LETTER_ANSWER
    max_new_tokens: int = 16
    circular: bool = True
    row_fields: tuple[str, ...] = ("category", "l2_category", "round")

    def options(self, rec: dict) -> list[str]:
        """The option texts up to the first empty letter column (`get_options`)."""
        out = []
        for letter in "ABCDE":
            if is_missing(rec.get(letter)):
                break
            out.append(str(rec[letter]))
        return out

    def prepare(self, records: list[dict]) -> list[dict]:
        for rec in records:
            if not isinstance(rec.get("id"), int) and not str(rec.get("id")).isdigit():
                raise ValueError(f"MMBench index {rec.get('id')!r} is not an integer (circular copies are "
                                 f"numbered index + k * {CIRCULAR_STRIDE})")
        records = [{**rec, "id": int(rec["id"])} for rec in records]
        if not self.circular or any(rec["id"] >= CIRCULAR_STRIDE for rec in records):
            return [{**rec, "round": rec["id"] // CIRCULAR_STRIDE} for rec in records]
        out = []
        for rec in records:
            options = self.options(rec)
            answer = "ABCDE".index(rec["answer"]) if rec.get("answer") in tuple("ABCDE") else None
            for k in range(len(options)):
                rotated = options[k:] + options[:k]
                copy = {**rec, **dict(zip("ABCDE", rotated)), "id": rec["id"] + k * CIRCULAR_STRIDE, "round": k}
                if answer is not None:
                    copy["answer"] = "ABCDE"[(answer - k) % len(options)]
                out.append(copy)
        return out

    def check(self, records: list[dict], source: str) -> None:
        _require(records, {"id", "question", "A", "B"}, self.name, source)

    def prompt(self, rec: dict) -> str:
        question = rec["question"] if is_missing(rec.get("hint")) else f"{rec['hint']}\n{rec['question']}"
        for letter, text in zip("ABCDE", self.options(rec)):
            question += f"\n{letter}. {text}"
        return question + self.prompt_suffix

    def references(self, rec: dict) -> list[str]:
        return [str(rec["answer"])] if rec.get("answer") else []

    def choices(self, rec: dict) -> list[tuple[str, str]]:
        options = self.options(rec)
        return letter_choices(option_letters(len(options)), options)

    def score_sample(self, prediction: str, rec: dict) -> float:
        return float(mmbench_choice(prediction, dict(self.choices(rec))) == rec["answer"])

    def aggregate(self, records: list[dict]) -> dict[str, float]:
        """accuracy: circular (all rotations right) over questions, and per category / l2-category;
        accuracy_single: the first rotation alone (the non-circular number)."""
        questions: dict[int, list[dict]] = defaultdict(list)
        for r in records:
            questions[int(r["id"]) % CIRCULAR_STRIDE].append(r)
        hits = [{"score": float(all(r["score"] for r in rs)), "category": rs[0].get("category"),
                 "l2_category": rs[0].get("l2_category")} for _, rs in sorted(questions.items())]
        out = {"accuracy": mean([h["score"] for h in hits])}
        first = [r["score"] for r in records if int(r["id"]) < CIRCULAR_STRIDE]
        if first:
            out["accuracy_single"] = mean(first)
        out.update({f"accuracy_{k}": v for k, v in grouped_means(hits, "category").items()})
        out.update({f"accuracy_l2_{k}": v for k, v in grouped_means(hits, "l2_category").items()})
        return out


@dataclass
class SEEDBenchTask:
    """SEED-Bench image questions (lmms-lab/SEED-Bench: question_id, question, choice_a-d, answer letter,
    data_type, question_type_id, image list). Read as lmms-eval's `seed_process_result`: the answer's
    first character. Accuracy overall and per dimension (question_type_id)."""

    name: str = "seed_bench"
    default_file: str = "seed_bench.parquet"
    prompt_template: str = "{question}\nA. {choice_a}\nB. {choice_b}\nC. {choice_c}\nD. {choice_d}"
    prompt_suffix: str = LETTER_ANSWER
    max_new_tokens: int = 16
    row_fields: tuple[str, ...] = ("question_type_id",)

    def prepare(self, records: list[dict]) -> list[dict]:
        """The image questions (data_type "image"), each with its one image."""
        out = []
        for rec in records:
            if rec.get("data_type", "image") != "image":
                continue
            image = rec.get("image")
            if isinstance(image, list):
                if len(image) != 1:
                    raise ValueError(f"SEED-Bench image question {rec.get('id')!r} has {len(image)} images; "
                                     "expected one")
                rec = {**rec, "image": image[0]}
            out.append(rec)
        return out

    def check(self, records: list[dict], source: str) -> None:
        _require(records, {"id", "question", "answer", "choice_a", "choice_b", "choice_c", "choice_d"}, self.name,
                 source)

    def prompt(self, rec: dict) -> str:
        return self.prompt_template.format(**rec) + self.prompt_suffix

    def references(self, rec: dict) -> list[str]:
        return [str(rec["answer"])]

    def choices(self, rec: dict) -> list[tuple[str, str]]:
        return letter_choices("ABCD", [rec[f"choice_{c}"] for c in "abcd"])

    def score_sample(self, prediction: str, rec: dict) -> float:
        return float(seed_choice(prediction) == rec["answer"])

    def aggregate(self, records: list[dict]) -> dict[str, float]:
        out = {"accuracy": mean([r["score"] for r in records])}
        for key, value in grouped_means(records, "question_type_id").items():
            out[f"accuracy_{SEED_DIMENSIONS.get(int(key), key)}"] = value
        return out


@dataclass
class MMStarTask:
    """MMStar (Lin-Chen/MMStar, lmms-lab layout: index, question with its options, answer letter,
    category, l2_category). Prompt and scoring as lmms-eval mmstar (its default post_prompt, which has
    no final period; MMStar's `exact_match`). `average` is lmms-eval's number: the mean of the
    l2-categories' accuracies; a category's accuracy is the mean of its l2-categories'."""

    name: str = "mmstar"
    default_file: str = "mmstar.parquet"
    prompt_template: str = "{question}"
    prompt_suffix: str = "\nAnswer with the option's letter from the given choices directly"
    max_new_tokens: int = 16
    row_fields: tuple[str, ...] = ("category", "l2_category")

    def check(self, records: list[dict], source: str) -> None:
        _require(records, {"id", "question", "answer"}, self.name, source)

    def prompt(self, rec: dict) -> str:
        return yes_no_stripped(rec["question"], self.prompt_suffix)

    def references(self, rec: dict) -> list[str]:
        return [str(rec["answer"])]

    def choices(self, rec: dict) -> list[tuple[str, str]]:
        """The options are inside the question text: the letters themselves are scored."""
        return letter_choices("ABCD", list("ABCD"))

    def score_sample(self, prediction: str, rec: dict) -> float:
        return float(mmstar_correct(prediction, str(rec["answer"])))

    def aggregate(self, records: list[dict]) -> dict[str, float]:
        out = {"accuracy": mean([r["score"] for r in records])}
        l2 = grouped_means(records, "l2_category")
        if l2:
            out["average"] = mean(list(l2.values()))
            parent = {str(r["l2_category"]): str(r.get("category")) for r in records if r.get("l2_category")}
            by_category: dict[str, list[float]] = defaultdict(list)
            for name, value in l2.items():
                by_category[parent[name]].append(value)
            out.update({f"accuracy_{k}": mean(v) for k, v in sorted(by_category.items())})
            out.update({f"accuracy_l2_{k}": v for k, v in l2.items()})
        return out


MULTIPLE_CHOICE_TASKS = {"scienceqa_img": ScienceQATask, "mmbench": MMBenchTask, "seed_bench": SEEDBenchTask,
                         "mmstar": MMStarTask}
