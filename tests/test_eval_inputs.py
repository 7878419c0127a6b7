"""`chimera eval` on lmms-lab-style `datasets` (parquet, save_to_disk, a loading script's cache) with
an `Image` column: the same scores as on the equivalent JSONL, and hand-computed values."""

import io
import json
from pathlib import Path

import datasets
import pytest
from PIL import Image

from tests.tiny import module_config, tiny_world
from train.checkpoint import build_module
from train.cli import main
from train.evaluation.caption_metrics import cider_d
from train.evaluation.decoding import Decoding, cut_at_stop
from train.evaluation.inputs import read_task_data
from train.evaluation.runner import evaluate_model


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def _answers(*texts):
    return [{"answer": t, "answer_confidence": "yes", "answer_id": i + 1} for i, t in enumerate(texts)]


IMAGES = {"a.png": _png("red"), "b.png": _png("blue"), "c.png": _png("green")}

# lmms-lab/VQAv2 columns; the equivalent record in our JSONL follows each
VQAV2 = [
    {"question_id": 262148000, "question": "How many dogs?", "answers": _answers(*["two"] * 10),
     "answer_type": "number", "multiple_choice_answer": "2", "image_id": 262148, "image": "a.png"},
    {"question_id": 262148001, "question": "What color?", "answers": _answers(*(["red"] * 2 + ["blue"] * 8)),
     "answer_type": "other", "multiple_choice_answer": "blue", "image_id": 262148, "image": "a.png"},
    {"question_id": 262148002, "question": "What animal?", "answers": _answers(*["dog"] * 10),
     "answer_type": "other", "multiple_choice_answer": "dog", "image_id": 393225, "image": "b.png"},
]
VQAV2_OURS = [{"id": r["question_id"], "image": r["image"], "question": r["question"],
               "answers": [a["answer"] for a in r["answers"]], "type": r["answer_type"]} for r in VQAV2]
# LLaVA answer file; one id written as a string, as some tools do
VQAV2_PREDS = [{"question_id": 262148000, "prompt": "How many dogs?", "text": "Two.", "answer_id": "x", "model_id": "m"},
               {"question_id": "262148001", "prompt": "What color?", "text": "red", "answer_id": "y", "model_id": "m"},
               {"question_id": 262148002, "prompt": "What animal?", "text": "cat", "answer_id": "z", "model_id": "m"}]

# lmms-lab/POPE columns (`category` is the split)
POPE = [{"id": str(i), "question_id": q, "question": f"Is there a {o} in the image?", "answer": a, "category": c,
         "image_source": "COCO_val2014_000000310196", "image": img}
        for i, (q, o, a, c, img) in enumerate([(1, "dog", "yes", "random", "a.png"), (2, "cat", "no", "random", "a.png"),
                                                 (1, "car", "yes", "adversarial", "b.png"),
                                                 (2, "bus", "no", "adversarial", "c.png")])]
POPE_OURS = [{"id": r["id"], "image": r["image"], "question": r["question"], "answer": r["answer"],
              "split": r["category"]} for r in POPE]
POPE_PREDS = [{"id": "0", "prediction": "Yes"}, {"id": "1", "prediction": "No"}, {"id": "2", "prediction": "No"},
              {"id": "3", "prediction": "Yes."}]

# lmms-lab/COCO-Caption columns (`answer` holds the captions)
COCO = [{"question_id": "000000000139.jpg", "id": 139, "file_name": "000000000139.jpg", "image": "a.png",
         "question": "Provide a one-sentence caption for the provided image.",
         "answer": ["a red square on a white wall", "a red square hanging on the wall"]},
        {"question_id": "000000000285.jpg", "id": 285, "file_name": "000000000285.jpg", "image": "b.png",
         "question": "Provide a one-sentence caption for the provided image.",
         "answer": ["a big blue square in the middle", "blue paint covering a square"]}]
COCO_OURS = [{"id": r["id"], "image": r["image"], "captions": r["answer"]} for r in COCO]
COCO_PREDS = [{"id": 139, "prediction": "a red square hanging on the wall"},
              {"id": 285, "prediction": "a big blue square in the middle"}]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _dataset(rows: list[dict]) -> datasets.Dataset:
    """The rows as a `datasets.Dataset` whose `image` column is an `Image` feature holding the bytes."""
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    cols["image"] = [{"bytes": IMAGES[name], "path": name} for name in cols["image"]]
    ds = datasets.Dataset.from_dict(cols)
    return ds.cast_column("image", datasets.Image())


def _layouts(tmp_path, name: str, rows: list[dict]) -> dict[str, str]:
    """The same set as parquet, save_to_disk, and a `datasets` builder's cache (.arrow)."""
    ds = _dataset(rows)
    parquet = tmp_path / f"{name}-test.parquet"
    ds.to_parquet(str(parquet))
    ds.save_to_disk(str(tmp_path / f"{name}_disk"))
    cached = datasets.load_dataset("parquet", data_files={"test": str(parquet)}, cache_dir=str(tmp_path / "cache"),
                                   split="test")
    assert cached.cache_files and cached.cache_files[0]["filename"].endswith(".arrow")
    return {"parquet": str(parquet), "save_to_disk": str(tmp_path / f"{name}_disk"),
            "cache": cached.cache_files[0]["filename"]}


@pytest.fixture()
def image_folder(tmp_path):
    for name, data in IMAGES.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


def _score(tmp_path, task, data, preds_file, *extra):
    out = tmp_path / f"out_{task}_{Path(data).name}"
    main(["eval", "--tasks", task, "--data", str(data), "--predictions", str(preds_file), "--out", str(out), *extra])
    return json.loads((out / "results.json").read_text())[task], [json.loads(x) for x in open(out / f"{task}.jsonl")]


@pytest.mark.parametrize("task, rows, ours, preds", [
    ("vqa", VQAV2, VQAV2_OURS, VQAV2_PREDS), ("pope", POPE, POPE_OURS, POPE_PREDS),
    ("caption", COCO, COCO_OURS, COCO_PREDS)])
def test_same_scores_from_every_layout(image_folder, tmp_path, task, rows, ours, preds):
    preds_file = _jsonl(tmp_path / "preds.jsonl", preds)
    reference, ref_rows = _score(tmp_path, task, _jsonl(image_folder / "ours.jsonl", ours), preds_file)
    for layout, path in _layouts(tmp_path, task, rows).items():
        metrics, sample_rows = _score(tmp_path, task, path, preds_file)
        assert metrics == reference, layout
        assert [r["score"] for r in sample_rows] == [r["score"] for r in ref_rows], layout
        assert [r["target"] for r in sample_rows] == [r["target"] for r in ref_rows], layout
    if task == "vqa":  # 1; two of ten said red: (2 * 1/3 + 8 * 2/3) / 10 = 0.6; 0
        assert [r["score"] for r in ref_rows] == pytest.approx([1.0, 0.6, 0.0])
        assert reference["accuracy"] == pytest.approx(1.6 / 3)
        assert reference["accuracy_number"] == 1.0 and reference["accuracy_other"] == pytest.approx(0.3)
    elif task == "pope":  # random: both right; adversarial: a false no and a false yes
        assert reference["f1_random"] == 1.0 and reference["f1_adversarial"] == 0.0
        assert reference["accuracy"] == reference["precision"] == reference["recall"] == reference["yes_ratio"] == 0.5
    else:  # each caption equals one of its references
        assert reference["bleu_4"] == pytest.approx(1.0) and reference["bleu_1"] == pytest.approx(1.0)
        assert reference["cider_d"] == pytest.approx(cider_d([p["prediction"] for p in preds],
                                                             [r["captions"] for r in ours])[0])


def test_embedded_images_give_the_model_the_same_pixels(tmp_path):
    """A model run on parquet (image bytes, lmms-lab names) predicts exactly what it does on the
    JSONL with image paths; each distinct image is written once, by content."""
    world = tiny_world(tmp_path)
    cfg = module_config(world)
    cfg["init_args"]["model"]["init_args"]["language"]["init_args"]["config"]["initializer_range"] = 0.4
    module = build_module(cfg).eval()
    ours = [json.loads(x) for x in open(world / "val_qa.jsonl")][:8]
    ours_file = _jsonl(world / "val8.jsonl", ours)
    table = datasets.Dataset.from_dict({
        "question_id": [r["id"] for r in ours], "question": [r["question"] for r in ours],
        "multiple_choice_answer": [r["answer"] for r in ours], "answer_type": [r["type"] for r in ours],
        "image": [{"bytes": (world / r["image"]).read_bytes(), "path": None} for r in ours]},
    ).cast_column("image", datasets.Image())
    table.to_parquet(str(tmp_path / "val8.parquet"))
    decoding = Decoding(batch_size=4, stop=[], max_new_tokens=4, prompt_suffix={"vqa": ""})
    a, rows_a = evaluate_model(module, {"vqa": ours_file}, tmp_path / "a", decoding)
    b, rows_b = evaluate_model(module, {"vqa": tmp_path / "val8.parquet"}, tmp_path / "b", decoding)
    assert [r["prediction"] for r in rows_a["vqa"]] == [r["prediction"] for r in rows_b["vqa"]]
    assert len({r["prediction"] for r in rows_a["vqa"]}) >= 2  # answers differ: images and prompts matter
    assert a["vqa"] == b["vqa"]
    written = sorted((tmp_path / "b" / "images").iterdir())
    assert len(written) == len({r["image"] for r in ours}) and all(p.suffix == ".png" for p in written)
    assert [open(r["image"], "rb").read() for r in rows_b["vqa"]] == [(world / r["image"]).read_bytes() for r in ours]
    assert b["meta"]["data_sha256"]["vqa"] != a["meta"]["data_sha256"]["vqa"]
    assert b["meta"]["max_new_tokens"] == {"vqa": 4}


def test_raw_and_filtered_responses_are_both_logged(tmp_path):
    """`resps` holds what the model generated, `filtered_resps` the same cut at the stop string."""
    world = tiny_world(tmp_path)
    cfg = module_config(world)
    cfg["init_args"]["model"]["init_args"]["language"]["init_args"]["config"]["initializer_range"] = 0.4
    module = build_module(cfg).eval()
    files = {"vqa": _jsonl(world / "val4.jsonl", [json.loads(x) for x in open(world / "val_qa.jsonl")][:4])}
    plain = evaluate_model(module, files, tmp_path / "a", Decoding(stop=[], max_new_tokens=6,
                                                                    prompt_suffix={"vqa": ""}))[1]["vqa"]
    text = max((r["prediction"] for r in plain), key=len)
    stop = text[len(text) // 2:len(text) // 2 + 2]
    rows = evaluate_model(module, files, tmp_path / "b", Decoding(stop=[stop], max_new_tokens=6,
                                                                  prompt_suffix={"vqa": ""}))[1]["vqa"]
    assert all(r["filtered_resps"] == [r["prediction"]] == [cut_at_stop(r["resps"][0][0], [stop])] for r in rows)
    assert any(stop in r["resps"][0][0] and stop not in r["prediction"] for r in rows)


def test_a_wrong_layout_or_missing_column_is_one_line(image_folder, tmp_path):
    ds = _dataset(VQAV2).remove_columns(["question"])
    ds.to_parquet(str(tmp_path / "noq.parquet"))
    with pytest.raises(ValueError, match=r"noq.parquet: no 'question' column \(the 'vqa' task's 'question' field\)"):
        read_task_data(tmp_path / "noq.parquet", "vqa")
    (tmp_path / "data.bin").write_bytes((tmp_path / "noq.parquet").read_bytes())
    with pytest.raises(ValueError, match=r"data.bin: not UTF-8 text; eval data is .jsonl/.json, .parquet, .arrow"):
        read_task_data(tmp_path / "data.bin", "vqa")
    (tmp_path / "fake.parquet").write_text("{}")
    with pytest.raises(ValueError, match="fake.parquet: not a parquet file"):
        read_task_data(tmp_path / "fake.parquet", "vqa")
    datasets.DatasetDict({"validation": _dataset(VQAV2), "testdev": _dataset(VQAV2)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match=r"dd: a DatasetDict with splits \['validation', 'testdev'\]; give one split"):
        read_task_data(tmp_path / "dd", "vqa")
    assert len(read_task_data(tmp_path / "dd" / "testdev", "vqa").records) == 3
    with pytest.raises(FileNotFoundError, match=r"shard files missing beside it: \['v-00001-of-00002.parquet'\]"):
        (tmp_path / "v-00000-of-00002.parquet").write_bytes((tmp_path / "noq.parquet").read_bytes())
        read_task_data(tmp_path / "v-00000-of-00002.parquet", "vqa")


def test_shards_and_image_values(tmp_path):
    """Sibling shards are read together, in order; images as paths, raw bytes or `Image` structs."""
    ds = _dataset(VQAV2)
    ds.select([0, 1]).to_parquet(str(tmp_path / "t-00000-of-00002.parquet"))
    ds.select([2]).to_parquet(str(tmp_path / "t-00001-of-00002.parquet"))
    recs = read_task_data(tmp_path / "t-00001-of-00002.parquet", "vqa").records
    assert [r["id"] for r in recs] == [262148000, 262148001, 262148002]
    assert [r["image"] for r in recs] == ["a.png", "a.png", "b.png"]  # no image_dir: the stored names
    assert recs[0]["answers"] == ["two"] * 10 and recs[0]["type"] == "number" and "question_id" not in recs[0]
    raw = datasets.Dataset.from_dict({"question_id": [1, 2], "question": ["q", "q"], "answer": ["x", "y"],
                                      "image": [IMAGES["c.png"], IMAGES["a.png"]]})  # a binary column
    raw.to_parquet(str(tmp_path / "raw.parquet"))
    data = read_task_data(tmp_path / "raw.parquet", "vqa", image_dir=tmp_path / "imgs")
    assert [open(r["image"], "rb").read() for r in data.records] == [IMAGES["c.png"], IMAGES["a.png"]]
    assert [r["image"] for r in read_task_data(tmp_path / "raw.parquet", "vqa").records] == [None, None]  # no names
    assert data.root == tmp_path


def test_a_set_without_answers_is_predicted_not_scored(tmp_path):
    """VQAv2 test-dev as lmms-lab ships it (answers null): predictions written, metrics only n/skipped;
    few-shot demonstrations from it are refused (they would show no answer)."""
    world = tiny_world(tmp_path)
    module = build_module(module_config(world)).eval()
    rows = [json.loads(x) for x in open(world / "val_qa.jsonl")][:3]
    datasets.Dataset.from_dict({
        "question_id": [r["id"] for r in rows], "question": [r["question"] for r in rows],
        "answers": [None] * 3, "multiple_choice_answer": [None] * 3, "answer_type": [None] * 3,
        "image": [{"bytes": (world / r["image"]).read_bytes(), "path": None} for r in rows]},
        features=datasets.Features({"question_id": datasets.Value("string"), "question": datasets.Value("string"),
                                    "answers": [{"answer": datasets.Value("string")}],
                                    "multiple_choice_answer": datasets.Value("string"),
                                    "answer_type": datasets.Value("string"), "image": datasets.Image()}),
    ).save_to_disk(str(tmp_path / "testdev"))
    results, out = evaluate_model(module, {"vqa": tmp_path / "testdev"}, tmp_path / "o", Decoding(max_new_tokens=2))
    assert results["vqa"] == {"n": 3.0, "skipped": 0.0}
    assert [(r["id"], r["score"], r["target"]) for r in out["vqa"]] == [(r["id"], None, None) for r in rows]
    assert all(isinstance(r["prediction"], str) for r in out["vqa"])
    with pytest.raises(ValueError, match="few-shot demonstrations need answers, and the evaluated set has records"):
        evaluate_model(module, {"vqa": tmp_path / "testdev"}, tmp_path / "o2", Decoding(max_new_tokens=2, shots=1,
                                                                                      demos="random"))
