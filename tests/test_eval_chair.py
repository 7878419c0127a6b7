"""CHAIR (Rohrbach et al. 2018): object mentions through a synonym table (phrases, plurals), CHAIR-i /
CHAIR-s / recall on hand-made captions with known hallucinations, on the Shapes world's table and a
user-given COCO-style table, in prediction mode and with a model."""

import io
import json

import datasets
import pytest
from PIL import Image

from data.shapes import DEFAULT_COLORS, SHAPE_NAMES, write_shapes
from tests.tiny import module_config
from train.checkpoint import build_module
from train.cli import main
from train.evaluation.chair_metric import SynonymTable, chair_scores, load_synonyms, singular
from train.evaluation.decoding import Decoding
from train.evaluation.runner import evaluate_model, make_task
from train.evaluation.tasks_chair import shapes_synonyms

COCO_TABLE = {"person": ["man", "men", "people", "woman"], "dog": ["puppy"], "hot dog": ["hotdog"],
              "bus": [], "motorcycle": ["motor bike", "scooter"]}


def test_singular_forms():
    assert [singular(w) for w in ("circles", "boxes", "buses", "berries", "dogs", "glass", "bus")] == [
        "circle", "box", "bus", "berry", "dog", "glass", "bus"]


def test_mentions_phrases_plurals_and_synonyms():
    table = SynonymTable(COCO_TABLE)
    # "hot dog" (longest phrase first) is not a dog; plural "puppies", "buses", "motor bikes"; irregular "men" listed
    assert table.mentions("Two men eat a hot dog near puppies, buses and motor bikes.") == [
        "person", "hot dog", "dog", "bus", "motorcycle"]
    assert table.mentions("A DOG. A dog!") == ["dog", "dog"]  # every mention counts
    assert table.mentions("a cat on a sofa") == []
    shapes = SynonymTable(shapes_synonyms())
    assert len(shapes.classes) == len(DEFAULT_COLORS) * len(SHAPE_NAMES)
    assert shapes.mentions("A small red circle at the top left, two blue squares and a red disc.") == [
        "red circle", "blue square", "red circle"]
    assert shapes.mentions("a circle and a red and blue square") == ["blue square"]  # a shape needs its colour


def test_chair_scores_by_hand():
    shapes = SynonymTable(shapes_synonyms())
    captions = ["A small red circle at the top left and two blue squares.",   # both there
                "A red circle, a green triangle and a red disc.",             # green triangle hallucinated
                "Some shapes."]                                               # mentions nothing
    truth = [{"red circle", "blue square"}, {"red circle"}, {"yellow triangle"}]
    scores = chair_scores([shapes.mentions(c) for c in captions], truth)
    # mentions 2 + 3 + 0, one hallucinated; one caption of three; ground truth found 2 + 1 + 0 of 4
    assert scores == {"chair_s": pytest.approx(1 / 3), "chair_i": pytest.approx(1 / 5), "recall": pytest.approx(3 / 4),
                      "mentions": 5.0, "hallucinated": 1.0}


def test_synonym_table_errors(tmp_path):
    with pytest.raises(ValueError, match="'man' is a synonym of both 'person' and 'male'"):
        SynonymTable({"person": ["man"], "male": ["man"]})
    with pytest.raises(ValueError, match="class 'dog' must map to a list of synonyms"):
        SynonymTable({"dog": "puppy"})
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"bad.json: expected a JSON object \{class: \[synonym, ...\]\}, got list"):
        load_synonyms(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json: not JSON"):
        load_synonyms(tmp_path / "broken.json")
    with pytest.raises(FileNotFoundError, match="CHAIR synonym file not found"):
        make_task("chair", options={"synonyms_file": str(tmp_path / "none.json")})


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def test_coco_style_set_with_a_user_table(tmp_path):
    """tsunghanwu/mscoco_chair's columns (lmms-eval's coco_cap_chair): question_id, image, gt_object."""
    (tmp_path / "syn.json").write_text(json.dumps(COCO_TABLE))
    datasets.Dataset.from_dict({
        "question_id": ["139", "285"], "gt_object": [["person", "dog"], ["bus"]],
        "image": [{"bytes": _png("red"), "path": None}, {"bytes": _png("blue"), "path": None}],
    }).cast_column("image", datasets.Image()).to_parquet(str(tmp_path / "chair.parquet"))
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"question_id": "139", "text": "A man eats a hot dog next to two puppies."}) + "\n"
                     + json.dumps({"question_id": "285", "text": "A red bus and a scooter."}) + "\n")
    main(["eval", "--tasks", "chair", "--data", str(tmp_path / "chair.parquet"), "--predictions", str(preds),
          "--chair-synonyms", str(tmp_path / "syn.json"), "--out", str(tmp_path / "o")])
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    rows = [json.loads(x) for x in open(tmp_path / "o" / "chair.jsonl")]
    # image 1: person, hot dog (hallucinated), dog; image 2: bus, motorcycle (hallucinated)
    assert results["chair"]["chair_i"] == pytest.approx(2 / 5) and results["chair"]["chair_s"] == 1.0
    assert results["chair"]["recall"] == 1.0
    assert [r["hallucinated"] for r in rows] == [["hot dog"], ["motorcycle"]] and [r["score"] for r in rows] == [1, 1]
    assert [r["target"] for r in rows] == [["dog", "person"], "bus"]
    assert rows[0]["prompt"] == "Please describe this image in detail."
    assert results["meta"]["task_options"] == {"chair": {"synonyms_file": str(tmp_path / "syn.json")}}
    # gt_object classes the default (Shapes) table lacks: one line naming the fix
    with pytest.raises(ValueError, match=r"record '139' lists objects \['person', 'dog'\] that are not in the synonym "
                                         r"table \(pass --chair-synonyms FILE\)"):
        main(["eval", "--tasks", "chair", "--data", str(tmp_path / "chair.parquet"), "--predictions", str(preds),
              "--out", str(tmp_path / "o2")])
    with pytest.raises(ValueError, match="--chair-synonyms is for the chair task, which is not in --tasks"):
        main(["eval", "--tasks", "pope", "--data", str(tmp_path / "chair.parquet"), "--predictions", str(preds),
              "--chair-synonyms", str(tmp_path / "syn.json"), "--out", str(tmp_path / "o3")])


def test_shapes_world_captions_give_the_ground_truth(tmp_path):
    """On the Shapes world the reference caption names every object, so the task needs no object list;
    a model run shows the prompt reaching the model and the metrics computed from what it wrote."""
    write_shapes(tmp_path / "w", train_images=4, val_images=3, seed=0)
    world = tmp_path / "w"
    recs = [json.loads(x) for x in open(world / "val_captions.jsonl")]
    task = make_task("chair")
    for rec in recs:
        assert task.references(rec) == sorted(set(SynonymTable(shapes_synonyms()).mentions(rec["caption"]))) != []
        assert task.score_sample(rec["caption"], rec) == 0.0  # the reference itself hallucinates nothing
    preds = tmp_path / "p.jsonl"
    wrong = [c for c in shapes_synonyms() if c not in task.references(recs[0])][0]
    preds.write_text("".join(json.dumps({"id": r["id"], "prediction": r["caption"] + (f" And a {wrong}." if i == 0
                                                                                    else "")}) + "\n"
                             for i, r in enumerate(recs)))
    main(["eval", "--tasks", "chair", "--data", str(world / "val_captions.jsonl"), "--predictions", str(preds),
          "--out", str(tmp_path / "o")])
    res = json.loads((tmp_path / "o" / "results.json").read_text())["chair"]
    n_mentions = sum(len(task.table.mentions(r["caption"])) for r in recs) + 1
    assert res["chair_s"] == pytest.approx(1 / 3) and res["chair_i"] == pytest.approx(1 / n_mentions)
    assert res["recall"] == 1.0 and res["mentions"] == n_mentions
    cfg = module_config(world)
    module = build_module(cfg).eval()
    results, rows = evaluate_model(module, {"chair": world / "val_captions.jsonl"}, tmp_path / "m",
                                   Decoding(max_new_tokens=4, stop=[], prompt_suffix={"chair": " Be brief."}))
    assert [r["prompt"] for r in rows["chair"]] == ["Please describe this image in detail. Be brief."] * 3
    mentioned = [task.table.mentions(r["prediction"]) for r in rows["chair"]]
    assert results["chair"] == {**chair_scores(mentioned, [set(task.references(r)) for r in recs]), "n": 3.0,
                                "skipped": 0.0}
