"""The `lm` stage: causal-LM pretraining of a tiny transformers model on a world's text, so later
multimodal stages start from a language model that already speaks the world's language.

Its checkpoint stores the LM under `model.language.*`, the same keys a LLaVA/Flamingo
checkpoint uses, so `LanguageModel(weights_from=...)` (or `init_from` of a later stage) reads it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.utils.data import DataLoader, Dataset

from data.collate import Collator
from data.conversation_dataset import read_records
from data.templates import IMAGE_TOKEN, ChatTemplate, Segment
from data.tokenize import tokenize_segments
from models.language import LanguageModel
from train.checkpoint import self_contained
from train.schedule import warmup_cosine_scheduler
from train.guards import FiniteLossGuard


def world_ids(record: dict, tokenizer, template: ChatTemplate, max_length: int | None = None) -> list[int]:
    """A conversation's token ids exactly as the multimodal stages tokenize it, minus the image tokens.

    Tokenizing the rendered text in one piece would merge across segment and image boundaries
    (" right" instead of "right" after "ASSISTANT: "), so the LM would learn ids the later stages
    never show it.
    """
    ids, _ = tokenize_segments(template.segments(record["conversations"]), tokenizer)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    ids = [i for i in ids if i != image_id]
    return ids if max_length is None else ids[:max_length]


class TextDataset(Dataset):
    """Every token is a target (plain language modelling) except padding."""

    def __init__(self, path: str | Path, tokenizer, template: ChatTemplate, max_length: int | None = 512) -> None:
        self.records = read_records(path)
        self.tokenizer, self.template, self.max_length = tokenizer, template, max_length

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        rec = self.records[i]
        if "conversations" in rec:
            ids = world_ids(rec, self.tokenizer, self.template, self.max_length)
        else:
            ids, _ = tokenize_segments([Segment(str(rec["text"]), target=True)], self.tokenizer, self.max_length)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(ids), "pixel_values": None}


class TextDataModule(L.LightningDataModule):
    """`train_json` / `val_json`: LLaVA conversation JSON (rendered with the model's template) or
    JSONL of `{"text"}`; the tokenizer comes from the language model being trained."""

    def __init__(self, train_json: str, val_json: str | None = None, batch_size: int = 32, num_workers: int = 0,
                 max_length: int | None = 512) -> None:
        super().__init__()
        for name, path in (("train_json", train_json), ("val_json", val_json)):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"data.{name}: {path} does not exist (generate it with `chimera data ...`)")
        self.train_json, self.val_json = train_json, val_json
        self.batch_size, self.num_workers, self.max_length = batch_size, num_workers, max_length

    def setup(self, stage: str | None = None) -> None:
        module = self.trainer.lightning_module
        tok = module.model.language.tokenizer
        self.collate = Collator(tok.pad_token_id)
        self.train_set = TextDataset(self.train_json, tok, module.template, self.max_length)
        self.val_set = TextDataset(self.val_json, tok, module.template, self.max_length) if self.val_json else None

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers,
                          collate_fn=self.collate)

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=self.collate)


class LMModule(L.LightningModule):
    def __init__(self, language: LanguageModel, template: ChatTemplate = ChatTemplate(), lr: float = 1e-3,
                 weight_decay: float = 0.01, warmup_ratio: float = 0.05, min_lr_ratio: float = 0.1) -> None:
        super().__init__()
        self.model = nn.ModuleDict({"language": language})
        self.template = template
        self.lr, self.weight_decay, self.warmup_ratio, self.min_lr_ratio = lr, weight_decay, warmup_ratio, min_lr_ratio
        self.chimera_config: dict | None = None
        self._val: list[tuple[float, int]] = []
        self._start: float | None = None
        self.finite_guard = FiniteLossGuard()  # a non-finite loss stops the run, with no per-step sync

    def _loss(self, batch: dict) -> tuple[torch.Tensor, int]:
        out = self.model["language"].model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                           labels=batch["labels"], use_cache=False)
        return out.loss, int((batch["labels"][:, 1:] != -100).sum())

    def configure_callbacks(self):
        return [self.finite_guard]  # reads its record at log steps and before every save (train/guards.py)

    def on_fit_start(self) -> None:
        self._start = time.perf_counter()
        n = sum(p.numel() for p in self.parameters())
        rank_zero_info(f"stage 'lm': {n:,} trainable parameters")

    def training_step(self, batch: dict, batch_idx: int):
        loss, _ = self._loss(batch)
        self.finite_guard.observe(loss, self.global_step, batch_idx)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, n = self._loss(batch)
        self._val.append((float(loss) * n, n))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        total, n = sum(v[0] for v in self._val), sum(v[1] for v in self._val)
        self._val = []
        self.log("val/loss", total / n)
        self.log("val/perplexity", math.exp(min(total / n, 50)))
        if self._start is not None:
            self.log("val/train_minutes", (time.perf_counter() - self._start) / 60)

    def configure_optimizers(self):
        decay = [p for p in self.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=self.lr)
        return {"optimizer": opt,
                "lr_scheduler": warmup_cosine_scheduler(opt, self.trainer, self.warmup_ratio, self.min_lr_ratio)}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["chimera_config"] = self.chimera_config
        self_contained(checkpoint, self)  # loads with no upstream file (train/checkpoint.py)
