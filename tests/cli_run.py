"""Run `chimera` as a user does, in a fresh process, from this checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def chimera(*args, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "CHIMERA_DEBUG"}
    environ.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", WANDB_MODE="offline", **env)
    return subprocess.run([sys.executable, "-m", "train.cli", *map(str, args)], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=300)


def plain_error(proc: subprocess.CompletedProcess, command: str, alone: bool = True) -> str:
    """The stderr line of a user error (status 2, no traceback, no bitsandbytes warning), without
    its `chimera CMD: ` prefix. `alone=False` allows Lightning's info lines before it (`fit`)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "gemm_4bit" not in proc.stderr, proc.stderr
    assert lines and (len(lines) == 1 or not alone), proc.stderr
    assert lines[-1].startswith(f"chimera {command}: "), proc.stderr
    return lines[-1][len(f"chimera {command}: "):]
