"""Reading raw shard samples: skips counted and warned without flooding, and a fail-fast check.

Why: a reader that silently skips every sample of a format it does not understand spins for
minutes printing a warning per sample and trains nothing. Here a stream whose first `first_n`
samples yield nothing usable stops with one error naming the format it expected and the keys it
found; single corrupt samples are skipped, the first few warned one by one, then in summaries.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from data.collate import Dropped

log = logging.getLogger(__name__)


class Rejected(ValueError):
    """A readable sample left out by a rule (too few matched images, too long): dropped, not corrupt."""


class SkipLog:
    """Warns the first `first` skips one by one, then a summary at 100, 1000, ... skips."""

    def __init__(self, source: str, first: int = 10) -> None:
        self.source, self.first = source, first
        self.count, self.reasons = 0, Counter()

    def __call__(self, key: str, reason: str) -> None:
        self.count += 1
        self.reasons[reason.split(":")[0]] += 1
        if self.count <= self.first:
            log.warning("%s: skipping unreadable sample %s: %s", self.source, key, reason)
            if self.count == self.first:
                log.warning("%s: further skips are summarised at 100, 1000, ... skips", self.source)
        elif _power_of_ten(self.count):
            log.warning("%s: %d unreadable samples skipped so far (%s)", self.source, self.count,
                        ", ".join(f"{n}x {r}" for r, n in self.reasons.most_common(3)))

    def handler(self, exn: Exception) -> bool:
        """webdataset handler for a shard that cannot be opened or untarred: warn, go on."""
        self("(shard)", f"{type(exn).__name__}: {exn}")
        return True


def _power_of_ten(n: int) -> bool:
    while n % 10 == 0 and n > 1:
        n //= 10
    return n == 1


def signature(sample: dict) -> str:
    """The sample's member extensions, and its json's top-level fields when it has one."""
    exts = sorted(k for k in sample if not k.startswith("__"))
    text = f"keys {exts}"
    if "json" in sample:
        try:
            fields = json.loads(sample["json"])
            text += f" with json fields {sorted(fields) if isinstance(fields, dict) else type(fields).__name__}"
        except (ValueError, TypeError):
            text += " with unparseable json"
    return text


class ReadChecked:
    """webdataset stage: each raw sample -> `read(sample)`. A `Rejected` sample becomes `Dropped`,
    any other error `None` (skipped; collators count both); `keep_unusable=False` leaves them out.
    Fails fast: `first_n` samples read (or the stream's end) with none usable raises one ValueError.
    Picklable, so DataLoader workers each check their own stream."""

    def __init__(self, read: Callable[[dict], object], source: str, expected: str, first_n: int = 100,
                 keep_unusable: bool = True) -> None:
        if first_n < 1:
            raise ValueError(f"{source}: the fail-fast sample count must be >= 1, got {first_n}")
        self.read, self.source, self.expected = read, source, expected
        self.first_n, self.keep_unusable = first_n, keep_unusable
        self.skips = SkipLog(source)

    def __call__(self, samples: Iterable[dict]) -> Iterator:
        read = usable = 0
        found: Counter[str] = Counter()
        reasons: Counter[str] = Counter()
        for sample in samples:
            read += 1
            key = sample.get("__key__", "?")
            try:
                item = self.read(sample)
                usable += 1
            except Rejected as exn:
                item = Dropped(key, str(exn))
                if not usable:  # reasons only serve the fail-fast error, which needs none after that
                    reasons[f"dropped: {exn}"] += 1
            except Exception as exn:  # noqa: BLE001 - a corrupt sample must not end the run
                item = None
                reason = f"{type(exn).__name__}: {exn}"
                self.skips(key, reason)
                if not usable:
                    reasons[reason[:200]] += 1
            if not usable:  # only until the first usable sample: a json may hold megabytes of images
                found[signature(sample)] += 1
                if read >= self.first_n:
                    raise self._error(read, found, reasons)
            if self.keep_unusable or not isinstance(item, (Dropped, type(None))):
                yield item
        if read and not usable:
            raise self._error(read, found, reasons)

    def _error(self, read: int, found: Counter, reasons: Counter) -> ValueError:
        seen = "; ".join(f"{sig} ({n}x)" for sig, n in found.most_common())
        why = "; ".join(f"{n}x {r}" for r, n in reasons.most_common(3))
        return ValueError(f"{self.source}: {read} samples read, none usable: expected {self.expected}; "
                          f"found {seen}; why: {why}")
