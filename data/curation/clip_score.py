"""CLIP-score filtering: keep image-text pairs whose image and caption agree under a CLIP model.

Why: mismatched alt-text is the dominant noise of web image-text data; the cosine similarity
of CLIP image and text embeddings (Hessel et al. 2021; LAION's 0.28 threshold; DataComp's
"CLIP score top 30%" baseline, Gadre et al. 2023) is the strongest single filter known. The
model is any object with `encode_image`, `encode_text`, `tokenize` and `transform()`, i.e. a
`models.clip.ContrastiveDualEncoder` (ours from the `clip` stage, or open_clip pretrained).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image


def clip_scores(model, images: Sequence[Image.Image], texts: Sequence[str], batch_size: int = 64,
                device: str = "cpu") -> np.ndarray:
    """Cosine similarity of each (image, text) pair, float32 (n,)."""
    import torch
    import torch.nn.functional as F

    if len(images) != len(texts):
        raise ValueError(f"{len(images)} images but {len(texts)} texts")
    transform = model.transform()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            pixels = torch.stack([transform(im) for im in images[i:i + batch_size]]).to(device)
            tokens = model.tokenize(list(texts[i:i + batch_size])).to(device)
            img = F.normalize(model.encode_image(pixels).float(), dim=-1)
            txt = F.normalize(model.encode_text(tokens).float(), dim=-1)
            out.append((img * txt).sum(-1).cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, dtype=np.float32)


def select_by_score(scores: np.ndarray, threshold: float | None = None,
                    top_fraction: float | None = None) -> np.ndarray:
    """Boolean keep-mask: score >= threshold, or the `top_fraction` highest scores (ties broken
    by input order, so exactly round(top_fraction * n) items are kept). Exactly one of the two."""
    scores = np.asarray(scores, dtype=np.float64)
    if (threshold is None) == (top_fraction is None):
        raise ValueError("give exactly one of threshold and top_fraction")
    if threshold is not None:
        return scores >= threshold
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    keep = np.zeros(len(scores), dtype=bool)
    k = int(round(top_fraction * len(scores)))
    keep[np.argsort(-scores, kind="stable")[:k]] = True
    return keep


def build_model(spec):
    """A scoring model from config: an object already; `{"checkpoint": PATH}`, a `chimera fit`
    checkpoint of the `clip` stage (its architecture travels inside, so the curation YAML need not
    repeat it); `{"class_path", "init_args"}`; or `ContrastiveDualEncoder` keyword arguments
    (`model_name`/`model_config`, `pretrained` = an open_clip tag or the stage's `open_clip.pt`)."""
    if not isinstance(spec, dict):
        return spec
    if "checkpoint" in spec:
        return load_clip_checkpoint(spec["checkpoint"], **{k: v for k, v in spec.items() if k != "checkpoint"})
    if "class_path" in spec:
        import importlib

        module, _, name = spec["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        return cls(**spec.get("init_args", {})).eval()
    from models.clip import ContrastiveDualEncoder

    return ContrastiveDualEncoder(**spec).eval()


def load_clip_checkpoint(path: str, **unexpected):
    """The dual encoder inside a `chimera fit` checkpoint of the `clip` stage (e.g.
    `runs/<pipeline>/clip/checkpoints/last.ckpt`)."""
    from pathlib import Path

    if unexpected:
        raise ValueError(f"a `checkpoint` model spec takes no other keys, got {sorted(unexpected)}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"CLIP checkpoint not found: {path} (train the `clip` stage first)")
    from train.checkpoint import load_module

    model = getattr(load_module(path), "model", None)
    if not all(hasattr(model, a) for a in ("encode_image", "encode_text", "tokenize", "transform")):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a contrastive dual encoder: "
                         "CLIP scoring needs a checkpoint of the `clip` stage (train.clip_module.CLIPModule)")
    return model.eval()
