"""VQAv2, GQA, TextVQA, VizWiz, OK-VQA and POPE's splits: the official scoring rules on tricky
hand-computed cases, LLaVA-1.5's prompts, and each set in its lmms-lab column layout scored
from a prediction file (no model), plus one model run that shows the prompts reach the model."""

import io
import json

import datasets
import pytest
from PIL import Image

from tests.tiny import module_config, tiny_world
from train.checkpoint import build_module
from train.cli import main
from train.evaluation.decoding import Decoding
from train.evaluation.gqa_metric import gqa_match, normalize_gqa_answer
from train.evaluation.runner import evaluate_model, make_task
from train.evaluation.vqa_metric import vqa_accuracy
from train.evaluation.vqav2_submission import evalai_answer

SHORT = "\nAnswer the question using a single word or phrase."


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def _parquet(path, rows: list[dict]):
    """rows as an lmms-lab parquet split: `image` an `Image` feature holding PNG bytes."""
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    cols["image"] = [{"bytes": _png(c), "path": None} for c in cols["image"]]
    datasets.Dataset.from_dict(cols).cast_column("image", datasets.Image()).to_parquet(str(path))
    return path


def _score(tmp_path, task, data, preds: list[dict], *extra):
    pf = tmp_path / f"{task}_preds.jsonl"
    pf.write_text("".join(json.dumps(p) + "\n" for p in preds))
    out = tmp_path / f"out_{task}"
    main(["eval", "--tasks", task, "--data", str(data), "--predictions", str(pf), "--out", str(out), *extra])
    results = json.loads((out / "results.json").read_text())
    return results, [json.loads(x) for x in open(out / f"{task}.jsonl")]


# ------------------------------------------------------------------ scoring rules


@pytest.mark.parametrize("pred, gold, score", [
    ("Yes.", "yes", 1.0),           # case and a final period (LLaVA's rstrip('.').lower())
    (" left, ", "left", 1.0),       # whitespace and any string.punctuation (lmms-eval's ignore_punctuation)
    ("T-shirt", "t-shirt", 1.0),
    ("man's", "mans", 1.0),         # the apostrophe is punctuation too
    ("The man", "man", 0.0),        # no official GQA scorer drops articles
    ("two", "2", 0.0),              # nor maps number words
    ("no", "yes", 0.0),
])
def test_gqa_exact_match_after_lmms_eval_normalisation(pred, gold, score):
    assert gqa_match(pred, gold) == score
    assert normalize_gqa_answer("  Red, White & Blue!! ") == "red white  blue"


def test_textvqa_uses_evalai_answer_processing():
    """m4c_evaluator's processor splits "'s" and deletes every comma before the VQA rules: "joe 's"
    and "hello,world" match where the plain VQA normalisation says they differ."""
    assert evalai_answer("Joe's") == evalai_answer("joe 's") == "joe 's"
    assert evalai_answer("hello,world") == "helloworld" and evalai_answer("Coca-Cola.") == "coca cola"
    task = make_task("textvqa")
    refs = ["joe's"] * 10
    assert task.score_sample("joe 's", {"answers": refs}) == 1.0 and vqa_accuracy("joe 's", refs) == 0.0
    refs = ["coca cola"] * 4 + ["Coca-Cola"] * 3 + ["coke"] * 3
    assert task.score_sample("Coca Cola.", {"answers": refs}) == 1.0  # 7 agree
    # coke: three agree; leaving one of them out leaves 2 (2/3), leaving another out leaves 3 (1)
    assert task.score_sample("coke", {"answers": refs}) == pytest.approx((3 * 2 / 3 + 7) / 10)
    refs = ["two"] * 2 + ["3"] * 8
    assert task.score_sample("2", {"answers": refs}) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)


def test_textvqa_prompt_carries_the_ocr_tokens_as_llava_15():
    task = make_task("textvqa")
    rec = {"question": "what is the brand of this camera?", "ocr_tokens": ["dakota", "digital", "camera"]}
    assert task.prompt(rec) == ("what is the brand of this camera?\nReference OCR token: dakota, digital, camera"
                                + SHORT)
    assert task.prompt({**rec, "ocr_tokens": []}) == "what is the brand of this camera?" + SHORT  # no empty line
    assert make_task("textvqa", options={"ocr_in_prompt": False}).prompt(rec) == rec["question"] + SHORT


def test_vizwiz_unanswerable_is_an_answer_like_any_other():
    task = make_task("vizwiz")
    assert task.prompt({"question": "What is this?"}) == (
        "What is this?\nWhen the provided information is insufficient, respond with 'Unanswerable'." + SHORT)
    refs = ["unanswerable"] * 8 + ["blue"] * 2
    assert task.score_sample("Unanswerable.", {"answers": refs}) == 1.0
    assert task.score_sample("blue", {"answers": refs}) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    assert task.score_sample("I cannot tell", {"answers": refs}) == 0.0


def test_default_prompts_and_lengths():
    for name in ("vqav2", "gqa", "okvqa"):
        assert make_task(name).prompt({"question": "Q?"}) == "Q?" + SHORT
    assert {n: make_task(n).max_new_tokens for n in ("vqav2", "gqa", "textvqa", "vizwiz", "okvqa")} == dict.fromkeys(
        ("vqav2", "gqa", "textvqa", "vizwiz", "okvqa"), 16)


# ------------------------------------------------------------------ lmms-lab layouts, prediction mode


def _answers(*texts):
    return [{"answer": t, "answer_confidence": "yes", "answer_id": i + 1} for i, t in enumerate(texts)]


def test_vqav2_val_and_testdev_in_lmms_lab_layout(tmp_path):
    rows = [{"question_id": 1, "question": "How many?", "answers": _answers(*["two"] * 10), "answer_type": "number",
             "multiple_choice_answer": "2", "image_id": 7, "question_type": "how many", "image": "red"},
            {"question_id": 2, "question": "Color?", "answers": _answers(*(["red"] * 2 + ["blue"] * 8)),
             "answer_type": "other", "multiple_choice_answer": "blue", "image_id": 7, "question_type": "what",
             "image": "red"}]
    res, out = _score(tmp_path, "vqav2", _parquet(tmp_path / "val.parquet", rows),
                      [{"question_id": 1, "text": "2"}, {"question_id": 2, "text": "Red"}])
    assert [r["score"] for r in out] == pytest.approx([1.0, 0.6])
    assert res["vqav2"]["accuracy"] == pytest.approx(0.8) and res["vqav2"]["accuracy_number"] == 1.0
    assert res["meta"]["prompts"]["vqav2"]["suffix"] == SHORT
    # test-dev: answers null, predicted not scored; the per-sample file becomes EvalAI's answers
    test = [{**r, "answers": None, "multiple_choice_answer": None, "answer_type": None} for r in rows]
    ds = datasets.Dataset.from_dict({k: [r[k] for r in test] for k in test[0]}, features=datasets.Features({
        "question_id": datasets.Value("int64"), "question": datasets.Value("string"),
        "answers": [{"answer": datasets.Value("string"), "answer_confidence": datasets.Value("string"),
                     "answer_id": datasets.Value("int64")}], "answer_type": datasets.Value("string"),
        "multiple_choice_answer": datasets.Value("string"), "image_id": datasets.Value("int64"),
        "question_type": datasets.Value("string"), "image": datasets.Value("string")}))
    ds.to_parquet(str(tmp_path / "testdev.parquet"))
    res, out = _score(tmp_path, "vqav2", tmp_path / "testdev.parquet",
                      [{"question_id": 1, "text": "Two"}, {"question_id": 2, "text": "Blue."}])
    assert res["vqav2"] == {"n": 2.0, "skipped": 0.0} and [r["score"] for r in out] == [None, None]
    main(["data", "vqav2-submission", "--predictions", str(tmp_path / "out_vqav2" / "vqav2.jsonl"),
          "--out", str(tmp_path / "evalai.json")])
    assert json.loads((tmp_path / "evalai.json").read_text()) == [{"question_id": 1, "answer": "2"},
                                                                   {"question_id": 2, "answer": "blue"}]


def test_gqa_in_lmms_lab_layout(tmp_path):
    """testdev_balanced_instructions columns, with the `image` lmms-eval joins in by `imageId`."""
    rows = [{"id": "201307251", "imageId": "n435808", "question": "Is it a man?", "answer": "yes",
             "fullAnswer": "Yes, it is a man.", "isBalanced": True, "image": "red"},
            {"id": "201640614", "imageId": "n435808", "question": "Who wears the shirt?", "answer": "man",
             "fullAnswer": "The man wears a shirt.", "isBalanced": True, "image": "red"},
            {"id": "20968379", "imageId": "n2313", "question": "Which side?", "answer": "left",
             "fullAnswer": "The cup is on the left.", "isBalanced": True, "image": "blue"}]
    res, out = _score(tmp_path, "gqa", _parquet(tmp_path / "gqa.parquet", rows),
                      [{"question_id": "201307251", "text": "Yes."}, {"question_id": "201640614", "text": "The man"},
                       {"question_id": "20968379", "text": "left"}])
    assert [r["score"] for r in out] == [1.0, 0.0, 1.0] and res["gqa"]["accuracy"] == pytest.approx(2 / 3)
    assert out[0]["prompt"] == "Is it a man?" + SHORT and out[0]["target"] == "yes"


def test_textvqa_in_lmms_lab_layout(tmp_path):
    rows = [{"image_id": "0054c91397f2fe05", "question_id": 0, "question": "what brand is this?",
             "question_tokens": ["what", "brand", "is", "this"], "image_width": 8, "image_height": 8,
             "flickr_original_url": "", "flickr_300k_url": "", "answers": ["Coca-Cola"] * 6 + ["coke"] * 4,
             "image_classes": ["Bottle"], "set_name": "val", "ocr_tokens": ["coca", "cola"], "image": "red"},
            {"image_id": "005635e119b9f32f", "question_id": 1, "question": "what number is it?",
             "question_tokens": ["what", "number", "is", "it"], "image_width": 8, "image_height": 8,
             "flickr_original_url": "", "flickr_300k_url": "", "answers": ["1,000"] * 2 + ["100"] * 8,
             "image_classes": ["Sign"], "set_name": "val", "ocr_tokens": [], "image": "blue"}]
    res, out = _score(tmp_path, "textvqa", _parquet(tmp_path / "tv.parquet", rows),
                      [{"question_id": 0, "text": "coca cola"}, {"question_id": 1, "text": "1000"}])
    assert [r["score"] for r in out] == pytest.approx([1.0, (2 * 1 / 3 + 8 * 2 / 3) / 10])
    assert res["textvqa"]["accuracy"] == pytest.approx((1 + 0.6) / 2)
    assert out[0]["prompt"] == "what brand is this?\nReference OCR token: coca, cola" + SHORT
    assert out[1]["prompt"] == "what number is it?" + SHORT


def test_vizwiz_in_lmms_lab_layout(tmp_path):
    rows = [{"question_id": "VizWiz_val_00000000.jpg", "question": "What is this?",
             "answers": ["unanswerable"] * 8 + ["blue"] * 2, "category": "unanswerable", "image": "red"},
            {"question_id": "VizWiz_val_00000001.jpg", "question": "Is it on?", "answers": ["yes"] * 10,
             "category": "yes/no", "image": "blue"},
            {"question_id": "VizWiz_val_00000002.jpg", "question": "What colour?",
             "answers": ["blue"] * 3 + ["unanswerable"] * 7, "category": "other", "image": "blue"}]
    res, out = _score(tmp_path, "vizwiz", _parquet(tmp_path / "vw.parquet", rows),
                      [{"question_id": "VizWiz_val_00000000.jpg", "text": "Unanswerable"},
                       {"question_id": "VizWiz_val_00000001.jpg", "text": "no"},
                       {"question_id": "VizWiz_val_00000002.jpg", "text": "unanswerable"}])
    assert [r["score"] for r in out] == [1.0, 0.0, 1.0]
    assert res["vizwiz"]["accuracy"] == pytest.approx(2 / 3)
    assert res["vizwiz"]["accuracy_unanswerable"] == 1.0 and res["vizwiz"]["accuracy_yes/no"] == 0.0
    assert out[0]["type"] == "unanswerable"


def test_okvqa_in_lmms_lab_layout(tmp_path):
    rows = [{"question_id": "2971475", "question": "What sport can you use this for?",
             "answers": ["race"] * 2 + ["racing"] * 4 + ["motocross"] * 4, "question_type": "eight",
             "answer_type": "other", "image": "red"},
            {"question_id": "1429085", "question": "What is the boy holding?", "answers": ["kite"] * 10,
             "question_type": "one", "answer_type": "other", "image": "blue"}]
    res, out = _score(tmp_path, "okvqa", _parquet(tmp_path / "ok.parquet", rows),
                      [{"question_id": "2971475", "text": "race"}, {"question_id": "1429085", "text": "A kite."}])
    assert [r["score"] for r in out] == pytest.approx([0.6, 1.0]) and res["okvqa"]["accuracy"] == pytest.approx(0.8)


def test_pope_reports_its_three_splits_from_category(tmp_path):
    """lmms-lab/POPE: `category` random / popular / adversarial; per split and overall."""
    probes = [("random", "dog", "yes", "Yes"), ("random", "cat", "no", "No"),
              ("popular", "car", "yes", "Yes"), ("popular", "bus", "no", "Yes"),
              ("adversarial", "cup", "yes", "No"), ("adversarial", "fork", "no", "Yes, there is a fork.")]
    rows = [{"id": str(i), "question_id": str(i + 1), "question": f"Is there a {o} in the image?", "answer": a,
             "image_source": "COCO_val2014_000000310196", "category": c, "image": "red"}
            for i, (c, o, a, _) in enumerate(probes)]
    res, out = _score(tmp_path, "pope", _parquet(tmp_path / "pope.parquet", rows),
                      [{"id": str(i), "prediction": p} for i, (*_, p) in enumerate(probes)])
    pope = res["pope"]
    assert pope["accuracy_random"] == 1.0 and pope["f1_random"] == 1.0
    # popular: tp 1, fp 1 -> precision 1/2, recall 1, F1 2/3, yes-ratio 1
    assert pope["accuracy_popular"] == 0.5 and pope["precision_popular"] == 0.5 and pope["recall_popular"] == 1.0
    assert pope["f1_popular"] == pytest.approx(2 / 3) and pope["yes_ratio_popular"] == 1.0
    assert pope["accuracy_adversarial"] == 0.0 and pope["f1_adversarial"] == 0.0
    # all six: tp 2, fp 2, tn 1, fn 1
    assert pope["accuracy"] == 0.5 and pope["precision"] == 0.5 and pope["recall"] == pytest.approx(2 / 3)
    assert [r["split"] for r in out] == [c for c, *_ in probes]


# ------------------------------------------------------------------ model mode


def test_model_run_sends_each_task_its_prompt(tmp_path):
    """A tiny untrained LLaVA answers GQA, TextVQA and VizWiz sets in lmms-lab layout; each task's
    default prompt is what is recorded per sample, and a different suffix changes what the model says."""
    world = tiny_world(tmp_path)
    cfg = module_config(world)
    cfg["init_args"]["model"]["init_args"]["language"]["init_args"]["config"]["initializer_range"] = 0.4
    module = build_module(cfg).eval()
    recs = [json.loads(x) for x in open(world / "val_qa.jsonl")][:3]
    images = [{"bytes": (world / r["image"]).read_bytes(), "path": None} for r in recs]
    common = {"question": [r["question"] for r in recs], "image": images}
    files = {}
    for task, extra in {"gqa": {"id": [str(r["id"]) for r in recs], "answer": [r["answer"] for r in recs]},
                        "textvqa": {"question_id": list(range(3)), "answers": [[r["answer"]] * 10 for r in recs],
                                    "ocr_tokens": [["red", "blue"], [], ["circle"]]},
                        "vizwiz": {"question_id": [f"v{i}" for i in range(3)],
                                   "answers": [[r["answer"]] * 10 for r in recs], "category": ["other"] * 3}}.items():
        datasets.Dataset.from_dict({**extra, **common}).cast_column("image", datasets.Image()).to_parquet(
            str(tmp_path / f"{task}.parquet"))
        files[task] = tmp_path / f"{task}.parquet"
    decoding = Decoding(batch_size=3, stop=[], max_new_tokens=4)
    results, rows = evaluate_model(module, files, tmp_path / "a", decoding)
    for task in files:
        assert [r["prompt"] for r in rows[task]] == [make_task(task).prompt(r) for r in
                                                     [{"question": q, "ocr_tokens": o} for q, o in zip(
                                                         common["question"], [["red", "blue"], [], ["circle"]])]]
        assert all(isinstance(r["prediction"], str) for r in rows[task]) and results[task]["n"] == 3
    assert rows["textvqa"][0]["prompt"].endswith("\nReference OCR token: red, blue" + SHORT)
    assert results["meta"]["prompts"]["vizwiz"]["suffix"] == make_task("vizwiz").prompt_suffix
    plain = evaluate_model(module, {"gqa": files["gqa"]}, tmp_path / "b",
                           Decoding(batch_size=3, stop=[], max_new_tokens=4, prompt_suffix={"gqa": ""}))[1]["gqa"]
    assert [r["prediction"] for r in plain] != [r["prediction"] for r in rows["gqa"]]
