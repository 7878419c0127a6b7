"""The `chimera` command: config validation before building, a tiny fit, checkpoints, generate."""

import csv
import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from tests.tiny import experiment_config, tiny_world
from train.checkpoint import load_module
from train.cli import main


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("world"))


def _write(path, cfg):
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _fit_fails(capsys, args):
    with pytest.raises(SystemExit) as exc:
        main(["fit", *args])
    assert exc.value.code != 0
    return capsys.readouterr().err


def test_misspelled_key_fails_before_anything_is_built(world, tmp_path, capsys):
    cfg = experiment_config(world, tmp_path)
    vision_args = cfg["model"]["init_args"]["model"]["init_args"]["vision"]["init_args"]
    vision_args["selct_layer"] = vision_args.pop("select_layer")
    # a missing tokenizer would fail model construction; the key error must come first
    cfg["model"]["init_args"]["model"]["init_args"]["language"]["init_args"]["tokenizer"] = str(tmp_path / "none")
    err = _fit_fails(capsys, ["--config", _write(tmp_path / "bad.yaml", cfg)])
    assert "selct_layer" in err
    assert not (tmp_path / "tiny").exists()


def test_wrong_type_names_the_key(world, tmp_path, capsys):
    cfg = _write(tmp_path / "ok.yaml", experiment_config(world, tmp_path))
    err = _fit_fails(capsys, ["--config", cfg, "--trainer.max_steps", "many"])
    assert "max_steps" in err
    err = _fit_fails(capsys, ["--config", cfg, "--model.init_args.stage", "pretrain"])
    assert "stage" in err and "pretrain" in err


def test_missing_data_file_is_named(world, tmp_path):
    cfg = experiment_config(world, tmp_path)
    cfg["data"]["init_args"]["train_json"] = str(tmp_path / "nope.json")
    with pytest.raises((FileNotFoundError, ValueError), match="data.train_json: .*nope.json does not exist"):
        main(["fit", "--config", _write(tmp_path / "c.yaml", cfg)])


def test_print_config_shows_resolved_experiment(world, tmp_path, capsys):
    cfg = _write(tmp_path / "ok.yaml", experiment_config(world, tmp_path))
    with pytest.raises(SystemExit):
        main(["fit", "--config", cfg, "--model.init_args.lr", "0.5", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["lr"] == 0.5
    assert printed["model"]["init_args"]["model"]["init_args"]["vision"]["init_args"]["select_layer"] == -2


def test_dotted_overrides_of_architecture_dicts_arrive_typed(world, tmp_path):
    """`--...config.num_hidden_layers 1` sets an int (a bare `dict` field would keep the string "1",
    which the LM's config refuses), and the model built from it has that many layers."""
    cfg = experiment_config(world, tmp_path, max_steps=1)
    lm, vision = "--model.init_args.model.init_args.language.init_args", "--model.init_args.model.init_args.vision.init_args"
    main(["fit", "--config", _write(tmp_path / "ok.yaml", cfg), f"{lm}.config.num_hidden_layers", "1",
          f"{lm}.config.tie_word_embeddings", "false", f"{vision}.model_kwargs.channels", "[8, 8, 12, 16]"])
    saved = yaml.safe_load((tmp_path / "tiny" / "version_0" / "config.yaml").read_text())
    args = saved["model"]["init_args"]["model"]["init_args"]
    assert args["language"]["init_args"]["config"]["num_hidden_layers"] == 1
    assert args["language"]["init_args"]["config"]["tie_word_embeddings"] is False
    assert args["vision"]["init_args"]["model_kwargs"]["channels"] == [8, 8, 12, 16]
    module = load_module(str(next((tmp_path / "tiny" / "version_0" / "checkpoints").glob("*.ckpt"))))
    hf_config = module.model.language.model.config
    assert hf_config.num_hidden_layers == 1 and hf_config.tie_word_embeddings is False
    assert module.model.vision.dim == 12 + 2  # select_layer -2: the third stage, plus two coordinates


def test_fit_saves_config_checkpoint_predictions_and_generates(world, tmp_path, capsys):
    cfg = experiment_config(world, tmp_path, max_steps=3)
    main(["fit", "--config", _write(tmp_path / "ok.yaml", cfg)])
    run = tmp_path / "tiny" / "version_0"
    assert (run / "config.yaml").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["trainer"]["max_steps"] == 3
    ckpts = list((run / "checkpoints").glob("*.ckpt"))
    assert len(ckpts) == 1
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert any(r.get("val/acc_non_relational") for r in rows) and any(r.get("train/loss") for r in rows)
    preds = [json.loads(line) for line in open(next((run / "predictions").glob("*.jsonl")))]
    assert {"id", "question", "answer", "prediction", "correct", "type"} <= preds[0].keys()
    assert len(preds) == sum(1 for _ in open(world / "val_qa.jsonl"))
    # the checkpoint alone rebuilds the model (config travels inside it)
    module = load_module(ckpts[0])
    assert module.stage == "full"
    capsys.readouterr()
    rec = json.loads(open(world / "val_qa.jsonl").readline())
    main(["generate", "--ckpt", str(ckpts[0]), "--image", str(world / rec["image"]), "--prompt", rec["question"],
          "--max-new-tokens", "3"])
    assert capsys.readouterr().out.strip() == preds[0]["prediction"]


def test_generate_names_a_missing_image(world, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        from train.generate import generate_answer

        cfg = experiment_config(world, tmp_path, max_steps=1)
        main(["fit", "--config", _write(tmp_path / "ok.yaml", cfg)])
        ckpt = next((tmp_path / "tiny").rglob("*.ckpt"))
        generate_answer(str(ckpt), "What?", str(tmp_path / "missing.png"))


def test_corrupt_and_missing_images_are_skipped_and_counted(world, tmp_path):
    broken = tmp_path / "world"
    shutil.copytree(world, broken)
    (broken / "images/train/000000.png").write_bytes(b"not a png")
    (broken / "images/train/000001.png").unlink()
    cfg = experiment_config(broken, tmp_path, max_steps=7)  # 24 images / batch 4 = one epoch + 1 step
    cfg["model"]["init_args"]["max_skip_fraction"] = 0.1  # 2 of 28 (train.data_guard stops more)
    main(["fit", "--config", _write(tmp_path / "ok.yaml", cfg)])
    rows = list(csv.DictReader(open(tmp_path / "tiny" / "version_0" / "metrics.csv")))
    skipped = max(float(r["train/skipped_samples"]) for r in rows if r.get("train/skipped_samples"))
    assert skipped >= 2


def test_bf16_mixed_precision_trains(world, tmp_path):
    cfg = experiment_config(world, tmp_path, max_steps=2)
    cfg["trainer"]["precision"] = "bf16-mixed"
    main(["fit", "--config", _write(tmp_path / "bf16.yaml", cfg)])
    rows = list(csv.DictReader(open(tmp_path / "tiny" / "version_0" / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 2 and all(loss == loss and loss > 0 for loss in losses)


def test_console_script_is_installed():
    exe = shutil.which("chimera") or str(__import__("pathlib").Path(sys.executable).parent / "chimera")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "chimera fit --config" in out


def test_shipped_experiment_configs_validate(capsys):
    for path in sorted(__import__("pathlib").Path("configs/experiments").glob("*.yaml")):
        with pytest.raises(SystemExit) as exc:
            main(["fit", "--config", str(path), "--print_config"])
        assert exc.value.code in (0, None), path
        out = capsys.readouterr().out
        printed = yaml.safe_load(out)
        assert isinstance(printed, dict) and "model" in printed, (path, out[:500])
        assert printed["model"]["class_path"] == yaml.safe_load(path.read_text())["model"]["class_path"]
        inner = printed["model"]["init_args"].get("model") or printed["model"]["init_args"]["language"]
        assert inner["class_path"]  # the composed model (or the LM of the `lm` stage) resolved


def test_frozen_vision_statistics_do_not_move_during_fit(world, tmp_path):
    """Lightning restores submodule modes after validation; a frozen BatchNorm tower must still
    run in eval mode at every step (its running statistics stay those it was built with)."""
    import lightning as L

    from train.checkpoint import build_module

    cfg = experiment_config(world, tmp_path, max_steps=4)
    cfg["model"]["init_args"]["stage"] = "finetune"
    cfg["trainer"]["val_check_interval"] = 2
    main(["fit", "--config", _write(tmp_path / "ft.yaml", cfg)])
    trained = load_module(next((tmp_path / "tiny").rglob("*.ckpt")))
    L.seed_everything(0)
    fresh = build_module(cfg["model"])
    for (name, a), (_, b) in zip(trained.model.vision.named_buffers(), fresh.model.vision.named_buffers()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for a, b in zip(trained.model.connector.parameters(),
                                                      fresh.model.connector.parameters()))
