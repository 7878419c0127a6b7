"""Stop a run whose data is systematically unusable, on every rank at once, naming why.

A few unreadable samples are skipped and counted; most images missing (a wrong `image_folder`, a
layout the reader does not expect) is a broken run that would otherwise train on a sliver of the
data, or on nothing, and exit 0. The counts of every rank are summed with the step's one
all-reduce (the target-token count the loss needs anyway), so every rank takes the same decision
at the same step and none is left waiting in a collective.
"""

from __future__ import annotations

import torch


class UnusableDataError(ValueError):
    """Too many samples unreadable, or nothing trained on: a data or config problem, not a bug."""


class DataGuard:
    """Counts (target tokens, unreadable samples, samples seen) per rank between optimizer steps.

    max_skip_fraction: the run stops once more than this fraction of the samples seen so far (over
    all ranks, judged from `min_seen` samples on, and at the end) had an unreadable image.
    """

    FIELDS = ("targets", "skipped", "seen")

    def __init__(self, max_skip_fraction: float = 0.01, min_seen: int = 100) -> None:
        if not 0.0 <= max_skip_fraction <= 1.0:
            raise ValueError(f"max_skip_fraction must be within [0, 1], got {max_skip_fraction}")
        self.max_skip_fraction, self.min_seen = max_skip_fraction, min_seen
        self.window = dict.fromkeys(self.FIELDS, 0)
        self.totals: torch.Tensor | None = None  # over all ranks and steps; on the device, unsynced
        self.examples: list[str] = []  # this rank's first unreadable paths

    def add(self, batch: dict) -> None:
        """A collated batch's `skipped`, `samples` and unreadable paths (`data.collate.usable`)."""
        self.window["skipped"] += batch.get("skipped", 0)
        self.window["seen"] += batch.get("samples", 0)
        self.examples += batch.get("unreadable", [])[: 3 - len(self.examples)]

    def add_targets(self, n: int) -> None:
        self.window["targets"] += n

    def reduce(self, strategy, device: torch.device) -> torch.Tensor:
        """This step's counts summed over ranks (one all-reduce; no host sync)."""
        local = torch.tensor([float(self.window[k]) for k in self.FIELDS], dtype=torch.float64, device=device)
        self.window = dict.fromkeys(self.FIELDS, 0)
        step = strategy.reduce(local, reduce_op="sum")
        self.totals = step if self.totals is None else self.totals.to(step.device) + step
        return step

    def check(self, final: bool = False) -> None:
        """Raise when too much was unreadable (reads the totals: one host sync)."""
        if self.totals is None:
            if final:
                raise UnusableDataError("the run ended before its first optimizer step: it trained on nothing")
            return
        targets, skipped, seen = self.totals.tolist()
        paths = (": first " + ", ".join(self.examples)) if self.examples else ""
        if (final or seen >= self.min_seen) and skipped > self.max_skip_fraction * seen:
            raise UnusableDataError(
                f"{int(skipped)} of {int(seen)} samples had a missing or unreadable image (more than "
                f"max_skip_fraction {self.max_skip_fraction}){paths}; check data.image_folder and the paths in the data")
        if final and targets == 0:
            raise UnusableDataError(f"trained on nothing: no target token in {int(seen)} samples "
                                    f"({int(skipped)} unreadable){paths}")

    def state_dict(self) -> dict:
        return {} if self.totals is None else {"totals": self.totals.tolist(), "examples": self.examples}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.totals = torch.tensor(state["totals"], dtype=torch.float64)
            self.examples = list(state["examples"])
