"""COCO Caption, NoCaps and Flickr30k: ROUGE-L as pycocoevalcap computes it (hand-computed, several
references), and each set in its lmms-lab column layout scored from a prediction file."""

import io
import json

import datasets
import pytest
from PIL import Image

from tests.tiny import module_config, tiny_world
from train.checkpoint import build_module
from train.cli import main
from train.evaluation.caption_metrics import bleu, cider_d
from train.evaluation.decoding import Decoding
from train.evaluation.rouge_metric import lcs_length, rouge_l, rouge_l_sample
from train.evaluation.runner import evaluate_model, make_task

PROMPT = "Provide a one-sentence caption for the provided image."


def _f(p, r, beta=1.2):
    return (1 + beta**2) * p * r / (r + beta**2 * p)


def test_lcs():
    assert lcs_length("a cat sits on the mat".split(), "the cat is on the mat".split()) == 4  # cat on the mat
    assert lcs_length("a b".split(), "c d".split()) == 0 and lcs_length([], ["a"]) == 0


def test_rouge_l_several_references_takes_max_precision_and_max_recall_separately():
    # vs "the cat is on the mat": LCS 4, P 4/6, R 4/6; vs "a cat on a mat": LCS 4 (a cat on mat), P 4/6, R 4/5
    score = rouge_l_sample("A cat sits on the mat.", ["the cat is on the mat", "a cat on a mat"])
    assert score == pytest.approx(_f(4 / 6, 4 / 5)) and score == pytest.approx(0.7393939, abs=1e-6)
    # "a b" gives P 1/2, R 1; the long reference P 1, R 1/2: pycocoevalcap combines max P 1 and max R 1 -> 1,
    # where the best single reference would give only max(F(.5, 1), F(1, .5)) = 0.709
    assert rouge_l_sample("a b c d", ["a b", "a b c d e f g h"]) == pytest.approx(1.0)
    assert max(_f(0.5, 1), _f(1, 0.5)) == pytest.approx(0.7093023, abs=1e-6)
    assert rouge_l_sample("a dog", ["the cat"]) == 0.0 and rouge_l_sample("", ["the cat"]) == 0.0
    corpus, per_image = rouge_l(["a cat sits on the mat", "two dogs"], [["the cat is on the mat", "a cat on a mat"],
                                                                      ["two dogs"]])
    assert per_image == pytest.approx([0.7393939, 1.0], abs=1e-6) and corpus == pytest.approx(0.8696970, abs=1e-6)


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def _parquet(path, rows):
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    cols["image"] = [{"bytes": _png(c), "path": None} for c in cols["image"]]
    datasets.Dataset.from_dict(cols).cast_column("image", datasets.Image()).to_parquet(str(path))
    return path


REFS = [["the cat is on the mat", "a cat on a mat"], ["two dogs run on the grass", "dogs running in a field"]]
PREDS = ["A cat sits on the mat.", "two dogs run on the grass"]


def _coco(refs):
    return [{"question_id": f"00000000{i}.jpg", "image": c, "question": PROMPT, "answer": r, "id": i,
             "license": 1, "file_name": f"00000000{i}.jpg", "coco_url": "", "height": 8, "width": 8,
             "date_captured": "2013"} for i, (r, c) in enumerate(zip(refs, ["red", "blue"]))]


def _nocaps(refs):
    return [{"image": c, "image_coco_url": "", "image_date_captured": "", "image_file_name": f"{i}.jpg",
             "image_height": 8, "image_width": 8, "image_id": i, "image_license": 0, "image_open_images_id": f"o{i}",
             "annotations_ids": [10 * i, 10 * i + 1], "annotations_captions": r}
            for i, (r, c) in enumerate(zip(refs, ["red", "blue"]))]


def _flickr(refs):
    return [{"image": c, "caption": r, "sentids": [str(10 * i), str(10 * i + 1)], "img_id": str(i),
             "filename": f"{1000 + i}.jpg"} for i, (r, c) in enumerate(zip(refs, ["red", "blue"]))]


@pytest.mark.parametrize("task, layout, id_field", [("coco_caption", _coco, "id"), ("nocaps", _nocaps, "image_id"),
                                                    ("flickr30k", _flickr, "img_id")])
def test_caption_sets_in_lmms_lab_layout(tmp_path, task, layout, id_field):
    rows = layout(REFS)
    data = _parquet(tmp_path / f"{task}.parquet", rows)
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"id": r[id_field], "prediction": p}) + "\n" for r, p in zip(rows, PREDS)))
    main(["eval", "--tasks", task, "--data", str(data), "--predictions", str(preds), "--out", str(tmp_path / "o")])
    res = json.loads((tmp_path / "o" / "results.json").read_text())[task]
    out = [json.loads(x) for x in open(tmp_path / "o" / f"{task}.jsonl")]
    assert [r["target"] for r in out] == REFS and [r["prompt"] for r in out] == [PROMPT] * 2
    assert res["rouge_l"] == pytest.approx((0.7393939 + 1.0) / 2, abs=1e-6)
    assert [r["rouge_l"] for r in out] == pytest.approx([0.7393939, 1.0], abs=1e-6)
    cider, per_image = cider_d(PREDS, REFS)
    assert res["cider_d"] == pytest.approx(cider) and [r["score"] for r in out] == pytest.approx(per_image)
    assert res["bleu_4"] == pytest.approx(bleu(PREDS, REFS, 4)) and res["bleu_4"] > 0.5
    assert res["n"] == 2 and res["skipped"] == 0


def test_bleu_4_by_hand_on_the_two_images():
    """Clipped n-gram matches summed over the corpus. Image 1 ("a cat sits on the mat", 6 words) against
    either reference: 1-grams 5/6 (not "sits"), 2-grams 3/5 (a cat, on the, the mat), 3-grams 1/4
    (on the mat), 4-grams 0/3. Image 2 equals a reference (6 words): 6/6, 5/5, 4/4, 3/3. Lengths 12 vs
    closest references 6 + 6: no brevity penalty."""
    p = [(5 + 6) / 12, (3 + 5) / 10, (1 + 4) / 8, (0 + 3) / 6]
    assert bleu(PREDS, REFS, 4) == pytest.approx((p[0] * p[1] * p[2] * p[3]) ** 0.25)
    assert bleu(PREDS, REFS, 4) == pytest.approx(0.6918913, abs=1e-6)


def test_single_reference_and_default_prompt():
    task = make_task("flickr30k")
    assert task.references({"caption": "one caption"}) == ["one caption"]
    assert task.references({"captions": ["a", "b"]}) == ["a", "b"] and task.max_new_tokens == 64
    assert task.prompt({}) == PROMPT
    rows = [{"prediction": "a cat", "reference": "a cat"}, {"prediction": "a dog", "reference": ["the cat", "a dog"]}]
    assert task.aggregate(rows)["rouge_l"] == pytest.approx(1.0)


def test_model_run_on_coco_layout(tmp_path):
    """A tiny LLaVA captions a COCO-Caption2017-layout set: the lmms-eval prompt is what it is given."""
    world = tiny_world(tmp_path)
    module = build_module(module_config(world)).eval()
    recs = [json.loads(x) for x in open(world / "val_qa.jsonl")][:2]  # two images of the tiny world
    cols = {"question_id": ["a.jpg", "b.jpg"], "id": [1, 2], "question": [PROMPT] * 2, "answer": REFS,
            "image": [{"bytes": (world / r["image"]).read_bytes(), "path": None} for r in recs]}
    datasets.Dataset.from_dict(cols).cast_column("image", datasets.Image()).to_parquet(str(tmp_path / "c.parquet"))
    results, rows = evaluate_model(module, {"coco_caption": tmp_path / "c.parquet"}, tmp_path / "o",
                                   Decoding(max_new_tokens=3, stop=[]))
    assert [r["prompt"] for r in rows["coco_caption"]] == [PROMPT] * 2
    assert results["meta"]["max_new_tokens"] == {"coco_caption": 3}
    assert {"cider_d", "bleu_4", "rouge_l"} <= results["coco_caption"].keys()
