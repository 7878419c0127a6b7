"""MME: the official answer reader, per-subtask accuracy and accuracy+ over an image's yes/no pair,
(acc + acc+) * 100 per subtask summed into perception and cognition; hand-computed on the
lmms-lab/MME layout, scored from predictions; a model run shows the prompts reach the model."""

import io
import json

import datasets
import pytest
import torch
from PIL import Image

from tests.tiny import module_config, tiny_world
from train.checkpoint import build_module
from train.cli import main
from train.evaluation.decoding import Decoding
from train.evaluation.mme_metric import mme_scores, parse_mme_answer
from train.evaluation.runner import evaluate_model


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def test_answer_reader_is_the_official_parse_pred_ans():
    assert parse_mme_answer("Yes") == "yes" and parse_mme_answer("No.") == "no"
    assert parse_mme_answer("y") == "yes" and parse_mme_answer("N") == "no" and parse_mme_answer("x") == "other"
    assert parse_mme_answer("Yes, there is a dog.") == "yes"
    assert parse_mme_answer("I think yes") == "other"  # only the first four characters are read
    assert parse_mme_answer("Not sure") == "no"  # "no" inside "not " counts, as in the official tool


# (category, image, gold, prediction): per subtask and image pair, by hand
ROWS = [
    ("existence", "existence/1.png", "Yes", "Yes"), ("existence", "existence/1.png", "No", "No"),   # pair right
    ("existence", "existence/2.png", "Yes", "Yes"), ("existence", "existence/2.png", "No", "Yes"),  # one right
    ("count", "count/1.png", "Yes", "yes."), ("count", "count/1.png", "No", "no"),                  # pair right
    ("code_reasoning", "code_reasoning/1.png", "Yes", "Yes"),
    ("code_reasoning", "code_reasoning/1.png", "No", "Maybe"),                                      # other: wrong
    ("code_reasoning", "code_reasoning/2.png", "Yes", "Y"), ("code_reasoning", "code_reasoning/2.png", "No", "N"),
]


def test_scores_by_hand():
    scores = mme_scores([{"category": c, "image": i, "correct": parse_mme_answer(p) == g.lower()}
                         for c, i, g, p in ROWS])
    # existence: 3/4 questions, 1/2 images -> 75 + 50; count: 100 + 100; code_reasoning: 75 + 50
    assert scores["existence_acc"] == 75 and scores["existence_acc_plus"] == 50 and scores["existence_score"] == 125
    assert scores["count_score"] == 200 and scores["code_reasoning_score"] == 125
    assert scores["perception"] == 325 and scores["cognition"] == 125 and scores["total"] == 450
    with pytest.raises(ValueError, match="neither perception"):
        mme_scores([{"category": "vibes", "image": "a", "correct": True}])


@pytest.fixture
def mme_parquet(tmp_path):
    ds = datasets.Dataset.from_dict({
        "question_id": [i for _, i, _, _ in ROWS],
        "image": [_png("red" if n % 2 else "blue") for n in range(len(ROWS))],
        "question": [f"Is there a thing {n}? Please answer yes or no." for n in range(len(ROWS))],
        "answer": [g for _, _, g, _ in ROWS], "category": [c for c, _, _, _ in ROWS],
    }).cast_column("image", datasets.Image())
    path = tmp_path / "mme.parquet"
    ds.to_parquet(str(path))
    return path


def test_lmms_lab_layout_scored_from_predictions(tmp_path, mme_parquet):
    preds = tmp_path / "preds.jsonl"  # rows share question_id per image: the row position is the id
    preds.write_text("".join(json.dumps({"id": n, "prediction": p}) + "\n" for n, (_, _, _, p) in enumerate(ROWS)))
    main(["eval", "--tasks", "mme", "--predictions", str(preds), "--data", str(mme_parquet),
          "--out", str(tmp_path / "o")])
    results = json.loads((tmp_path / "o" / "results.json").read_text())["mme"]
    assert results["perception"] == 325 and results["cognition"] == 125 and results["total"] == 450
    assert results["accuracy"] == pytest.approx(8 / 10) and results["n"] == 10
    rows = [json.loads(line) for line in open(tmp_path / "o" / "mme.jsonl")]
    assert rows[0]["prompt"] == "Is there a thing 0?\nAnswer the question using a single word or phrase."
    assert rows[0]["pair"] == "existence/1.png" and rows[7]["score"] == 0


def test_model_run_generate_and_loglik(tmp_path, mme_parquet):
    world = tiny_world(tmp_path)
    torch.manual_seed(0)
    module = build_module(module_config(world)).eval()
    for mode in ("generate", "loglik"):
        results, rows = evaluate_model(module, {"mme": mme_parquet}, tmp_path / mode,
                                       Decoding(batch_size=4, max_new_tokens=2, mc_mode=mode))
        rows = rows["mme"]
        assert len(rows) == 10 and all(r["prediction"] is not None for r in rows)
        assert rows[3]["prompt"] == "Is there a thing 3?\nAnswer the question using a single word or phrase."
        if mode == "loglik":  # the label of the likelier continuation, "Yes" or "No"
            assert all(r["prediction"] == ("Yes" if r["resps"][0][0][0] >= r["resps"][0][0][1] else "No") for r in rows)
        expected = mme_scores({"category": r["category"], "image": r["pair"], "correct": r["score"]} for r in rows)
        assert results["mme"]["total"] == pytest.approx(expected["total"])


def test_cli_mc_mode_and_its_errors(tmp_path, mme_parquet):
    import yaml

    from tests.tiny import experiment_config

    world = tiny_world(tmp_path)
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(experiment_config(world, tmp_path)))
    main(["eval", "--config", str(config), "--tasks", "mme", "--data", str(mme_parquet), "--mc-mode", "loglik",
          "--out", str(tmp_path / "o"), "--limit", "4"])
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["meta"]["decoding"]["mc_mode"] == "loglik" and results["mme"]["n"] == 4
    rows = [json.loads(line) for line in open(tmp_path / "o" / "mme.jsonl")]
    assert all(r["prediction"] in ("Yes", "No") and len(r["resps"][0][0]) == 2 for r in rows)
    with pytest.raises(SystemExit):
        main(["eval", "--config", str(config), "--tasks", "mme", "--data", str(mme_parquet), "--mc-mode", "ppl",
              "--out", str(tmp_path / "o2")])
    module = build_module(module_config(world))
    with pytest.raises(ValueError, match="mc_mode 'ppl': choose from"):
        evaluate_model(module, {"mme": mme_parquet}, tmp_path / "o3", Decoding(mc_mode="ppl"))
