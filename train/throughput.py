"""Training throughput as the run's logger sees it: tokens/s, samples/s, model FLOP/s and MFU.

Why: GPU hours are the cost of a run, and a setting (packing, compile, checkpointing, fused
optimizer) is worth keeping only if these numbers move. FLOPs are counted, not guessed: the
first timed step runs under torch's `FlopCounterMode` (matmuls, convolutions and attention,
forward and backward, as executed: activation-checkpointing recompute included), and later
steps are scaled by their LM token count. Times are synchronised with the accelerator.
"""

from __future__ import annotations

import time

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.llava import LLaVA


def lm_tokens(model, batch: dict) -> int:
    """Non-padding LM positions of a batch: text tokens, plus image tokens where a LLaVA splices them."""
    tokens = int(batch["attention_mask"].sum())
    if isinstance(model, LLaVA) and batch.get("pixel_values") is not None:
        tokens += int(batch["pixel_values"].shape[0]) * (model.num_image_tokens - 1)
    return tokens


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Throughput(L.Callback):
    """Logs `throughput/*` every `log_every_n_steps` steps, averaged over the steps since the last
    log (the first `warmup_steps` are skipped: compilation and allocator warm-up).
    `peak_tflops`: the device's dense peak for the run's dtype (measure it with
    `scripts/bench_train_step.py`); MFU is logged only when it is given."""

    def __init__(self, log_every_n_steps: int = 10, warmup_steps: int = 2, peak_tflops: float | None = None) -> None:
        if log_every_n_steps < 1 or warmup_steps < 0:
            raise ValueError("Throughput: log_every_n_steps must be >= 1 and warmup_steps >= 0")
        self.log_every_n_steps, self.warmup_steps, self.peak_tflops = log_every_n_steps, warmup_steps, peak_tflops
        self.flops_per_token: float | None = None
        self._counter: FlopCounterMode | None = None
        self._start = 0.0
        self._reset()

    def _reset(self) -> None:
        self._seconds, self._tokens, self._samples, self._steps = 0.0, 0, 0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.flops_per_token is None and "input_ids" in batch:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()
        _sync(pl_module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        _sync(pl_module.device)
        seconds = time.perf_counter() - self._start
        if "input_ids" not in batch:
            return
        tokens = lm_tokens(pl_module.model, batch)
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops_per_token = self._counter.get_total_flops() / max(tokens, 1)
            self._counter = None
            return  # the counted step ran slower than the others: never timed
        if trainer.global_step <= self.warmup_steps:
            return
        self._seconds += seconds
        self._tokens += tokens
        self._samples += self._samples_in(batch)
        self._steps += 1
        if self._steps >= self.log_every_n_steps:
            metrics = self.metrics()  # straight to the loggers: `self.log` would repeat it every step
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
            self._reset()

    @staticmethod
    def _samples_in(batch: dict) -> int:
        if "segment_ids" in batch:  # packed rows hold several samples each
            seg = batch["segment_ids"]
            return int((seg.amax(1) + 1).sum())
        return int(batch["input_ids"].shape[0])

    def metrics(self) -> dict[str, float]:
        seconds = max(self._seconds, 1e-12)
        out = {"throughput/tokens_per_s": self._tokens / seconds, "throughput/samples_per_s": self._samples / seconds,
               "throughput/step_seconds": seconds / max(self._steps, 1)}
        if self.flops_per_token is not None:
            tflops = self.flops_per_token * self._tokens / seconds / 1e12
            out["throughput/model_tflops_per_s"] = tflops
            if self.peak_tflops:
                out["throughput/mfu"] = tflops / self.peak_tflops
        return out
