"""Peak memory of this process, for benchmarks that run each variant in its own process.

CUDA: `torch.cuda.max_memory_allocated`. CPU: the kernel's peak RSS (VmHWM: no tracing
overhead, and tracemalloc cannot see torch's allocations), which can be reset through
/proc/self/clear_refs so that building a model does not count.
"""

from __future__ import annotations


def status_mb(field: str) -> float:
    """A /proc/self/status field (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(field + ":")) / 1024


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
