"""Pipelines: stages run in order into their own folders, finished stages are skipped, an
interrupted fit resumes from its last checkpoint (with one metrics curve) unless its spec changed,
`--only` refuses missing or stale upstream stages, the experiment's own checkpoint callbacks are
kept, a failing stage keeps earlier outputs, and the report has one row per variant."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from tests.tiny import experiment_config
from train.pipeline import Pipeline, resolved_fit_config, set_dotted
from train.run_metrics import read_metrics


class CrashOnce(L.Callback):
    """Fails the run when training reaches step `n`, the first time only (it leaves `flag` behind)."""

    def __init__(self, n: int, flag: str) -> None:
        self.n, self.flag = n, Path(flag)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.n and not self.flag.exists():
            self.flag.touch()
            raise RuntimeError(f"crash at step {self.n}")


def _pipeline(tmp_path, steps=4, bad_stage=False):
    exp = experiment_config(tmp_path / "unused", tmp_path / "unused", max_steps=steps)
    exp_path = tmp_path / "exp.yaml"
    exp_path.write_text(yaml.safe_dump(exp))
    fit_set = {"model.init_args.model.init_args.language.init_args.tokenizer": "{data}/tokenizer",
               "data.init_args.train_json": "{data}/train.json", "data.init_args.val_qa": "{data}/val_qa.jsonl"}
    stages = [
        {"name": "data", "data": {"world": "sort-of-clevr", "train_images": 24, "val_images": 4,
                                  "questions_per_image": 2}},
        {"name": "sft", "fit": str(exp_path), "set": fit_set, "checkpoint_every": 2},
        {"name": "eval_sft", "eval": {"ckpt": "{sft}/checkpoints/last.ckpt", "data": {"vqa": "{data}/val_qa.jsonl"},
                                      "decoding": {"batch_size": 4}}},
        {"name": "report", "report": {"title": "tiny", "variants": [{"name": "llava", "fit": "sft",
                                                                       "eval": "eval_sft"}]}},
    ]
    if bad_stage:
        stages.insert(2, {"name": "broken", "fit": str(tmp_path / "missing.yaml")})
    spec = {"out": str(tmp_path / "out"), "stages": stages}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_pipeline_runs_skips_and_reports(tmp_path):
    logs = []
    path = _pipeline(tmp_path)
    Pipeline(path, log=logs.append).run()
    out = tmp_path / "out"
    for stage in ("data", "sft", "eval_sft", "report"):
        assert (out / stage / "complete.json").is_file(), stage
    assert (out / "sft" / "checkpoints" / "last.ckpt").is_file()
    for name in ("config.yaml", "metrics.csv", "run.json", "started.json"):  # the stage folder is its run folder
        assert (out / "sft" / name).is_file(), name
    assert len(list((out / "sft" / "predictions").glob("*.jsonl"))) == 1
    results = json.loads((out / "eval_sft" / "results.json").read_text())
    assert results["vqa"]["n"] == 16  # 4 val images x 2 x 2 questions
    report = (out / "report" / "report.md").read_text()
    assert "| llava | LLaVA / MLPConnector (full) |" in report and "loss_curves.png" in report
    assert (out / "report" / "loss_curves.png").is_file()
    assert any("VQA acc" in line and "trainable params" in line for line in "\n".join(logs).splitlines())
    # a second run skips everything
    logs.clear()
    Pipeline(path, log=logs.append).run()
    assert [line for line in logs if "skipped" in line] == [f"[pipeline] {s}: complete, skipped"
                                                           for s in ("data", "sft", "eval_sft", "report")]


def test_an_edited_config_reruns_its_stage_and_what_reads_it(tmp_path):
    path = _pipeline(tmp_path, steps=2)
    Pipeline(path, log=lambda m: None).run()
    out = tmp_path / "out"
    before = (out / "sft" / "checkpoints" / "last.ckpt").read_bytes()
    exp_path = tmp_path / "exp.yaml"
    exp = yaml.safe_load(exp_path.read_text())
    exp["model"]["init_args"]["lr"] = 1e-4  # the experiment file changes, the pipeline file does not
    exp_path.write_text(yaml.safe_dump(exp))
    with pytest.raises(ValueError, match=r"^--only: 'eval_sft' reads 'sft', which is stale \(its spec, configs"):
        Pipeline(path, log=lambda m: None).run(only=["eval_sft"])
    logs = []
    Pipeline(path, log=logs.append).run()
    assert "[pipeline] data: complete, skipped" in logs
    for stage in ("sft", "eval_sft", "report"):  # the edited stage and every stage reading from it
        assert f"[pipeline] {stage}: running" in logs, stage
        kept = list(out.glob(f"{stage}.previous-*"))
        assert len(kept) == 1 and (kept[0] / "complete.json").is_file()  # nothing written is lost
    assert not any("resuming" in line for line in logs)  # a fresh run, not the old final checkpoint
    kept_ckpt = next(out.glob("sft.previous-*")) / "checkpoints" / "last.ckpt"
    assert kept_ckpt.read_bytes() == before
    assert (out / "sft" / "checkpoints" / "last.ckpt").read_bytes() != before


def _crashing_pipeline(tmp_path, user_checkpoint: dict | None = None):
    """data + sft (6 steps, checkpoint every 2) whose fit fails at step 3 the first time."""
    path = _pipeline(tmp_path, steps=6)
    spec = yaml.safe_load(path.read_text())
    callbacks = [user_checkpoint] if user_checkpoint else []
    callbacks.append({"class_path": "tests.test_pipeline.CrashOnce",
                      "init_args": {"n": 3, "flag": str(tmp_path / "crashed")}})
    spec["stages"][1]["set"]["trainer.callbacks"] = callbacks
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(RuntimeError, match="crash at step 3"):
        Pipeline(path, log=lambda m: None).run(only=["data", "sft"])
    return path


def test_interrupted_fit_resumes_with_one_metrics_curve_and_keeps_user_checkpoints(tmp_path):
    user = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"every_n_train_steps": 3, "save_top_k": -1, "dirpath": str(tmp_path / "elsewhere")}}
    path = _crashing_pipeline(tmp_path, user)
    sft = tmp_path / "out" / "sft"
    assert json.loads((sft / "started.json").read_text())["kind"] == "fit" and not (sft / "complete.json").exists()
    logs = []
    Pipeline(path, log=logs.append).run(only=["data", "sft"])
    assert f"[pipeline] sft: resuming from {sft / 'checkpoints' / 'last.ckpt'}" in logs
    assert torch.load(sft / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
    losses = [int(r["step"]) for r in read_metrics(sft) if r.get("train/loss")]
    assert losses == [0, 1, 2, 3, 4, 5]  # the steps before the crash and after the resume, once each
    assert (sft / "metrics.attempt0.csv").is_file()
    user_dir = sft / "checkpoints" / "callback0"
    assert any(f"[pipeline] sft: keeping your ModelCheckpoint (callbacks[0]); its checkpoints go to {user_dir}"
               == line for line in logs)
    assert any("step=6" in p.name for p in user_dir.glob("*.ckpt")) and not (tmp_path / "elsewhere").exists()


def test_interrupted_fit_whose_spec_changed_starts_afresh(tmp_path):
    path = _crashing_pipeline(tmp_path)
    out = tmp_path / "out"
    started = json.loads((out / "sft" / "started.json").read_text())["spec_hash"]
    spec = yaml.safe_load(path.read_text())
    spec["stages"][1]["set"]["trainer.max_steps"] = 4
    path.write_text(yaml.safe_dump(spec))
    logs = []
    Pipeline(path, log=logs.append).run(only=["data", "sft"])
    assert not any("resuming" in line for line in logs)
    partial = out / f"sft.partial-{started}"
    assert any(line.startswith("[pipeline] sft: interrupted, and its spec") and str(partial) in line for line in logs)
    assert torch.load(partial / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2  # kept
    assert torch.load(out / "sft" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    assert [int(r["step"]) for r in read_metrics(out / "sft") if r.get("train/loss")] == [0, 1, 2, 3]


def test_only_refuses_missing_upstream_stages(tmp_path):
    path = _pipeline(tmp_path)
    with pytest.raises(ValueError) as err:
        Pipeline(path, log=lambda m: None).run(only=["eval_sft"])
    assert str(err.value) == ("--only: 'eval_sft' reads 'data', which is missing; 'eval_sft' reads 'sft', which is "
                              "missing. Run those stages too (add them to --only, or run the whole pipeline).")
    with pytest.raises(ValueError, match="no stage named 'sfft'"):
        Pipeline(path, log=lambda m: None).run(only=["sfft"])
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_user_checkpoint_with_the_stage_schedule_writes_the_stage_checkpoints(tmp_path):
    exp = {"trainer": {"callbacks": [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"every_n_train_steps": 100, "filename": "{step}", "dirpath": "/shared/ckpts"}},
        {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"}]}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    logs = []
    cfg = resolved_fit_config({"name": "sft", "fit": str(tmp_path / "exp.yaml")}, tmp_path / "sft", logs.append)
    assert cfg["run"] == {"dir": str(tmp_path / "sft")}
    assert cfg["trainer"]["callbacks"] == [  # Lightning refuses two with one schedule: the user's does both jobs
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"every_n_train_steps": 100, "filename": "{step}", "dirpath": str(tmp_path / "sft" / "checkpoints"),
                       "save_last": True}},
        {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"}]
    assert logs == [f"[pipeline] sft: your ModelCheckpoint (callbacks[0]) saves on the stage's schedule; it writes "
                    f"the stage's last.ckpt, in {tmp_path / 'sft' / 'checkpoints'}"]


def test_failing_stage_keeps_earlier_outputs(tmp_path):
    path = _pipeline(tmp_path, bad_stage=True)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        Pipeline(path, log=lambda m: None).run()
    out = tmp_path / "out"
    assert (out / "data" / "complete.json").is_file() and (out / "sft" / "complete.json").is_file()
    assert not (out / "broken" / "complete.json").exists()


def test_set_dotted_and_bad_specs(tmp_path):
    cfg = {"trainer": {"callbacks": [{"init_args": {}}]}}
    set_dotted(cfg, "trainer.callbacks.0.init_args.dirpath", "x")
    set_dotted(cfg, "model.init_args.lr", 0.1)
    assert cfg["trainer"]["callbacks"][0]["init_args"]["dirpath"] == "x" and cfg["model"]["init_args"]["lr"] == 0.1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"stages": [{"name": "a", "fit": "x", "eval": {}}]}))
    with pytest.raises(ValueError, match="exactly one of"):
        Pipeline(bad)


def test_a_two_process_fit_stage_runs_each_rank_once(tmp_path):
    """`chimera pipeline run` as a user launches it, with a fit stage on 2 gloo ranks: each rank runs
    that stage (not the pipeline again), then the eval stage after it runs once."""
    from tests.cli_run import chimera
    from tests.tiny import tiny_world

    world = tiny_world(tmp_path)
    path = _pipeline(tmp_path, steps=2)
    spec = yaml.safe_load(path.read_text())
    spec["stages"] = spec["stages"][1:3]  # the world is already written: fit, eval
    spec["stages"][0]["set"] = {
        **{k: v.replace("{data}", str(world)) for k, v in spec["stages"][0]["set"].items()},
        "trainer.devices": 2, "trainer.strategy": "ddp", "data.init_args.num_workers": 0,
        "model.init_args.stage": "finetune",  # the tower past select_layer trains nothing: DDP refuses it
        "trainer.callbacks": [{"class_path": "tests.test_ddp.RecordRank", "init_args": {"out_dir": str(tmp_path)}}]}
    spec["stages"][1]["eval"]["data"] = {"vqa": str(world / "val_qa.jsonl")}
    path.write_text(yaml.safe_dump(spec))
    proc = chimera("pipeline", "run", path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert proc.stdout.count("[pipeline] eval_sft: running") == 1
    assert (tmp_path / "out" / "eval_sft" / "complete.json").is_file()
    assert json.loads((tmp_path / "out" / "sft" / "complete.json").read_text())["kind"] == "fit"
