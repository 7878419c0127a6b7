"""DataGuard's decisions on counts: a few unreadable samples pass, a systematic share stops the
run once enough samples were seen (or at the end), and a run with no target token never passes."""

import pytest
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy

from train.data_guard import DataGuard, UnusableDataError

STRATEGY = SingleDeviceStrategy(device=torch.device("cpu"))


def step(guard: DataGuard, samples: int, skipped: int, targets: int, paths=()) -> None:
    guard.add({"samples": samples, "skipped": skipped, "unreadable": list(paths)})
    guard.add_targets(targets)
    guard.reduce(STRATEGY, torch.device("cpu"))


def test_fraction_is_judged_from_min_seen_on():
    guard = DataGuard(max_skip_fraction=0.1, min_seen=40)
    step(guard, 20, 10, 30, ["a.jpg", "b.jpg"])
    guard.check()  # 10 of 20, but fewer than 40 seen
    step(guard, 20, 0, 50)
    with pytest.raises(UnusableDataError, match=r"^10 of 40 samples .* first a.jpg, b.jpg;"):
        guard.check()


def test_a_small_share_passes_to_the_end_and_resumes():
    guard = DataGuard(max_skip_fraction=0.1, min_seen=10)
    step(guard, 50, 4, 90)
    guard.check(final=True)
    again = DataGuard(max_skip_fraction=0.1, min_seen=10)
    again.load_state_dict(guard.state_dict())
    step(again, 50, 7, 10)  # 11 of 100 over both runs
    with pytest.raises(UnusableDataError, match=r"^11 of 100 samples"):
        again.check()


def test_nothing_trained_fails_at_the_end():
    guard = DataGuard(max_skip_fraction=1.0)
    step(guard, 8, 0, 0)
    guard.check()
    with pytest.raises(UnusableDataError, match="trained on nothing: no target token in 8 samples"):
        guard.check(final=True)
    with pytest.raises(UnusableDataError, match="before its first optimizer step"):
        DataGuard().check(final=True)
    with pytest.raises(ValueError, match="max_skip_fraction must be within"):
        DataGuard(max_skip_fraction=1.5)
