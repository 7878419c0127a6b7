"""Every run writes into its own folder (train/run_dir.py), whatever the logger: two experiments,
or two runs of one, never overwrite each other; a resume continues in its run's folder with one
metrics curve; `validate` without a logger leaves the working directory alone."""

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from tests.tiny import experiment_config, tiny_world
from train.cli import main
from train.run_metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent


class CrashAt(L.Callback):
    """Fails the run when training reaches step `n` (after the checkpoint of step n - 1)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.n:
            raise RuntimeError(f"crash at step {self.n}")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("world"))


def _wandb(root: Path) -> dict:
    return {"class_path": "lightning.pytorch.loggers.WandbLogger",
            "init_args": {"project": "chimera-test", "save_dir": str(root), "offline": True}}


def _outputs(run: Path) -> dict[str, bytes]:
    files = [run / "config.yaml", *run.glob("predictions/*.jsonl"), *run.glob("checkpoints/*.ckpt")]
    return {str(p.relative_to(run)): p.read_bytes() for p in files}


def _fit_with_wandb(config: Path) -> None:
    """A fit, then its W&B run closed (W&B keeps one run per process open; the next test's logger would reuse it)."""
    import wandb

    try:
        main(["fit", "--config", str(config)])
    finally:
        wandb.finish()


def test_runs_with_wandb_never_overwrite_each_other(world, tmp_path):
    for name, lr in (("a", 1e-3), ("b", 2e-3)):
        cfg = experiment_config(world, tmp_path, max_steps=2, logger=_wandb(tmp_path))
        cfg["model"]["init_args"]["lr"] = lr
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    _fit_with_wandb(tmp_path / "a.yaml")
    first = _outputs(tmp_path / "a" / "version_0")
    _fit_with_wandb(tmp_path / "b.yaml")
    # the saved config reruns the same experiment into its next folder
    _fit_with_wandb(tmp_path / "a" / "version_0" / "config.yaml")
    runs = {"a0": tmp_path / "a" / "version_0", "b0": tmp_path / "b" / "version_0", "a1": tmp_path / "a" / "version_1"}
    outputs = {k: _outputs(run) for k, run in runs.items()}
    for key, files in outputs.items():
        assert sorted(files) == ["checkpoints/epoch=0-step=2.ckpt", "config.yaml",
                                 "predictions/val_step0000002.jsonl"], key
    assert outputs["a0"] == first  # untouched by the two later runs
    lrs = {k: yaml.safe_load(files["config.yaml"])["model"]["init_args"]["lr"] for k, files in outputs.items()}
    assert lrs == {"a0": 1e-3, "b0": 2e-3, "a1": 1e-3}
    assert yaml.safe_load(outputs["a1"]["config.yaml"])["run"]["name"] == "a"
    assert os.readlink(tmp_path / "a" / "latest") == "version_1"
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 3  # W&B keeps its own folders beside them


def test_validate_without_logger_writes_only_its_run_folder(world, tmp_path):
    cfg = experiment_config(world, tmp_path / "fit", max_steps=2)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(path)])
    ckpt = tmp_path / "fit" / "tiny" / "version_0" / "checkpoints" / "epoch=0-step=2.ckpt"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "train.cli", "validate", "--config", str(path),
                           "--trainer.logger", "false", "--ckpt_path", str(ckpt)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.listdir(cwd) == ["runs"]  # nothing loose in the working directory
    run = cwd / "runs" / "exp" / "version_0"  # no logger: named after the config file
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == [
        "config.yaml", "predictions", "predictions/val_step0000000.jsonl", "run.json"]
    assert json.loads((run / "run.json").read_text())["attempts"][0]["command"] == "validate"
    assert sorted(os.listdir(tmp_path / "fit" / "tiny")) == ["latest", "version_0"]  # validate is its own run


@pytest.mark.parametrize("named_by", ["version_0", "latest"])
def test_resume_continues_in_its_run_folder_with_one_metrics_curve(world, tmp_path, named_by):
    """Resumed from the checkpoint by its folder or through `latest` (the path the README gives), the
    run continues in version_0 and `latest` still points there."""
    cfg = experiment_config(world, tmp_path, max_steps=6)
    cfg["trainer"].update(val_check_interval=1000, limit_val_batches=0)
    cfg["trainer"]["callbacks"] = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"save_last": True, "every_n_train_steps": 2}},
        {"class_path": "tests.test_run_dir.CrashAt", "init_args": {"n": 3}}]
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(RuntimeError, match="crash at step 3"):
        main(["fit", "--config", str(path)])
    run = tmp_path / "tiny" / "version_0"
    before = {int(r["step"]): r["train/loss"] for r in read_metrics(run) if r.get("train/loss")}
    assert sorted(before) == [0, 1, 2]
    cfg["trainer"]["callbacks"] = cfg["trainer"]["callbacks"][:1]
    path.write_text(yaml.safe_dump(cfg))
    given = tmp_path / "tiny" / named_by / "checkpoints" / "last.ckpt"
    main(["fit", "--config", str(path), "--ckpt_path", str(given)])
    assert sorted(os.listdir(tmp_path / "tiny")) == ["latest", "version_0"]  # no new folder
    assert os.readlink(tmp_path / "tiny" / "latest") == "version_0"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
    assert (run / "metrics.attempt0.csv").is_file() and (run / "config.attempt1.yaml").is_file()
    rows = read_metrics(run)
    losses = {int(r["step"]): r["train/loss"] for r in rows if r.get("train/loss")}
    assert sorted(losses) == [0, 1, 2, 3, 4, 5]  # one curve: the rows before the crash, then the resume's
    assert [losses[0], losses[1]] == [before[0], before[1]]  # kept from the first attempt
    attempts = json.loads((run / "run.json").read_text())["attempts"]
    assert [a["ckpt_path"] for a in attempts] == [None, str(given)]


def _decide_in(env: dict, root: Path) -> subprocess.CompletedProcess:
    """`decide` in a fresh process with a launcher's environment (as a rank it started sees it)."""
    code = ("import sys; from train.run_dir import RunSettings, decide; "
            "print(decide(RunSettings(root=sys.argv[1]), None, None, 'exp', None))")
    clean = {k: v for k, v in os.environ.items() if k not in
             ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID", "CHIMERA_RUN_DIR")}
    return subprocess.run([sys.executable, "-c", code, str(root)], env={**clean, "PYTHONPATH": str(REPO), **env},
                          capture_output=True, text=True, timeout=120)


def test_every_rank_of_a_launch_agrees_on_the_folder(tmp_path):
    inherited = _decide_in({"LOCAL_RANK": "1", "CHIMERA_RUN_DIR": str(tmp_path / "exp" / "version_7")}, tmp_path)
    assert inherited.stdout.strip() == str(tmp_path / "exp" / "version_7")  # what Lightning's rank 0 chose
    for rank in ("0", "1"):  # torchrun: every rank, rank 0 included, names the job's folder
        torchrun = _decide_in({"RANK": rank, "TORCHELASTIC_RUN_ID": "abc"}, tmp_path)
        assert torchrun.stdout.strip() == str(tmp_path / "exp" / "job-abc"), torchrun.stderr
    untold = _decide_in({"RANK": "1"}, tmp_path)
    assert untold.returncode != 0 and "rank 1 but was not told its run folder" in untold.stderr
    assert not (tmp_path / "exp").exists()  # no rank but the deciding one creates a folder
