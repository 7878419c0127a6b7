"""LightningModule for LLaVA-style stages: what trains is declared by `stage`, not by forking code."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from data.collate import count_targets, media_arguments
from data.multisource import split_sources
from data.templates import ChatTemplate
from models.flamingo import Flamingo
from models.language import checkpoint_weights
from models.llava import LLaVA
from models.meta_init import has_meta_tensors
from models.peft import OptimizerName, build_optimizer
from train.data_guard import DataGuard
from train.distributed import canonical_name, gather_objects, unique_by_index
from train.answers import accuracy_by_type, format_accuracy
from train.evaluation.vqa_metric import vqa_accuracy
from train.loggers import log_sample_table
from train.schedule import warmup_cosine_scheduler
from train.guards import FiniteLossGuard

Stage = Literal["align", "finetune", "full"]
# the model parts a stage may train; a model has a subset (LLaVA: vision, connector, language, and
# with any-resolution the image_newline that trains with the connector;
# Flamingo adds its gated cross-attention blocks and the <image>/<|endofchunk|> embedding rows)
PARTS = ("vision", "connector", "image_newline", "cross_attention", "special_tokens", "language")
BRIDGE = ("connector", "image_newline", "cross_attention", "special_tokens")
# which parts train in each stage (prismatic's freeze_backbones, as data). `align` is LLaVA's
# projector pretraining and Flamingo's usual stage (resampler + cross-attention, LM frozen).
TRAINABLE: dict[str, tuple[str, ...]] = {
    "align": BRIDGE,
    "finetune": (*BRIDGE, "language"),
    "full": PARTS,
}


def count_parameters(module: nn.Module) -> tuple[int, int]:
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def load_model_weights(model: nn.Module, ckpt_path: str) -> None:
    """Start a stage from an earlier stage's checkpoint (its `model.*` weights, strictly).

    An adapted or 4-bit LM has different parameters from the dense one saved: it takes its
    weights through `LanguageModel(weights_from=...)` (before quantisation and adapters), and
    only the other parts are loaded here. A model built on the meta device (a rank that FSDP
    gives rank 0's weights, `models.meta_init`) reads nothing.
    """
    if has_meta_tensors(model):
        return
    path = Path(ckpt_path)
    weights = checkpoint_weights(path, "model.", "init_from")
    language = model.language
    adapted = getattr(language, "adapter", None) is not None or getattr(language, "quantization", None)
    try:
        if adapted:
            for name, part in model.named_children():
                if name != "language":
                    prefix = name + "."
                    part.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
        else:
            model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise ValueError(f"init_from {path}: its weights do not fit this model's architecture: {err}") from err


def zero_through_parameters(module: nn.Module) -> torch.Tensor:
    """0, with a gradient (of zeros) for every trained parameter (DDP then reduces them all)."""
    return sum((p * 0.0).sum() for p in module.parameters() if p.requires_grad)


class VLMModule(L.LightningModule):
    """Trains a LLaVA on conversations; validates by generating answers and scoring per type.

    Learning rates: `lr` for every trained part unless `lr_vision` / `lr_connector` /
    `lr_language` override it (LLaVA: align 1e-3 on the projector, finetune 2e-5); `lr_connector`
    covers the whole bridge (Flamingo: resampler, cross-attention blocks, special-token rows).
    `init_from`: a checkpoint of an earlier stage whose model weights this stage starts from.
    `optimizer`: adamw, or bitsandbytes' adamw_8bit / paged_adamw / paged_adamw_8bit (QLoRA).
    An LM built with an `adapter` trains only the adapter where the stage trains the LM.
    `max_skip_fraction`: stop (every rank, naming the first paths) once more than this fraction of
    the samples seen had a missing or unreadable image (`train.data_guard`).
    """

    def __init__(
        self,
        model: LLaVA | Flamingo,
        stage: Stage = "finetune",
        template: ChatTemplate = ChatTemplate(),
        lr: float = 1e-4,
        lr_vision: float | None = None,
        lr_connector: float | None = None,
        lr_language: float | None = None,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_ratio: float = 0.03,
        min_lr_ratio: float = 0.0,
        max_new_tokens: int = 8,
        num_logged_samples: int = 16,
        init_from: str | None = None,
        optimizer: OptimizerName = "adamw",
        max_skip_fraction: float = 0.01,
    ) -> None:
        super().__init__()
        if stage not in TRAINABLE:
            raise ValueError(f"stage {stage!r} unknown; choose one of {sorted(TRAINABLE)}")
        self.model, self.stage, self.template = model, stage, template
        self.lrs = {"vision": lr_vision, "language": lr_language, **{b: lr_connector for b in BRIDGE}}
        self.lr, self.weight_decay, self.betas, self.optimizer_name = lr, weight_decay, betas, optimizer
        self.warmup_ratio, self.min_lr_ratio = warmup_ratio, min_lr_ratio
        self.max_new_tokens, self.num_logged_samples = max_new_tokens, num_logged_samples
        self.type_groups: dict[str, list[str]] = {}
        self.skipped_samples = 0  # unreadable (missing or corrupt image)
        self.dropped_samples = 0  # readable, but cannot fit max_length or has no target left
        self.chimera_config: dict | None = None  # the resolved model config, set by the CLI
        self._val_records: list[dict] = []
        self._fit_start: float | None = None
        self._last_good: dict | None = None  # the last batch with targets, replayed with weight 0
        self._last_val: dict | None = None  # the last readable val batch, replayed when sharded
        self.data_guard = DataGuard(max_skip_fraction)  # also counts the target tokens the loss weights by
        self.finite_guard = FiniteLossGuard()  # a non-finite loss stops the run, with no per-step sync
        self._run_dir: str | None = None
        self._decays: dict[str, bool] = {}  # parameter name -> decays, decided in `setup` before wrapping
        if init_from is not None:
            load_model_weights(model, init_from)
        adapted = getattr(model.language, "adapter", None) is not None or getattr(model.language, "quantization", None)
        for name in self.parts:
            if name == "language" and adapted:
                # an adapted LM trains its adapter only (LoRA, QLoRA, LLaMA-Adapter, bottleneck),
                # a 4-bit one nothing else; a stage that freezes the LM freezes the adapter too
                model.language.mark_adapter_trainable()
                if "language" not in TRAINABLE[stage]:
                    for p in model.language.adapter_parameters():
                        p.requires_grad_(False)
            else:
                getattr(model, name).requires_grad_(name in TRAINABLE[stage])

    # frozen parts stay in eval mode (no dropout, BatchNorm statistics untouched)
    def train(self, mode: bool = True):
        super().train(mode)
        self._frozen_parts_to_eval()
        return self

    def _frozen_parts_to_eval(self) -> None:
        for name in self.parts:
            if name not in TRAINABLE[self.stage]:
                getattr(self.model, name).eval()
        if "language" not in TRAINABLE[self.stage] and self.training:
            self.model.language.recompute_while_frozen()  # gradient checkpointing still saves memory

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Lightning restores each submodule's own mode after validation (and at fit start)
        # without calling `train()` here, so the frozen parts are put back in eval every step
        self._frozen_parts_to_eval()

    def parameter_table(self) -> list[tuple[str, int, int]]:
        return [(name, *count_parameters(getattr(self.model, name))) for name in self.parts]

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(p for p in PARTS if isinstance(getattr(self.model, p, None), nn.Module))

    def setup(self, stage: str) -> None:
        # counted before a sharding strategy (FSDP) wraps the model: afterwards a rank holds a shard
        self._parameter_counts = self.parameter_table()
        self._decays = {canonical_name(n): p.ndim >= 2 for n, p in self.model.named_parameters()}
        from train.run_dir import run_folder

        self._run_dir = run_folder(self.trainer)  # may be a collective (train/run_dir.py): read where every rank runs

    def on_fit_start(self) -> None:
        self._fit_start = time.perf_counter()
        table = getattr(self, "_parameter_counts", None) or self.parameter_table()
        lines = [f"stage {self.stage!r}: trainable parameters per module", f"{'module':<10} {'total':>12} {'trainable':>12}"]
        lines += [f"{name:<10} {total:>12,} {trainable:>12,}" for name, total, trainable in table]
        rank_zero_info("\n".join(lines))
        counts = {f"params/{n}_{k}": float(v) for n, t, tr in table for k, v in (("total", t), ("trainable", tr))}
        for logger in self.loggers:
            logger.log_metrics(counts, step=0)

    # each micro-batch's loss is its mean over target tokens times their count (the sum); the
    # gradients of a whole optimizer step are then divided by the target tokens of the global
    # batch (every rank, every accumulated micro-batch), so neither the world size nor gradient
    # accumulation changes how tokens are weighted (transformers' `num_items_in_batch` fix)
    token_weighted_loss = True

    def training_step(self, batch: dict, batch_idx: int):
        """One batch, or one per named source (`data.multisource`): loss = sum of weight x source loss,
        as open_flamingo weights LAION and MMC4; each source's own loss is logged as train/loss_<name>.

        A batch with nothing to learn from (every sample unreadable, or no target token) still runs
        a forward and backward, on the last good batch with weight 0: every rank must reach the
        same collectives, and Lightning does not support a skipped step under DDP/FSDP."""
        sources = split_sources(batch)
        for _, part in sources.values():
            self.count_unused(part)
            if "labels" in part and "num_targets" not in part:  # our collators count on the host
                part["num_targets"] = count_targets(part["labels"])
        usable = {k: v for k, v in sources.items() if v[1].get("num_targets", 0) > 0}
        if not usable:
            return self._zero_loss(batch_idx)
        self._last_good = usable
        total, tokens = self._weighted_loss(usable, batch_idx, log=True)
        self.log("train/loss", total, prog_bar=True, on_step=True, batch_size=sum(p["input_ids"].shape[0]
                                                                                  for _, p in usable.values()))
        self.data_guard.add_targets(tokens)
        return total * tokens

    def count_unused(self, batch: dict) -> None:
        """Add up and log the samples a batch could not use (collators count them); `DataGuard`
        stops the run when too many were unreadable."""
        self.data_guard.add(batch)
        self.skipped_samples += batch.get("skipped", 0)
        self.dropped_samples += batch.get("dropped", 0)
        self.log("train/skipped_samples", float(self.skipped_samples), on_step=True, reduce_fx="max")
        self.log("train/dropped_samples", float(self.dropped_samples), on_step=True, reduce_fx="max")

    def _weighted_loss(self, sources: dict, batch_idx: int, log: bool) -> tuple[torch.Tensor, int]:
        """(sum of weight x mean loss over the sources, target tokens of the micro-batch)."""
        total, tokens = None, 0
        for name, (weight, part) in sources.items():
            # packed rows (data.packing), LLaVA's placeholder positions found on the host (data.image_placeholders)
            extra = {k: part[k] for k in ("segment_ids", "image_positions") if k in part} | media_arguments(part)
            _, loss = self.model(part["input_ids"], part["attention_mask"], part["pixel_values"], part["labels"],
                                 **extra)
            self.finite_guard.observe(loss, self.global_step, batch_idx)
            if name and log:
                self.log(f"train/loss_{name}", loss, on_step=True, batch_size=part["input_ids"].shape[0])
            total = weight * loss if total is None else total + weight * loss
            tokens += part["num_targets"]
        return total, tokens

    def _zero_loss(self, batch_idx: int) -> torch.Tensor:
        """A zero loss whose graph reaches every trained parameter (see `training_step`)."""
        if self._last_good is not None:
            total, _ = self._weighted_loss(self._last_good, batch_idx, log=False)
            return total * 0.0
        return zero_through_parameters(self)

    def on_before_optimizer_step(self, optimizer) -> None:
        step = self.data_guard.reduce(self.trainer.strategy, self.device)  # the step's one all-reduce
        if self.global_step % self.trainer.log_every_n_steps == 0:
            self.data_guard.check()
        if not self.token_weighted_loss:
            return
        # Lightning divided each micro-batch by the accumulation count and DDP/FSDP averaged over
        # ranks: undo both and divide by the global target count
        scale = self.trainer.accumulate_grad_batches * self.trainer.world_size / step[0].clamp(min=1.0)
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(scale.to(p.grad.dtype))

    def on_train_end(self) -> None:
        self.data_guard.check(final=True)  # a run that trained on nothing never exits 0

    def configure_callbacks(self):
        return [self.finite_guard]  # reads its record at log steps and before every save (train/guards.py)

    @property
    def sharded(self) -> bool:
        """Parameters sharded over ranks (FSDP, DeepSpeed ZeRO): every forward is a collective."""
        return self.trainer.world_size > 1 and isinstance(self.trainer.strategy, (FSDPStrategy, DeepSpeedStrategy))

    def generate_answers(self, batch: dict) -> list[str]:
        # sharded, a rank whose prompts are done keeps stepping until every rank is (`synced_gpus`),
        # or the ranks still generating would wait forever for its all-gathers
        synced = {"synced_gpus": True} if self._trainer is not None and self.sharded else {}
        out = self.model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                  max_new_tokens=self.max_new_tokens, **synced, **media_arguments(batch))
        return self.model.tokenizer.batch_decode(out, skip_special_tokens=True)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.skipped_samples += batch["skipped"]
        if "input_ids" not in batch:
            if self.sharded and self._last_val is not None:  # step through the collectives, record nothing
                self.generate_answers(self._last_val)
            return
        self._last_val = batch
        for meta, pred in zip(batch["meta"], self.generate_answers(batch)):
            correct = vqa_accuracy(pred, [str(meta["answer"])]) == 1.0  # same scoring as `chimera eval`
            self._val_records.append({**meta, "prediction": pred.strip(), "correct": correct})

    def on_validation_epoch_end(self) -> None:
        # every rank scored its share: gather them so each rank reports the whole val set, and the
        # numbers equal a 1-process run's (the sampler's padding repeats are dropped)
        records = unique_by_index(gather_objects(self.trainer, self._val_records))
        self._val_records = []
        if not records:
            return
        accuracy = accuracy_by_type(records, self.type_groups)
        if self._fit_start is not None:  # wall time, so curves read as "accuracy after N minutes"
            self.log("val/train_minutes", (time.perf_counter() - self._fit_start) / 60)
        for key, value in accuracy.items():
            self.log(f"val/{key}", value, prog_bar=key in ("acc", "acc_non_relational", "acc_relational"))
        if not self.trainer.sanity_checking:
            rank_zero_info(format_accuracy(accuracy, self.global_step, len(records), list(self.type_groups)))
        self._write_predictions(records)

    def _write_predictions(self, records: list[dict]) -> None:
        """Per-sample predictions beside the logs, and a sample table for W&B (rank 0)."""
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        if self._run_dir:
            path = Path(self._run_dir) / "predictions" / f"val_step{self.global_step:07d}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r) + "\n" for r in records))
        log_sample_table(self.loggers, records[: self.num_logged_samples], self.trainer.datamodule, self.global_step)

    def configure_optimizers(self):
        groups = []
        for name in (p for p in TRAINABLE[self.stage] if p in self.parts):
            lr = self.lrs[name] if self.lrs[name] is not None else self.lr
            decay, no_decay = [], []
            for n, p in getattr(self.model, name).named_parameters():
                if p.requires_grad:
                    (decay if self._decays_weight(f"{name}.{n}", p) else no_decay).append((canonical_name(n), p))
            groups += [
                {"params": decay, "lr": lr, "weight_decay": self.weight_decay, "name": f"{name}"},
                {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{name}_no_decay"},
            ]
        groups = [g for g in groups if g["params"]]
        self.param_group_names = {g["name"]: sorted(n for n, _ in g["params"]) for g in groups}
        groups = [{**g, "params": [p for _, p in g["params"]]} for g in groups]
        opt = build_optimizer(self.optimizer_name, groups, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        return {"optimizer": opt,
                "lr_scheduler": warmup_cosine_scheduler(opt, self.trainer, self.warmup_ratio, self.min_lr_ratio)}

    def _decays_weight(self, name: str, p: nn.Parameter) -> bool:
        """Matrices decay, biases and norms do not: decided on the shapes before any wrapping, since
        FSDP (`use_orig_params`) hands the optimizer flat 1-D shards."""
        return self._decays[canonical_name(name)] if self._decays else p.ndim >= 2

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        from train.checkpoint import self_contained

        checkpoint["chimera_config"] = self.chimera_config
        self_contained(checkpoint, self)  # loads with no upstream file (train/checkpoint.py)
        checkpoint["skipped_samples"] = self.skipped_samples
        checkpoint["dropped_samples"] = self.dropped_samples
        checkpoint["data_guard"] = self.data_guard.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.skipped_samples = checkpoint.get("skipped_samples", 0)
        self.dropped_samples = checkpoint.get("dropped_samples", 0)
        self.data_guard.load_state_dict(checkpoint.get("data_guard", {}))
