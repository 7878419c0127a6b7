"""Contrastive dual encoder (CLIP) from open_clip's own classes: stage 0 and scoring.

Built from a registered open_clip name or an architecture dict (registered on the fly, as
`OpenCLIPVision` does), so the tiny model trained here and `ViT-L-14` load the same way.
Its checkpoint is open_clip's (`{"state_dict": ...}`), so `OpenCLIPVision(model_config=...,
pretrained=path)` later loads the trained visual tower for LLaVA or Flamingo.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config_dict import ConfigDict
from models.vision import ImageTransform, _register_open_clip_config, _square


class ContrastiveDualEncoder(nn.Module):
    """Args:
        model_name / model_config: exactly one (see `OpenCLIPVision`).
        pretrained: an open_clip pretrained tag or a checkpoint path; None = random init.
    """

    def __init__(self, model_name: str | None = None, model_config: ConfigDict | None = None,
                 pretrained: str | None = None) -> None:
        super().__init__()
        import open_clip

        if (model_name is None) == (model_config is None):
            raise ValueError("ContrastiveDualEncoder needs exactly one of model_name and model_config")
        if pretrained is not None and not os.path.isfile(pretrained) and not open_clip.get_pretrained_cfg(
                model_name or "", pretrained):
            raise FileNotFoundError(f"open_clip checkpoint file not found: {pretrained!r}")
        self.name = model_name if model_name is not None else _register_open_clip_config(model_config)
        self.model = open_clip.create_model(self.name, pretrained=pretrained)
        self.tokenizer = open_clip.get_tokenizer(self.name)
        cfg = open_clip.get_model_preprocess_cfg(self.model)
        self.image_size = _square(cfg["size"], "ContrastiveDualEncoder")
        self.mean, self.std = tuple(cfg["mean"]), tuple(cfg["std"])

    def transform(self, train: bool = False) -> ImageTransform:
        del train  # no flips/crops: captions name positions
        return ImageTransform(self.image_size, self.mean, self.std)

    @property
    def logit_scale(self) -> Tensor:
        return self.model.logit_scale

    def tokenize(self, texts: list[str]) -> Tensor:
        return self.tokenizer(texts)

    def encode_image(self, pixels: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, E), L2-normalised."""
        return F.normalize(self.model.encode_image(pixels), dim=-1)

    def encode_text(self, token_ids: Tensor) -> Tensor:
        """(B, L) ids from `tokenize` -> (B, E), L2-normalised."""
        return F.normalize(self.model.encode_text(token_ids), dim=-1)

    def forward(self, pixels: Tensor, token_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.encode_image(pixels), self.encode_text(token_ids), self.logit_scale.exp()

    def save_checkpoint(self, path: str | Path) -> Path:
        """open_clip's checkpoint layout, loadable by `create_model(..., pretrained=path)`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": self.model.state_dict()}, path)
        return path
