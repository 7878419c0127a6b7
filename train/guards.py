"""Stop a run at a non-finite loss without a host sync per step; no checkpoint ever holds an update
made from one.

Reading a loss's value on the host (`torch.isfinite(loss).all()` in an `if`) makes the Python thread
wait for every queued kernel, every step. The guard instead records on the device whether (and at
which step and batch) a loss was non-finite, and reads that record only where a decision is due.
"""

from __future__ import annotations

import lightning as L
import torch


class NonFiniteLossError(FloatingPointError):
    pass


class FiniteLossGuard(L.Callback):
    """A module calls `observe(loss, global_step, batch_idx)` for each loss it trains on (device ops
    only) and returns the guard from `configure_callbacks`; the guard reads its record (one host
    sync) at these points and raises `NonFiniteLossError` naming the first bad step and batch:

    - before the optimizer step of every log step (`trainer.log_every_n_steps`, unless 0): a
      non-finite loss at a log step never updates the weights;
    - before any checkpoint is written (`on_save_checkpoint`: ModelCheckpoint, the CLI's saves);
    - at validation start and at the end of training (a run never exits 0 after one; exports at
      fit end come after this).

    Guarantee: no checkpoint is written at or after a step whose loss was non-finite, and the run
    stops at the first of the points above. Between the bad step and that point the weights in memory
    may take up to `log_every_n_steps - 1` updates derived from it (with logging off, until the next
    save, validation or the end); they are discarded with the run.
    Every rank checks the sum of the ranks' flags (one all-reduce), so all ranks stop together.
    """

    def __init__(self) -> None:
        self._seen: torch.Tensor | None = None  # bool: any non-finite loss so far
        self._step: torch.Tensor | None = None  # global step and batch of the first one
        self._batch: torch.Tensor | None = None
        self._loss: torch.Tensor | None = None  # its value

    def observe(self, loss: torch.Tensor, step: int, batch_idx: int) -> torch.Tensor:
        """Record whether `loss` is finite (no host sync); returns `loss` unchanged."""
        value = loss.detach().float()
        bad = ~torch.isfinite(value).all()
        if self._seen is None:
            self._seen = torch.zeros((), dtype=torch.bool, device=value.device)
            self._step = torch.zeros((), dtype=torch.long, device=value.device)
            self._batch = torch.zeros((), dtype=torch.long, device=value.device)
            self._loss = torch.zeros((), dtype=torch.float32, device=value.device)
        first = bad & ~self._seen
        self._step = torch.where(first, step, self._step)
        self._batch = torch.where(first, batch_idx, self._batch)
        self._loss = torch.where(first, value.sum(), self._loss)
        self._seen = self._seen | bad
        return loss

    def check(self, where: str, strategy=None) -> None:
        """Raise if a non-finite loss was observed here or (given the strategy) on any rank: one host sync."""
        if self._seen is None and strategy is None:
            return
        seen = self._seen if self._seen is not None else torch.zeros((), dtype=torch.bool, device=strategy.root_device)
        flags = seen.float() if strategy is None else strategy.reduce(seen.float(), reduce_op="sum")
        if not bool(flags > 0):
            return
        if self._seen is not None and bool(self._seen):
            what = f"loss is {self._loss.item()} at global step {int(self._step)} (batch {int(self._batch)} of the epoch)"
        else:
            what = "loss is non-finite on another rank"
        raise NonFiniteLossError(
            f"{what}, found {where}: stopping; no checkpoint was written since (the ones written before are "
            "kept: resume from the last one with a lower learning rate, or inspect that batch)")

    # -- where the record is read ------------------------------------------------------------------

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        every = trainer.log_every_n_steps  # 0: logging off (barebones), only the other points check
        if every and trainer.global_step % every == 0:
            self.check(f"before the update of log step {trainer.global_step}", trainer.strategy)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self.check(f"before saving the checkpoint of step {trainer.global_step}", trainer.strategy)

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.check(f"before validating at step {trainer.global_step}", trainer.strategy)

    def on_train_end(self, trainer, pl_module) -> None:
        self.check("at the end of training", trainer.strategy)
