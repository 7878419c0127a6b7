"""The `clip` stage: contrastive image-text pretraining with open_clip's loss, validated by retrieval.

At the end of fit the model is exported in open_clip's checkpoint format (`open_clip.pt` in the
run directory, or `export_path`), which later stages load as their frozen vision tower through
`models.vision.OpenCLIPVision(model_config=..., pretrained=PATH)`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from models.clip import ContrastiveDualEncoder
from train.evaluation.retrieval_metric import recall_at_k
from train.checkpoint import self_contained
from train.run_dir import run_folder
from train.schedule import warmup_cosine_scheduler
from train.guards import FiniteLossGuard

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the learned temperature at 100


class CLIPModule(L.LightningModule):
    def __init__(self, model: ContrastiveDualEncoder, lr: float = 5e-4, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6, warmup_ratio: float = 0.1,
                 min_lr_ratio: float = 0.0, export_path: str | None = None) -> None:
        super().__init__()
        import open_clip

        self.model = model
        self.loss_fn = open_clip.ClipLoss()
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.warmup_ratio, self.min_lr_ratio, self.export_path = warmup_ratio, min_lr_ratio, export_path
        self.chimera_config: dict | None = None
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._fit_start: float | None = None
        self.finite_guard = FiniteLossGuard()  # a non-finite loss stops the run, with no per-step sync

    def configure_callbacks(self):
        return [self.finite_guard]  # reads its record at log steps and before every save (train/guards.py)

    def on_fit_start(self) -> None:
        self._fit_start = time.perf_counter()
        n = sum(p.numel() for p in self.model.parameters())
        rank_zero_info(f"stage 'clip': {n:,} trainable parameters (open_clip {self.model.name})")

    def training_step(self, batch: dict, batch_idx: int):
        img, txt, scale = self.model(batch["pixel_values"], batch["input_ids"])
        loss = self.finite_guard.observe(self.loss_fn(img, txt, scale), self.global_step, batch_idx)
        n = img.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/logit_scale", scale, batch_size=n)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        img, txt, _ = self.model(batch["pixel_values"], batch["input_ids"])
        self._val.append((img.float().cpu(), txt.float().cpu()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        img = torch.cat([v[0] for v in self._val])
        txt = torch.cat([v[1] for v in self._val])
        self._val = []
        metrics = recall_at_k(img @ txt.T, list(range(len(txt))), ks=(1, 5))
        loss = self.loss_fn(img, txt, self.model.logit_scale.exp().detach().float().cpu())
        self.log("val/loss", loss)
        for k, v in metrics.items():
            self.log(f"val/{k}", v, prog_bar=k.endswith("@1"))
        if self._fit_start is not None:
            self.log("val/train_minutes", (time.perf_counter() - self._fit_start) / 60)
        if not self.trainer.sanity_checking:
            rank_zero_info(f"validation at step {self.global_step}: {len(txt)} pairs, "
                           + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))

    def configure_optimizers(self):
        decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=self.lr, betas=self.betas, eps=self.eps)
        return {"optimizer": opt,
                "lr_scheduler": warmup_cosine_scheduler(opt, self.trainer, self.warmup_ratio, self.min_lr_ratio)}

    def on_fit_end(self) -> None:
        # the run folder may take a collective (train/run_dir.py): every rank reads it, then rank 0 writes
        path = Path(self.export_path) if self.export_path else run_folder(self.trainer) / "open_clip.pt"
        if not self.trainer.is_global_zero:
            return
        self.model.save_checkpoint(path)
        rank_zero_info(f"exported the open_clip checkpoint to {path}")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["chimera_config"] = self.chimera_config
        self_contained(checkpoint, self)  # loads with no upstream file (train/checkpoint.py)
