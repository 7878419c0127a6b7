"""Evaluation tasks: how a record becomes a prompt, what its references are, how it is scored.

A task is data + three small functions; adding one never means copying a 100-line block.
Records use the project's field names (`data/eval_formats.py` converts official files to our JSONL;
`train/evaluation/columns.py` maps the lmms-lab datasets' columns to them).

`prompt_suffix` follows LLaVA-1.5's eval scripts (and lmms-eval's `post_prompt`): short-answer
tasks (VQA, POPE) end the question with `SHORT_ANSWER`; captions take none. Models trained
without it (the tiny worlds) evaluate with `prompt_suffix: {vqa: "", pope: ""}`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from data.writers import CAPTION_PROMPT
from train.evaluation.caption_metrics import bleu, cider_d
from train.evaluation.pope_metric import parse_yes_no, pope_metrics
from train.evaluation.scene_caption import scene_caption_metrics
from train.evaluation.vqa_metric import vqa_accuracy

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."

# groups reported when the data has these types (Sort-of-CLEVR's two families)
DEFAULT_TYPE_GROUPS = {
    "non_relational": ["shape", "horizontal", "vertical"],
    "relational": ["closest", "furthest", "count"],
}


def _require(records: list[dict], keys: set[str], task: str, source: str) -> None:
    for n, rec in enumerate(records):
        missing = keys - rec.keys()
        if missing:
            raise ValueError(f"{source}: record {n} (id {rec.get('id')!r}) lacks {sorted(missing)} "
                             f"needed by the {task!r} task")


@dataclass
class VQATask:
    """Short answers scored by VQAv2 accuracy, broken down by `type` and type groups."""

    name: str = "vqa"
    default_file: str = "val_qa.jsonl"
    prompt_template: str = "{question}"
    prompt_suffix: str = SHORT_ANSWER
    max_new_tokens: int = 8
    type_groups: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_TYPE_GROUPS))

    def check(self, records: list[dict], source: str) -> None:
        """Every record has an answer, or none has (a test split: predicted, not scored)."""
        _require(records, {"id", "question"}, self.name, source)
        answered = [bool(self.references(rec)) for rec in records]
        if any(answered) and not all(answered):
            rec = records[answered.index(False)]
            raise ValueError(f"{source}: record {rec['id']!r} has neither 'answer' nor 'answers' (other records do)")

    def prompt(self, rec: dict) -> str:
        return self.prompt_template.format(question=rec["question"]) + self.prompt_suffix

    def references(self, rec: dict) -> list[str]:
        if "answers" in rec:
            return [str(a) for a in rec["answers"]]
        return [str(rec["answer"])] if "answer" in rec else []

    def score_sample(self, prediction: str, rec: dict) -> float:
        return vqa_accuracy(prediction, self.references(rec))

    def aggregate(self, records: list[dict]) -> dict[str, float]:
        by_type: dict[str, list[float]] = defaultdict(list)
        for r in records:
            by_type[r.get("type") or "all"].append(r["score"])
        scores = [s for v in by_type.values() for s in v]
        out = {"accuracy": sum(scores) / len(scores)}
        for group, types in self.type_groups.items():
            if all(t in by_type for t in types):  # a group only where the data has all its types
                hits = [s for t in types for s in by_type[t]]
                out[f"accuracy_{group}"] = sum(hits) / len(hits)
        if len(by_type) > 1:
            out.update({f"accuracy_{t}": sum(v) / len(v) for t, v in sorted(by_type.items())})
        return out


@dataclass
class CaptionTask:
    """Captions scored by CIDEr-D (per image and corpus) and corpus BLEU-4."""

    name: str = "caption"
    default_file: str = "val_captions.jsonl"
    prompt_template: str = CAPTION_PROMPT
    prompt_suffix: str = ""
    max_new_tokens: int = 48

    def check(self, records: list[dict], source: str) -> None:
        _require(records, {"id", "image"}, self.name, source)
        for rec in records:
            if not self.references(rec):
                raise ValueError(f"{source}: record {rec['id']!r} has no 'caption' or 'captions'")

    def prompt(self, rec: dict) -> str:
        return self.prompt_template + self.prompt_suffix

    def references(self, rec: dict) -> list[str]:
        if "captions" in rec:
            return [str(c) for c in rec["captions"]]
        return [str(rec["caption"])] if rec.get("caption") else []

    def aggregate(self, records: list[dict]) -> dict[str, float]:
        preds, refs = [r["prediction"] for r in records], [r["reference"] for r in records]
        cider, per_image = cider_d(preds, refs)
        for r, s in zip(records, per_image):
            r["score"] = s
        out = {"cider_d": cider, "bleu_4": bleu(preds, refs, 4), "bleu_1": bleu(preds, refs, 1)}
        scene = scene_caption_metrics(preds, [r[0] for r in refs])  # Shapes-world captions only
        return {**out, **(scene or {})}

    def score_sample(self, prediction: str, rec: dict) -> float | None:
        return None  # CIDEr-D needs the whole set's document frequencies: filled in by aggregate


@dataclass
class POPETask:
    """Yes/no object probes: accuracy, precision, recall, F1, yes-ratio per split."""

    name: str = "pope"
    default_file: str = "pope_val.jsonl"
    prompt_template: str = "{question}"
    prompt_suffix: str = SHORT_ANSWER
    max_new_tokens: int = 4

    def check(self, records: list[dict], source: str) -> None:
        _require(records, {"id", "question", "answer"}, self.name, source)

    def prompt(self, rec: dict) -> str:
        return self.prompt_template.format(question=rec["question"]) + self.prompt_suffix

    def references(self, rec: dict) -> list[str]:
        return [str(rec["answer"])]

    def score_sample(self, prediction: str, rec: dict) -> float:
        return float(parse_yes_no(prediction) == parse_yes_no(str(rec["answer"])))

    def aggregate(self, records: list[dict]) -> dict[str, float]:
        out: dict[str, float] = {}
        rows = [{"prediction": r["prediction"], "answer": r["reference"], "split": r.get("split"), "id": r["id"]}
                for r in records]
        for split, metrics in pope_metrics(rows).items():
            for key, value in metrics.items():
                out[key if split == "all" else f"{key}_{split}"] = value
        return out


GENERATIVE_TASKS = {"vqa": VQATask, "caption": CaptionTask, "pope": POPETask}
