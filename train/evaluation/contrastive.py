"""Tasks for contrastive (CLIP) models: image<->text retrieval and zero-shot classification.

The model is anything with `transform()`, `tokenize(texts)`, `encode_image(pixels)` and
`encode_text(ids)` returning normalised embeddings (`models.clip.ContrastiveDualEncoder`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from data.conversation_dataset import readable_image_batches
from train.evaluation.retrieval_metric import recall_at_k


@torch.no_grad()
def embed_images(model, records: list[dict], root: Path, batch_size: int) -> tuple[Tensor, list[int]]:
    """Embeddings of the readable images and the indices of the records they belong to."""
    feats, kept = [], []
    for idx, pixels in readable_image_batches(records, root, model.transform(train=False), batch_size):
        feats.append(model.encode_image(pixels.to(_device(model))).float().cpu())
        kept += idx
    return (torch.cat(feats) if feats else torch.zeros(0, 0)), kept


@torch.no_grad()
def embed_texts(model, texts: list[str], batch_size: int) -> Tensor:
    out = [model.encode_text(model.tokenize(texts[i:i + batch_size]).to(_device(model))).float().cpu()
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _captions(rec: dict) -> list[str]:
    return [str(c) for c in rec["captions"]] if "captions" in rec else [str(rec.get("caption", ""))]


@dataclass
class RetrievalTask:
    """Every image against every caption of the set: R@1/5/10 in both directions."""

    name: str = "retrieval"
    default_file: str = "val_captions.jsonl"
    kind: str = "contrastive"

    def check(self, records: list[dict], source: str) -> None:
        for rec in records:
            if "image" not in rec or not any(_captions(rec)):
                raise ValueError(f"{source}: record {rec.get('id')!r} needs 'image' and 'caption' or 'captions'")

    def run(self, model, records: list[dict], root: Path, batch_size: int) -> tuple[dict, list[dict]]:
        img, kept = embed_images(model, records, root, batch_size)
        texts, owner = [], []
        for j, i in enumerate(kept):
            for c in _captions(records[i]):
                texts.append(c)
                owner.append(j)
        txt = embed_texts(model, texts, batch_size)
        sim = img @ txt.T
        metrics = recall_at_k(sim, owner)
        top = sim.argmax(1)
        rows = [{"id": r["id"], "image": r.get("image"), "prediction": None, "reference": _captions(r),
                 "score": None, "skipped": True} for r in records]
        for j, i in enumerate(kept):
            rows[i].update(prediction=texts[int(top[j])], score=float(owner[int(top[j])] == j), skipped=False)
        return metrics, rows


@dataclass
class ZeroShotTask:
    """Classify each image by its most similar class prompt (templates averaged, as in CLIP).

    Records: `{"id", "image", "label"}` plus optional attribute fields (e.g. `color`, `shape`);
    each attribute's accuracy is also reported, read off the predicted class.
    """

    name: str = "zeroshot"
    default_file: str = "zeroshot_val.jsonl"
    kind: str = "contrastive"
    templates: tuple[str, ...] = ("a {}.", "a small {}.", "a large {}.")
    attributes: tuple[str, ...] = ("color", "shape")

    def check(self, records: list[dict], source: str) -> None:
        for rec in records:
            if "image" not in rec or "label" not in rec:
                raise ValueError(f"{source}: record {rec.get('id')!r} needs 'image' and 'label'")

    def run(self, model, records: list[dict], root: Path, batch_size: int) -> tuple[dict, list[dict]]:
        classes = sorted({str(r["label"]) for r in records})
        prompts = [t.format(c) for c in classes for t in self.templates]
        txt = embed_texts(model, prompts, batch_size).view(len(classes), len(self.templates), -1).mean(1)
        txt = torch.nn.functional.normalize(txt, dim=-1)
        img, kept = embed_images(model, records, root, batch_size)
        pred = (img @ txt.T).argmax(1).tolist() if kept else []
        attrs: dict[str, dict] = defaultdict(dict)  # class -> attribute values, from the records
        for r in records:
            for a in self.attributes:
                if a in r:
                    attrs[str(r["label"])][a] = r[a]
        rows = [{"id": r["id"], "image": r.get("image"), "prediction": None, "reference": str(r["label"]),
                 "score": None, "skipped": True} for r in records]
        hits: dict[str, list[float]] = defaultdict(list)
        for j, i in enumerate(kept):
            rec, guess = records[i], classes[pred[j]]
            rows[i].update(prediction=guess, score=float(guess == str(rec["label"])), skipped=False)
            hits["accuracy"].append(rows[i]["score"])
            for a in self.attributes:
                if a in rec:
                    hits[f"accuracy_{a}"].append(float(attrs[guess].get(a) == rec[a]))
        metrics = {k: sum(v) / len(v) for k, v in hits.items()}
        metrics["num_classes"] = float(len(classes))
        return metrics, rows


CONTRASTIVE_TASKS = {"retrieval": RetrievalTask, "zeroshot": ZeroShotTask}
