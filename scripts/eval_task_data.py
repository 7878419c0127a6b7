"""Small eval files in each benchmark's own layout, written from the Shapes world's VQA questions.

`scripts/bench_eval.py` times `chimera eval` on them and tests/test_eval_batching.py checks that
every task predicts the same at every batch size; neither needs the real benchmarks. Each writer
reads the world's `val_qa.jsonl` and writes, beside it (so image paths resolve as they are), the
columns the lmms-lab dataset of that benchmark has (`train/evaluation/columns.py`).

Multiple choice: a question whose answer comes from a closed vocabulary of at least four words
(colour, count, position; from the world's meta.json) gets four options, its answer and three other
words of that vocabulary, in an order seeded by its id. MME: each such question becomes a yes/no
pair on its image ("... Is the answer "red"?" Yes, and the same with a wrong option: No).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from data.conversation_dataset import read_records
from data.shapes import POSITIONS
from data.writers import write_jsonl

N_OPTIONS = 4
LETTERS = "ABCD"
YES_NO = " Please answer yes or no."  # MME's (and lmms-lab/MME's) question ending
# SEED-Bench's image dimensions (question_type_id) a Shapes question type belongs to
SEED_DIMENSION = {"color": 3, "position": 4, "count": 5}  # instance attributes / location / counting
# MMStar's (category, l2_category) a Shapes question type belongs to
MMSTAR_CATEGORY = {"color": ("fine-grained perception", "attribute recognition"),
                   "position": ("fine-grained perception", "localization"),
                   "count": ("fine-grained perception", "object counting")}
MMMU_SUBJECT = "Math"
VQA_ANSWERS = 10  # VQAv2, TextVQA, VizWiz and OK-VQA have ten human answers per question


@dataclass
class ChoiceQuestion:
    """A world VQA record (id, image, question, answer, type) with its options and the answer's index."""

    rec: dict
    options: list[str]
    answer: int

    @property
    def letter(self) -> str:
        return LETTERS[self.answer]


def answer_vocabularies(world: Path) -> dict[str, list[str]]:
    """Every answer each Shapes question type can have, from the world's parameters."""
    params = json.loads((world / "meta.json").read_text())["params"]
    return {"color": list(params["colors"]), "shape": list(params["shapes"]),
            "count": [str(n) for n in range(params["max_objects"] + 1)],
            "position": sorted(set(POSITIONS.values()))}


def choice_questions(world: Path) -> list[ChoiceQuestion]:
    vocab = answer_vocabularies(world)
    out = []
    for rec in read_records(world / "val_qa.jsonl"):
        words = vocab.get(rec["type"], [])
        if len(words) < N_OPTIONS:
            continue
        rng = random.Random(rec["id"])  # str seeds are hashed by sha512: the same options every run
        options = [rec["answer"], *rng.sample([w for w in words if w != rec["answer"]], N_OPTIONS - 1)]
        rng.shuffle(options)
        out.append(ChoiceQuestion(rec, options, options.index(rec["answer"])))
    return out


def _write(world: Path, name: str, rows) -> Path:
    path = world / name
    if not path.exists():
        write_jsonl(path, rows)
    return path


def vqav2(world: Path) -> Path:
    """lmms-lab/VQAv2: question_id, answers as [{answer, answer_id}], multiple_choice_answer, answer_type."""
    return _write(world, "bench_vqav2.jsonl", (
        {"question_id": r["id"], "image": r["image"], "question": r["question"],
         "answers": [{"answer": r["answer"], "answer_id": k + 1} for k in range(VQA_ANSWERS)],
         "multiple_choice_answer": r["answer"], "answer_type": r["type"]}
        for r in read_records(world / "val_qa.jsonl")))


def ten_answers(world: Path, name: str) -> Path:
    """TextVQA / VizWiz / OK-VQA: `answers`, a list of ten strings (here the world's one answer ten times)."""
    rows = ({**{k: v for k, v in r.items() if k != "answer"}, "answers": [r["answer"]] * VQA_ANSWERS}
            for r in read_records(world / "val_qa.jsonl"))
    return _write(world, name, rows)


def scienceqa_img(world: Path) -> Path:
    """lmms-lab/ScienceQA-IMG: no id (the row position is), `choices` list, `answer` index, `hint`."""
    return _write(world, "bench_scienceqa_img.jsonl", (
        {"image": q.rec["image"], "question": q.rec["question"], "choices": q.options, "answer": q.answer,
         "hint": "The image shows coloured shapes on a 3x3 grid.", "subject": "natural science"}
        for q in choice_questions(world)))


def mmbench(world: Path) -> Path:
    """lmms-lab/MMBench: integer `index`, options in columns A-D, `answer` letter, no hint."""
    return _write(world, "bench_mmbench.jsonl", (
        {"index": i, "image": q.rec["image"], "question": q.rec["question"], "hint": None,
         **dict(zip(LETTERS, q.options)), "answer": q.letter, "category": q.rec["type"], "L2-category": "perception"}
        for i, q in enumerate(choice_questions(world))))


def seed_bench(world: Path) -> Path:
    """lmms-lab/SEED-Bench: choice_a-d, `answer` letter, data_type "image", `image` a list of one."""
    return _write(world, "bench_seed_bench.jsonl", (
        {"question_id": q.rec["id"], "image": [q.rec["image"]], "question": q.rec["question"],
         **{f"choice_{c}": o for c, o in zip("abcd", q.options)}, "answer": q.letter, "data_type": "image",
         "question_type_id": SEED_DIMENSION[q.rec["type"]]}
        for q in choice_questions(world)))


def mmmu(world: Path) -> Path:
    """lmms-lab/MMMU: id "validation_<Subject>_<n>", `options` as a Python list's text, `image_1`,
    "<image 1>" in the question; count questions are open (answer: the number), the rest multiple choice."""
    def row(n: int, q: ChoiceQuestion) -> dict:
        open_ = q.rec["type"] == "count"
        return {"id": f"validation_{MMMU_SUBJECT}_{n + 1}", "image_1": q.rec["image"],
                "question": f"<image 1> {q.rec['question']}", "options": "[]" if open_ else str(q.options),
                "answer": q.rec["answer"] if open_ else q.letter,
                "question_type": "open" if open_ else "multiple-choice"}
    return _write(world, "bench_mmmu.jsonl", (row(n, q) for n, q in enumerate(choice_questions(world))))


def mmstar(world: Path) -> Path:
    """lmms-lab/MMStar: the options inside the question ("Options: A: x, B: y, ..."), `answer` letter."""
    def row(i: int, q: ChoiceQuestion) -> dict:
        options = ", ".join(f"{c}: {o}" for c, o in zip(LETTERS, q.options))
        category, l2 = MMSTAR_CATEGORY[q.rec["type"]]
        return {"index": i, "image": q.rec["image"], "question": f"{q.rec['question']}\nOptions: {options}",
                "answer": q.letter, "category": category, "l2_category": l2}
    return _write(world, "bench_mmstar.jsonl", (row(i, q) for i, q in enumerate(choice_questions(world))))


def mme(world: Path) -> Path:
    """lmms-lab/MME: two questions per image and subtask (`question_id` pairs them, as the image path
    does there), answers Yes/No, `category` the subtask (colour, count, position are MME's own)."""
    def pair(q: ChoiceQuestion) -> list[dict]:
        wrong = q.options[(q.answer + 1) % N_OPTIONS]
        base = {"question_id": f"{q.rec['type']}/{Path(q.rec['image']).name}", "image": q.rec["image"],
                "category": q.rec["type"]}
        return [{**base, "question": f'{q.rec["question"]} Is the answer "{option}"?{YES_NO}', "answer": answer}
                for option, answer in ((q.options[q.answer], "Yes"), (wrong, "No"))]
    return _write(world, "bench_mme.jsonl", (row for q in choice_questions(world) for row in pair(q)))
