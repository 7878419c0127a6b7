"""Training throughput as the run's logger sees it: tokens/s, samples/s, model FLOP/s and MFU.

Why: GPU hours are the cost of a run, and a setting (packing, compile, checkpointing, fused
optimizer) is worth keeping only if these numbers move. MFU's numerator is the *model's* FLOPs
(PaLM's definition), so a setting that makes the device do more work for the same model
(activation-checkpoint recompute) must not raise it: `ModelFlops` counts the first step by
torch's own FLOP formulas with the recompute left out, and later steps are scaled by their LM
token count. Rates are wall clock between logging steps (data loading and optimizer included),
with one host-device sync per logging interval. The peak is looked up from the device, as
Lightning's `ThroughputMonitor` does, so MFU is logged without configuration where it is known.
"""

from __future__ import annotations

import time
from collections import Counter

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.utilities import rank_zero_info
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from data.multisource import split_sources


class ModelFlops(TorchDispatchMode):
    """Model FLOPs of a forward and backward: every matmul, convolution and attention op, counted by
    the formulas of `torch.utils.flop_counter` (what `FlopCounterMode` counts), except activation-
    checkpoint recompute. Set `in_backward` while the backward runs: there, ops that run with grad
    enabled are recompute (autograd runs backward functions with grad disabled, checkpointing
    re-enables it to rebuild the forward), and are skipped.

    The backward is what autograd runs, so the count equals an uncheckpointed step's: a trained
    layer costs 2N per token forward and 4N backward (input and weight gradients; PaLM's 6N); a
    frozen layer that gradients pass through (the LM under LoRA or under a trained projector) 2N +
    2N (input gradient only); a frozen tower whose input needs no gradient (LLaVA's vision
    encoder) 2N, forward only.
    """

    def __init__(self) -> None:
        super().__init__()
        self.flops, self.in_backward = 0, False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None and not (self.in_backward and torch.is_grad_enabled()):
            self.flops += count(*args, **kwargs, out_val=out)
        return out


def lm_tokens(batch: dict) -> torch.Tensor:
    """Non-padding LM positions of a batch (a device scalar: reading it would sync); a LLaVA's
    image tokens are among them (its collators widen `<image>`, `data.image_placeholders`)."""
    return batch["attention_mask"].sum()


def samples_in(batch: dict) -> torch.Tensor | int:
    """Samples of a batch: packed rows hold several each (`segment_ids`)."""
    if "segment_ids" in batch:
        return (batch["segment_ids"].amax(1) + 1).sum()
    return int(batch["input_ids"].shape[0])


def lm_batches(batch) -> list[dict]:
    """The tokenised batches of a step: one, or one per source of a multi-source step."""
    if not isinstance(batch, dict):
        return []
    parts = [part for _, part in split_sources(batch).values()]
    return [p for p in parts if "input_ids" in p and "attention_mask" in p]


def compute_dtype(trainer: L.Trainer, module: L.LightningModule) -> torch.dtype:
    """The dtype matmuls run in, for the peak lookup: the trainer's 16/64-bit precision, else FSDP's
    parameter dtype, else the dtype holding most parameters (a bf16 LM under `32-true` runs bf16)."""
    precision = str(trainer.precision)
    for prefix, dtype in (("bf16", torch.bfloat16), ("16", torch.float16), ("64", torch.float64)):
        if precision.startswith(prefix):
            return dtype
    mixed = getattr(trainer.strategy, "mixed_precision_config", None)
    if getattr(mixed, "param_dtype", None) is not None:
        return mixed.param_dtype
    sizes = Counter()
    for p in module.parameters():
        if p.is_floating_point():
            sizes[p.dtype] += p.numel()
    return max(sizes, key=sizes.get) if sizes else torch.float32


class Throughput(L.Callback):
    """Logs `throughput/*` every `log_every_n_steps` steps: tokens/s, samples/s, step seconds,
    model TFLOP/s and MFU, over the steps since the last log. The first step is counted (slower,
    never timed) and the first `warmup_steps` are not timed (compilation, allocator warm-up); a
    validation run closes the window. Multi-source steps count every source's tokens and samples.
    `peak_tflops`: the device's dense peak for the run's dtype; None looks it up with Lightning's
    `get_available_flops`, and MFU is left out (said once) where no peak is known (CPU)."""

    def __init__(self, log_every_n_steps: int = 10, warmup_steps: int = 2, peak_tflops: float | None = None) -> None:
        if log_every_n_steps < 1 or warmup_steps < 0:
            raise ValueError("Throughput: log_every_n_steps must be >= 1 and warmup_steps >= 0")
        if peak_tflops is not None and peak_tflops <= 0:
            raise ValueError(f"Throughput: peak_tflops must be > 0 or None (look it up), got {peak_tflops}")
        self.log_every_n_steps, self.warmup_steps, self.peak_tflops = log_every_n_steps, warmup_steps, peak_tflops
        self.peak: float | None = peak_tflops  # TFLOP/s in use: given or looked up
        self.flops_per_token: float | None = None
        self.clock_reads: list[int] = []  # global steps at which the device was synced and the clock read
        self._counter: ModelFlops | None = None
        self._start: float | None = None  # wall clock when the open window began; None: closed
        self._counts: torch.Tensor | None = None  # [tokens, samples] on the device, read once per window
        self._steps = 0

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.peak_tflops is not None:
            return
        device, dtype = trainer.strategy.root_device, compute_dtype(trainer, pl_module)
        flops = get_available_flops(device, dtype)
        self.peak = flops / 1e12 if flops else None
        if self.peak is None:
            rank_zero_info(f"Throughput: no peak FLOP/s known for {device.type} ({dtype}), so MFU is not "
                           "logged; set `peak_tflops` to log it")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.flops_per_token is None and self._counter is None and lm_batches(batch):
            self._counter = ModelFlops()
            self._counter.__enter__()

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if self._counter is not None:
            self._counter.in_backward = True

    def on_after_backward(self, trainer, pl_module) -> None:
        if self._counter is not None:
            self._counter.in_backward = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        parts = lm_batches(batch)
        if self._counter is not None:
            flops = self._stop_counting()
            tokens = sum(int(lm_tokens(p)) for p in parts)  # untimed step: a sync is free
            self.flops_per_token = flops / max(tokens, 1)
        if self._start is None:
            if self.flops_per_token is not None and trainer.global_step >= self.warmup_steps:
                self._counts = torch.zeros(2, dtype=torch.long, device=pl_module.device)
                self._start, _ = self._clock(trainer)
                self._steps = 0
            return
        for part in parts:  # device ops only: nothing waits here
            self._counts[0] += lm_tokens(part)
            self._counts[1] += samples_in(part)
        self._steps += 1
        if self._steps >= self.log_every_n_steps:
            now, (tokens, samples) = self._clock(trainer)
            metrics = self.metrics(now - self._start, tokens, samples, self._steps)
            for logger in trainer.loggers:  # straight to the loggers: `self.log` would repeat it every step
                logger.log_metrics(metrics, step=trainer.global_step)
            self._counts.zero_()
            self._start, self._steps = now, 0

    def on_validation_start(self, trainer, pl_module) -> None:
        self._start = None  # validation time is not training time: reopen after the next step

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self._counter is not None:
            self._stop_counting()

    def _stop_counting(self) -> int:
        counter, self._counter = self._counter, None
        counter.__exit__(None, None, None)
        return counter.flops

    def _clock(self, trainer) -> tuple[float, list[int]]:
        """The interval's one host-device sync: reading the counters waits for every queued kernel."""
        self.clock_reads.append(trainer.global_step)
        counts = self._counts.tolist()
        return time.perf_counter(), counts

    def metrics(self, seconds: float, tokens: int, samples: int, steps: int) -> dict[str, float]:
        seconds = max(seconds, 1e-12)
        out = {"throughput/tokens_per_s": tokens / seconds, "throughput/samples_per_s": samples / seconds,
               "throughput/step_seconds": seconds / max(steps, 1)}
        if self.flops_per_token is not None:
            tflops = self.flops_per_token * tokens / seconds / 1e12
            out["throughput/model_tflops_per_s"] = tflops
            if self.peak:
                out["throughput/mfu"] = tflops / self.peak
        return out
