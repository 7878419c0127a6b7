"""COCO Caption (2017 val), NoCaps (val) and Flickr30k (test): CIDEr-D, BLEU-4, ROUGE-L.

LLaVA-1.5 has no caption script; the prompt is lmms-eval's (`coco_cap/utils.py:coco_doc_to_text`,
`nocaps/_default_template_nocaps_yaml`, `flickr30k/utils.py:flickr_doc_to_text`): "Provide a
one-sentence caption for the provided image.", no suffix, 64 new tokens. The reference captions
come from lmms-lab's columns (COCO-Caption2017 `answer`, NoCaps `annotations_captions`,
flickr30k `caption`; see `columns.py`). Metrics as pycocoevalcap computes them, in pure Python
(`caption_metrics.py`, `rouge_metric.py`); no METEOR or SPICE (both need Java).
"""

from __future__ import annotations

from dataclasses import dataclass

from train.evaluation.caption_metrics import bleu, cider_d
from train.evaluation.rouge_metric import rouge_l
from train.evaluation.tasks import _require

CAPTION_ONE_SENTENCE = "Provide a one-sentence caption for the provided image."


@dataclass
class ReferenceCaptionTask:
    """Captions scored against several human references per image; per-sample score: CIDEr-D."""

    name: str = "coco_caption"
    default_file: str = "coco_caption_val2017.jsonl"
    prompt_template: str = CAPTION_ONE_SENTENCE
    prompt_suffix: str = ""
    max_new_tokens: int = 64

    def check(self, records: list[dict], source: str) -> None:
        _require(records, {"id", "image"}, self.name, source)
        for rec in records:
            if not self.references(rec):
                raise ValueError(f"{source}: record {rec['id']!r} has no reference captions")

    def prompt(self, rec: dict) -> str:
        return self.prompt_template + self.prompt_suffix

    def references(self, rec: dict) -> list[str]:
        value = rec.get("captions", rec.get("caption"))
        if value is None:
            return []
        return [str(value)] if isinstance(value, str) else [str(c) for c in value]

    def score_sample(self, prediction: str, rec: dict) -> float | None:
        return None  # CIDEr-D needs the whole set's document frequencies: filled in by aggregate

    def aggregate(self, records: list[dict]) -> dict[str, float]:
        preds = [r["prediction"] for r in records]
        refs = [r["reference"] if isinstance(r["reference"], list) else [r["reference"]] for r in records]
        cider, per_image = cider_d(preds, refs)
        rouge, per_image_rouge = rouge_l(preds, refs)
        for r, c, rl in zip(records, per_image, per_image_rouge):
            r["score"], r["rouge_l"] = c, rl
        return {"cider_d": cider, "bleu_4": bleu(preds, refs, 4), "bleu_1": bleu(preds, refs, 1), "rouge_l": rouge}


@dataclass
class NoCapsTask(ReferenceCaptionTask):
    name: str = "nocaps"
    default_file: str = "nocaps_val.jsonl"


@dataclass
class Flickr30kTask(ReferenceCaptionTask):
    name: str = "flickr30k"
    default_file: str = "flickr30k_test.jsonl"


CAPTION_TASKS = {"coco_caption": ReferenceCaptionTask, "nocaps": NoCapsTask, "flickr30k": Flickr30kTask}
