"""`chimera eval`: results and per-sample files, scoring existing predictions, official-format converters,
W&B logging and clear errors (batch-size invariance: tests/test_eval_batching.py)."""

import hashlib
import json

import pytest
import yaml

from data.shapes import write_shapes
from tests.tiny import experiment_config, tiny_world
from train.checkpoint import load_module
from train.cli import main
from train.evaluation.decoding import Decoding, cut_at_stop
from train.evaluation.runner import evaluate_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny LLaVA fitted for a few steps: (world dir, experiment yaml, checkpoint)."""
    root = tmp_path_factory.mktemp("eval")
    world = tiny_world(root)
    cfg = experiment_config(world, root, max_steps=6)
    path = root / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(path)])
    ckpt = next((root / "tiny").rglob("last.ckpt"), None) or next((root / "tiny").rglob("*.ckpt"))
    return world, path, ckpt


def _jsonl(path):
    return [json.loads(line) for line in open(path)]


def test_eval_writes_results_and_per_sample_records(trained, tmp_path, capsys):
    world, config, ckpt = trained
    out = tmp_path / "out"
    main(["eval", "--config", str(config), "--ckpt", str(ckpt), "--tasks", "vqa", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"vqa", "meta"}
    meta = results["meta"]
    assert meta["checkpoint"] == str(ckpt) and meta["model"] == "LLaVA" and len(meta["config_hash"]) == 16
    assert meta["model_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert meta["max_new_tokens"] == {"vqa": 8} and meta["data_sha256"]["vqa"] == hashlib.sha256(
        (world / "val_qa.jsonl").read_bytes()).hexdigest()
    assert meta["data"]["vqa"] == str(world / "val_qa.jsonl")
    rows = _jsonl(out / "vqa.jsonl")
    data = _jsonl(world / "val_qa.jsonl")
    assert [r["id"] for r in rows] == [d["id"] for d in data]
    assert {"id", "image", "prompt", "prediction", "reference", "score", "type"} <= rows[0].keys()
    # the aggregate is exactly the mean of the per-sample scores, per type too
    assert results["vqa"]["accuracy"] == pytest.approx(sum(r["score"] for r in rows) / len(rows))
    shape = [r["score"] for r in rows if r["type"] == "shape"]
    assert results["vqa"]["accuracy_shape"] == pytest.approx(sum(shape) / len(shape))
    assert results["vqa"]["n"] == len(data) and results["vqa"]["skipped"] == 0
    assert "accuracy_non_relational" in capsys.readouterr().out


def test_score_existing_predictions_without_a_model(trained, tmp_path):
    world, _, _ = trained
    data = _jsonl(world / "val_qa.jsonl")
    # half right (gold answer, decorated so normalisation must work), half wrong, one missing
    preds = [{"id": d["id"], "prediction": (d["answer"].upper() + "." if i % 2 == 0 else "zebra")}
             for i, d in enumerate(data[:-1])]
    pred_file = tmp_path / "preds.jsonl"
    pred_file.write_text("".join(json.dumps(p) + "\n" for p in preds))
    # a missing prediction is an error naming how many and which, unless --allow-missing
    with pytest.raises(ValueError, match=rf"1 of {len(data)} samples .* no prediction \(first ids: '{data[-1]['id']}'\)"):
        main(["eval", "--tasks", "vqa", "--predictions", str(pred_file), "--data", str(world / "val_qa.jsonl"),
              "--out", str(tmp_path / "out")])
    main(["eval", "--tasks", "vqa", "--predictions", str(pred_file), "--data", str(world / "val_qa.jsonl"),
          "--out", str(tmp_path / "out"), "--allow-missing"])
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    right = sum(1 for i in range(len(data) - 1) if i % 2 == 0)
    assert results["vqa"]["accuracy"] == pytest.approx(right / (len(data) - 1))
    assert results["vqa"]["skipped"] == 1
    # an id that the data file does not have is an error naming the file
    pred_file.write_text(json.dumps({"id": "nope", "prediction": "x"}) + "\n")
    with pytest.raises(ValueError, match="not in"):
        main(["eval", "--tasks", "vqa", "--predictions", str(pred_file), "--data", str(world / "val_qa.jsonl"),
              "--out", str(tmp_path / "out2")])


def test_caption_and_pope_tasks_on_the_shapes_world(trained, tmp_path):
    _, _, ckpt = trained
    shapes = tmp_path / "shapes"
    write_shapes(shapes, train_images=8, val_images=3, seed=0)
    out = tmp_path / "out"
    main(["eval", "--ckpt", str(ckpt), "--tasks", "caption,pope", "--data", f"caption={shapes / 'val_captions.jsonl'}",
          "--data", f"pope={shapes / 'pope_val.jsonl'}", "--out", str(out), "--max-new-tokens", "6"])
    results = json.loads((out / "results.json").read_text())
    assert {"cider_d", "bleu_4", "n"} <= results["caption"].keys()
    assert {"f1", "f1_random", "f1_popular", "f1_adversarial", "yes_ratio", "unparsed"} <= results["pope"].keys()
    caps = _jsonl(out / "caption.jsonl")
    assert len(caps) == 3 and all(isinstance(r["reference"], list) and r["score"] is not None for r in caps)
    assert results["caption"]["cider_d"] == pytest.approx(sum(r["score"] for r in caps) / 3)
    pope = _jsonl(out / "pope.jsonl")
    assert {r["split"] for r in pope} == {"random", "popular", "adversarial"}


def test_unreadable_image_is_skipped_and_counted(trained, tmp_path):
    world, _, ckpt = trained
    data = _jsonl(world / "val_qa.jsonl")[:4]
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "bad.png").write_bytes(b"not a png")
    data[1] = {**data[1], "image": "images/bad.png"}
    for d in data[2:]:
        d["image"] = str(world / d["image"])
    data[0]["image"] = str(world / data[0]["image"])
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in data))
    results, rows = evaluate_model(load_module(ckpt), {"vqa": path}, tmp_path / "out", Decoding(batch_size=2))
    assert results["vqa"]["skipped"] == 1 and results["vqa"]["n"] == 3
    assert rows["vqa"][1]["skipped"] is True and rows["vqa"][1]["prediction"] is None


def test_eval_logs_results_and_sample_table_to_wandb(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    world, config, ckpt = trained
    cfg = yaml.safe_load(config.read_text())
    cfg["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.WandbLogger",
                                "init_args": {"project": "chimera-eval", "save_dir": str(tmp_path), "offline": True}}
    path = tmp_path / "wandb.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["eval", "--config", str(path), "--ckpt", str(ckpt), "--tasks", "vqa", "--out", str(tmp_path / "out")])
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    tables = list(runs[0].rglob("*vqa_samples*.table.json"))
    assert tables
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["id", "image", "prompt", "prediction", "reference", "score"]
    assert len(table["data"]) == min(32, sum(1 for _ in open(world / "val_qa.jsonl")))


def test_user_errors_name_the_cause(trained, tmp_path):
    world, config, ckpt = trained
    with pytest.raises(ValueError, match="unknown eval task 'vqa2'"):
        main(["eval", "--ckpt", str(ckpt), "--tasks", "vqa2", "--data", str(world / "val_qa.jsonl"),
              "--out", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        main(["eval", "--ckpt", str(ckpt), "--tasks", "vqa", "--data", str(tmp_path / "missing.jsonl"),
              "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="no data file for task 'pope'"):
        main(["eval", "--ckpt", str(ckpt), "--tasks", "pope", "--out", str(tmp_path)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": 1, "image": "x.png"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl: no 'question' column \\(the 'vqa' task's 'question' field\\)"):
        main(["eval", "--ckpt", str(ckpt), "--tasks", "vqa", "--data", str(bad), "--out", str(tmp_path)])


def test_stop_strings_cut_predictions():
    assert cut_at_stop("left\nUSER: next", ["\n"]) == "left"
    assert cut_at_stop("a red circle. USER:", ["USER:", "\n"]) == "a red circle."
    assert cut_at_stop("square", []) == "square"


def test_eval_at_the_end_of_fit(tmp_path):
    world = tiny_world(tmp_path)
    cfg = experiment_config(world, tmp_path, max_steps=2)
    cfg["trainer"]["callbacks"] = [{"class_path": "train.evaluation.callback.EvalAtFitEnd",
                                    "init_args": {"tasks": ["vqa"], "limit": 5}}]
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(path)])
    run = tmp_path / "tiny" / "version_0"
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["vqa"]["n"] == 5 and len(_jsonl(run / "eval" / "vqa.jsonl")) == 5
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert "eval/vqa/accuracy" in header
    # a misspelled task fails when the config is parsed, before training
    cfg["trainer"]["callbacks"][0]["init_args"]["tasks"] = ["vqq"]
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises((SystemExit, ValueError)):
        main(["fit", "--config", str(path)])


def test_default_prompt_suffixes_follow_llava_15():
    from data.writers import CAPTION_PROMPT
    from train.evaluation.runner import make_task

    short = "\nAnswer the question using a single word or phrase."
    assert make_task("vqa").prompt({"question": "What colour is the circle?"}) == "What colour is the circle?" + short
    assert make_task("pope").prompt({"question": "Is there a square?"}) == "Is there a square?" + short
    assert make_task("caption").prompt({}) == CAPTION_PROMPT  # captions: none
    assert make_task("vqa", "").prompt({"question": "What?"}) == "What?"
    with pytest.raises(ValueError, match="has no prompt to suffix"):
        make_task("retrieval", "x")


def test_eval_template_and_prompt_suffix_options(trained, tmp_path):
    from data.templates import ChatTemplate
    from train.evaluation.decoding import prompt_template

    world, _, ckpt = trained
    out = tmp_path / "out"
    main(["eval", "--ckpt", str(ckpt), "--tasks", "vqa", "--data", str(world / "val_qa.jsonl"), "--out", str(out),
          "--limit", "2", "--max-new-tokens", "2", "--template", "vicuna_v1", "--prompt-suffix", "vqa=\\nOne word."])
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["prompts"] == {"vqa": {"suffix": "\nOne word.", "template": "vicuna_v1"}}
    assert results["meta"]["decoding"]["template"] == "vicuna_v1"
    data = _jsonl(world / "val_qa.jsonl")[:2]
    assert [r["prompt"] for r in _jsonl(out / "vqa.jsonl")] == [d["question"] + "\nOne word." for d in data]
    module = load_module(ckpt)
    assert prompt_template(module, Decoding(template="vicuna_v1")) == ChatTemplate.named("vicuna_v1")
    assert prompt_template(module, Decoding()) is module.template


def test_eval_records_default_prompts(trained, tmp_path):
    world, _, ckpt = trained
    results, rows = evaluate_model(load_module(ckpt), {"vqa": world / "val_qa.jsonl"}, tmp_path / "out",
                                   Decoding(max_new_tokens=1), limit=1)
    prompts = results["meta"]["prompts"]["vqa"]
    assert prompts["suffix"] == "\nAnswer the question using a single word or phrase."
    assert prompts["template"]["style"] == "roles" and prompts["template"]["roles"] == ("USER", "ASSISTANT")
    assert rows["vqa"][0]["prompt"].endswith("single word or phrase.")


def test_prompt_suffix_errors(trained, tmp_path):
    world, _, ckpt = trained
    with pytest.raises(ValueError, match=r"prompt suffixes for tasks not evaluated: \['caption'\]"):
        main(["eval", "--ckpt", str(ckpt), "--tasks", "vqa", "--data", str(world / "val_qa.jsonl"),
              "--out", str(tmp_path / "o"), "--prompt-suffix", "caption=x"])
    with pytest.raises(ValueError, match="write TASK=TEXT"):
        main(["eval", "--ckpt", str(ckpt), "--tasks", "vqa", "--data", str(world / "val_qa.jsonl"),
              "--out", str(tmp_path / "o"), "--prompt-suffix", "no-equals-sign"])
