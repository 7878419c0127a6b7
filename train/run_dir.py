"""Where a run writes: one folder per run, decided here and nowhere else, whatever the logger
(CSV, W&B or none), so two experiments, or two runs of one, never overwrite each other:

    <root>/<name>/version_<N>/   run.json config.yaml metrics.csv predictions/ checkpoints/ eval/ open_clip.pt

- root: `run.root`, else the logger's `save_dir`, else `runs`;
- name: `run.name`, else the CSV/TensorBoard logger's `name`, else the experiment file's name;
- N: one past the highest there, claimed with an exclusive mkdir (two launches never share it);
- `run.dir` names the folder outright and reuses it (the pipeline's stage folders);
- `fit --ckpt_path <run>/checkpoints/....ckpt` resumes inside `<run>` (it holds `run.json`);
- `<root>/<name>/latest` links to the newest fit's folder, so one experiment can name another's
  outputs (`runs/llava_shapes_tiny/latest/checkpoints/last.ckpt`) without a fixed shared path.

Only the launching process decides. Ranks that Lightning starts inherit its folder through
CHIMERA_RUN_DIR, and ranks that torchrun or a multi-task srun start agree on `job-<id>`, so no
rank needs a collective to learn it (`trainer.log_dir` is one; see train/distributed.py).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L

ENV = "CHIMERA_RUN_DIR"
MARKER = "run.json"


@dataclass
class RunSettings:
    """The `run:` section of an experiment config (all optional).

    Args:
        root: folder that holds one folder per experiment (default: the logger's save_dir, else runs).
        name: the experiment's folder name (default: the CSV logger's name, else the config file's name).
        dir: this exact folder, reused by every attempt (the pipeline's stage folders).
    """

    root: str | None = None
    name: str | None = None
    dir: str | None = None


class RunFolder(L.Callback):
    """Carries the run's folder to the module and callbacks that write into it."""

    def __init__(self, path: str | Path, attempt: int = 0) -> None:
        self.path, self.attempt = Path(path), attempt


def run_folder(trainer: L.Trainer) -> Path:
    """The run's folder. A Trainer built by hand (no RunFolder) falls back to `trainer.log_dir`,
    a collective: call this where every rank runs, never inside a rank-0-only branch."""
    for callback in trainer.callbacks:
        if isinstance(callback, RunFolder):
            return callback.path
    return Path(trainer.log_dir or trainer.default_root_dir)


def process_rank() -> int:
    """Nonzero in a process some launcher started as another rank (it must not decide)."""
    return max(int(os.environ.get(k) or 0) for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def launcher_job() -> str | None:
    """An id that every rank of a job started by torchrun or by a multi-task srun shares."""
    torchrun = os.environ.get("TORCHELASTIC_RUN_ID")
    if torchrun and torchrun != "none":
        return torchrun
    if int(os.environ.get("SLURM_NTASKS") or 1) > 1 and os.environ.get("SLURM_JOB_ID"):
        return f"{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', '0')}"
    return None


def owning_run(ckpt_path: str | Path | None) -> Path | None:
    """The run folder a checkpoint (file or sharded directory) was saved in, if it was saved in one.
    Named through a link (`<name>/latest/checkpoints/last.ckpt`), it is the folder the link points
    at: the run resumes in `version_<N>` and `latest` keeps pointing there."""
    if not ckpt_path or "://" in str(ckpt_path) or not Path(ckpt_path).exists():
        return None
    for parent in list(Path(os.path.abspath(ckpt_path)).parents)[:3]:
        if (parent / MARKER).is_file():
            return parent.resolve()
    return None


def next_version(parent: Path) -> Path:
    """A new `version_<N>` under `parent`, created here so that a concurrent launch takes the next one."""
    parent.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for p in parent.iterdir() if (m := re.fullmatch(r"version_(\d+)", p.name))]
    n = max(taken, default=-1) + 1
    while True:
        try:
            (parent / f"version_{n}").mkdir()
            return parent / f"version_{n}"
        except FileExistsError:
            n += 1


def decide(settings: RunSettings, logger_dir: str | None, logger_name: str | None, config_name: str | None,
           resume_from: str | None) -> Path:
    """The run's folder (absolute), by the rules in this module's docstring."""
    if settings.dir:
        return Path(os.path.abspath(settings.dir))
    if process_rank() > 0 and os.environ.get(ENV):
        return Path(os.environ[ENV])
    resumed = owning_run(resume_from)
    if resumed is not None:
        return resumed
    parent = Path(os.path.abspath(settings.root or logger_dir or "runs")) / (settings.name or logger_name
                                                                            or config_name or "default")
    job = launcher_job()
    if job:
        return parent / f"job-{job}"
    if process_rank() > 0:
        raise RuntimeError(f"this process is rank {process_rank()} but was not told its run folder: "
                           "pass the same --run.dir to every rank")
    return next_version(parent)


def open_attempt(run_dir: Path, command: str, resume_from: str | None) -> int:
    """Record this attempt in `run.json` (launching process only); returns its number (0 = first)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = run_dir / MARKER
    record = json.loads(marker.read_text()) if marker.is_file() else {"attempts": []}
    record["attempts"].append({"command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                               "ckpt_path": str(resume_from) if resume_from else None})
    marker.write_text(json.dumps(record, indent=2) + "\n")
    return len(record["attempts"]) - 1


def point_latest(run_dir: Path) -> None:
    """Make `<experiment>/latest` link to this run's folder (replaced in one step)."""
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name, target_is_directory=True)
    os.replace(tmp, link)
