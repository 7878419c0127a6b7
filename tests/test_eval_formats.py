"""Converters from the official VQAv2 (test-dev too), COCO captions, LAVIS, Karpathy and POPE files
(small hand-written copies in their real layouts), and the EvalAI answer file."""

import json

import pytest

from data.eval_formats import convert_coco_captions, convert_karpathy, convert_lavis_captions, convert_pope
from train.cli import main
from train.evaluation.runner import load_task_records, make_task
from train.evaluation.vqav2_submission import evalai_answer


def _jsonl(path):
    return [json.loads(line) for line in open(path)]


def test_vqav2_questions_and_annotations(tmp_path):
    questions = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "val2014",
                 "questions": [{"image_id": 42, "question": "What color is the cat?", "question_id": 420},
                               {"image_id": 7, "question": "How many dogs?", "question_id": 70}]}
    answers = lambda *a: [{"answer": x, "answer_confidence": "yes", "answer_id": i + 1} for i, x in enumerate(a)]
    annotations = {"annotations": [
        {"question_id": 70, "image_id": 7, "question_type": "how many", "answer_type": "number",
         "multiple_choice_answer": "2", "answers": answers(*(["2"] * 9 + ["two"]))},
        {"question_id": 420, "image_id": 42, "question_type": "what color", "answer_type": "other",
         "multiple_choice_answer": "black", "answers": answers(*(["black"] * 6 + ["gray"] * 4))}]}
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    out = tmp_path / "eval" / "vqav2.jsonl"
    main(["data", "vqav2", "--questions", str(tmp_path / "q.json"), "--annotations", str(tmp_path / "a.json"),
          "--image-dir", str(tmp_path / "val2014"), "--out", str(out)])
    rows = _jsonl(out)
    assert rows[0] == {"id": 420, "image": "../val2014/COCO_val2014_000000000042.jpg",
                       "question": "What color is the cat?", "answers": ["black"] * 6 + ["gray"] * 4, "type": "other"}
    assert rows[1]["answers"][-1] == "two" and rows[1]["type"] == "number"
    task = make_task("vqa")
    assert task.score_sample("Black.", load_task_records(task, out)[0]) == 1.0
    assert task.score_sample("gray", rows[0]) == 1.0  # 4 humans said gray: min(1, 3/3 or 4/3) every subset


def test_coco_captions_grouped_per_image(tmp_path):
    coco = {"images": [{"id": 1, "file_name": "COCO_val2014_000000000001.jpg"},
                       {"id": 2, "file_name": "COCO_val2014_000000000002.jpg"},
                       {"id": 3, "file_name": "no_captions.jpg"}],
            "annotations": [{"image_id": 1, "id": 10, "caption": "A man riding a horse. "},
                            {"image_id": 2, "id": 11, "caption": "Two dogs."},
                            {"image_id": 1, "id": 12, "caption": "A person on a horse."}]}
    (tmp_path / "captions_val2014.json").write_text(json.dumps(coco))
    out = tmp_path / "caps.jsonl"
    n = convert_coco_captions(tmp_path / "captions_val2014.json", "", out)
    assert n == 2
    assert _jsonl(out) == [
        {"id": 1, "image": "COCO_val2014_000000000001.jpg", "captions": ["A man riding a horse.", "A person on a horse."]},
        {"id": 2, "image": "COCO_val2014_000000000002.jpg", "captions": ["Two dogs."]}]
    make_task("caption").check(_jsonl(out), str(out))


def test_pope_splits_merged(tmp_path):
    for split in ("random", "adversarial"):
        (tmp_path / f"coco_pope_{split}.json").write_text(
            json.dumps({"question_id": 1, "image": "COCO_val2014_000000310196.jpg",
                        "text": "Is there a snowboard in the image?", "label": "yes"}) + "\n"
            + json.dumps({"question_id": 2, "image": "COCO_val2014_000000310196.jpg",
                          "text": "Is there a dog in the image?", "label": "no"}) + "\n")
    out = tmp_path / "pope.jsonl"
    n = convert_pope({s: tmp_path / f"coco_pope_{s}.json" for s in ("random", "adversarial")}, "", out)
    rows = _jsonl(out)
    assert n == 4 and [r["id"] for r in rows] == ["random-1", "random-2", "adversarial-1", "adversarial-2"]
    assert rows[3] == {"id": "adversarial-2", "image": "COCO_val2014_000000310196.jpg",
                       "question": "Is there a dog in the image?", "answer": "no", "split": "adversarial"}


# ---------------------------------------------------------------- VQAv2 test-dev and EvalAI's answer file


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


TEST2015 = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {},
            "data_subtype": "test2015",
            "questions": [{"image_id": 262144, "question": "What is he on top of?", "question_id": 262144000},
                          {"image_id": 262144, "question": "How many people?", "question_id": 262144001},
                          {"image_id": 393225, "question": "Is this a dog?", "question_id": 393225000}]}
TESTDEV = {**TEST2015, "data_subtype": "test-dev2015", "questions": TEST2015["questions"][:2]}


def test_vqav2_testdev_questions_to_eval_jsonl_and_evalai_file(tmp_path):
    _write(tmp_path / "testdev.json", TESTDEV)
    out = tmp_path / "testdev.jsonl"
    main(["data", "vqav2", "--questions", str(tmp_path / "testdev.json"), "--image-dir", str(tmp_path / "test2015"),
          "--out", str(out)])
    assert _jsonl(out) == [  # test-dev images live in test2015, named so; no answers
        {"id": 262144000, "image": "test2015/COCO_test2015_000000262144.jpg", "question": "What is he on top of?"},
        {"id": 262144001, "image": "test2015/COCO_test2015_000000262144.jpg", "question": "How many people?"}]
    # a LLaVA answer file for it, scored (nothing to score against: n only) and turned into EvalAI's file
    answers = tmp_path / "llava-answers.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question_id": 262144000, "prompt": "x", "text": "A Skateboard.", "answer_id": "a", "model_id": "m"},
        {"question_id": 262144001, "prompt": "x", "text": "Two", "answer_id": "b", "model_id": "m"}]))
    main(["eval", "--tasks", "vqa", "--data", str(out), "--predictions", str(answers), "--out", str(tmp_path / "e")])
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    assert results["vqa"] == {"n": 2.0, "skipped": 0.0}
    assert [r["score"] for r in _jsonl(tmp_path / "e" / "vqa.jsonl")] == [None, None]
    _write(tmp_path / "test2015.json", TEST2015)
    for source in (answers, tmp_path / "e" / "vqa.jsonl"):  # LLaVA's file and our per-sample file agree
        sub = tmp_path / f"submit_{source.stem}.json"
        main(["data", "vqav2-submission", "--predictions", str(source), "--questions", str(tmp_path / "test2015.json"),
              "--out", str(sub)])
        assert json.loads(sub.read_text()) == [{"question_id": 262144000, "answer": "skateboard"},
                                               {"question_id": 262144001, "answer": "2"},
                                               {"question_id": 393225000, "answer": ""}]  # every test2015 question


@pytest.mark.parametrize("raw, expected", [
    ("Two.", "2"), ("A Skateboard.", "skateboard"), ("It's a dog?", "it 's dog"), ("1,000 people", "1000 people"),
    ("Yes, it is.", "yes it is"), ("t-shirt", "t shirt")])
def test_evalai_answer_processing(raw, expected):
    assert evalai_answer(raw) == expected


def test_submission_round_trip_scores_the_same(tmp_path):
    """Val predictions -> EvalAI file -> scored again as predictions: the same accuracy."""
    data = tmp_path / "val.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": 1, "image": "a.jpg", "question": "q", "answers": ["2"] * 10, "type": "number"},
        {"id": 2, "image": "a.jpg", "question": "q", "answers": ["red"] * 2 + ["blue"] * 8, "type": "other"},
        {"id": 3, "image": "b.jpg", "question": "q", "answers": ["dog"] * 10, "type": "other"}]))
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": 1, "prediction": "Two."}, {"id": 2, "prediction": "Red"}, {"id": 3, "prediction": "a cat"}]))
    main(["eval", "--tasks", "vqa", "--data", str(data), "--predictions", str(preds), "--out", str(tmp_path / "a")])
    main(["data", "vqav2-submission", "--predictions", str(preds), "--out", str(tmp_path / "sub.json")])
    assert json.loads((tmp_path / "sub.json").read_text()) == [
        {"question_id": 1, "answer": "2"}, {"question_id": 2, "answer": "red"}, {"question_id": 3, "answer": "cat"}]
    main(["eval", "--tasks", "vqa", "--data", str(data), "--predictions", str(tmp_path / "sub.json"),
          "--out", str(tmp_path / "b")])
    a, b = (json.loads((tmp_path / d / "results.json").read_text())["vqa"] for d in "ab")
    assert a == b and a["accuracy"] == pytest.approx((1 + 0.6 + 0) / 3)


def test_submission_errors(tmp_path):
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"id": "val-1", "prediction": "x"}) + "\n")
    with pytest.raises(ValueError, match="id 'val-1' is not a VQAv2 question_id"):
        main(["data", "vqav2-submission", "--predictions", str(preds), "--out", str(tmp_path / "s.json")])
    preds.write_text(json.dumps({"id": 5, "prediction": "x"}) + "\n")
    _write(tmp_path / "test2015.json", TEST2015)
    with pytest.raises(ValueError, match="1 question_ids are not in .*test2015.json"):
        main(["data", "vqav2-submission", "--predictions", str(preds), "--questions", str(tmp_path / "test2015.json"),
              "--out", str(tmp_path / "s.json")])


# ---------------------------------------------------------------- LAVIS and Karpathy captions

KARPATHY_TEST = [  # (cocoid, file, captions)
    (391895, "COCO_val2014_000000391895.jpg", ["A man with a red helmet on a small moped on a dirt road.",
                                               "Man riding a motor bike on a dirt road on the countryside."]),
    (60623, "COCO_val2014_000000060623.jpg", ["A young girl inhales with the intent of blowing out a candle.",
                                              "A young girl is preparing to blow out her candle."])]


def test_lavis_gt_file_needs_an_image_pattern_then_converts(tmp_path):
    gt = {"annotations": [{"image_id": i, "caption": c, "id": 10 * i + k}
                          for i, _, caps in KARPATHY_TEST for k, c in enumerate(caps)],
          "images": [{"id": i} for i, _, _ in KARPATHY_TEST]}
    _write(tmp_path / "coco_karpathy_test_gt.json", gt)
    with pytest.raises(ValueError, match=r"image 0 has no 'file_name' field \(it has \['id'\].*--image-pattern"):
        main(["data", "coco-captions", "--captions", str(tmp_path / "coco_karpathy_test_gt.json"),
              "--out", str(tmp_path / "gt.jsonl")])
    main(["data", "coco-captions", "--captions", str(tmp_path / "coco_karpathy_test_gt.json"),
          "--image-pattern", "val2014/COCO_val2014_{image_id:012d}.jpg", "--out", str(tmp_path / "gt.jsonl")])
    assert _jsonl(tmp_path / "gt.jsonl") == [{"id": i, "image": f"val2014/{f}", "captions": caps}
                                             for i, f, caps in KARPATHY_TEST]
    # the LAVIS annotation list of the same split converts to the same records (ids read off the paths)
    _write(tmp_path / "coco_karpathy_test.json", [{"image": f"val2014/{f}", "caption": caps}
                                                  for _, f, caps in KARPATHY_TEST])
    main(["data", "lavis-captions", "--annotations", str(tmp_path / "coco_karpathy_test.json"),
          "--out", str(tmp_path / "list.jsonl")])
    assert _jsonl(tmp_path / "list.jsonl") == _jsonl(tmp_path / "gt.jsonl")


def test_lavis_train_list_groups_captions_per_image(tmp_path):
    train = [{"caption": "A woman wearing a net on her head cutting a cake. ",
              "image": "val2014/COCO_val2014_000000522418.jpg", "image_id": "coco_522418"},
             {"caption": "A child holding a flowered umbrella.", "image": "train2014/COCO_train2014_000000318556.jpg",
              "image_id": "coco_318556"},
             {"caption": "A woman cutting a large white sheet cake.", "image": "val2014/COCO_val2014_000000522418.jpg",
              "image_id": "coco_522418"}]
    _write(tmp_path / "coco_karpathy_train.json", train)
    n = convert_lavis_captions(tmp_path / "coco_karpathy_train.json", tmp_path / "coco", tmp_path / "out" / "train.jsonl")
    assert n == 2
    assert _jsonl(tmp_path / "out" / "train.jsonl") == [  # image paths relative to the output file
        {"id": 522418, "image": "../coco/val2014/COCO_val2014_000000522418.jpg",
         "captions": ["A woman wearing a net on her head cutting a cake.", "A woman cutting a large white sheet cake."]},
        {"id": 318556, "image": "../coco/train2014/COCO_train2014_000000318556.jpg",
         "captions": ["A child holding a flowered umbrella."]}]
    _write(tmp_path / "bad.json", [{"image": "x.jpg", "captions": ["typo"]}])
    with pytest.raises(ValueError, match=r"bad.json: entry 0 has no 'caption' field \(it has \['captions', 'image'\]\)"):
        convert_lavis_captions(tmp_path / "bad.json", "", tmp_path / "x.jsonl")


def _karpathy_image(imgid, cocoid, split, folder, captions):
    return {"filepath": folder, "sentids": list(range(len(captions))), "filename": f"COCO_{folder}_{cocoid:012d}.jpg",
            "imgid": imgid, "split": split, "cocoid": cocoid,
            "sentences": [{"tokens": c.lower().rstrip(".").split(), "raw": c, "imgid": imgid, "sentid": k}
                          for k, c in enumerate(captions)]}


def test_karpathy_dataset_coco_by_split(tmp_path):
    ds = {"dataset": "coco", "images": [
        _karpathy_image(0, 391895, "test", "val2014", KARPATHY_TEST[0][2]),
        _karpathy_image(1, 522418, "restval", "val2014", ["A woman cutting a cake."]),
        _karpathy_image(2, 318556, "train", "train2014", ["A child holding an umbrella. "]),
        _karpathy_image(3, 184613, "val", "val2014", ["A child holding a flowered umbrella."]),
        _karpathy_image(4, 60623, "test", "val2014", KARPATHY_TEST[1][2])]}
    _write(tmp_path / "dataset_coco.json", ds)
    main(["data", "karpathy", "--dataset", str(tmp_path / "dataset_coco.json"), "--split", "test",
          "--out", str(tmp_path / "test.jsonl")])
    assert _jsonl(tmp_path / "test.jsonl") == [{"id": i, "image": f"val2014/{f}", "captions": caps}
                                               for i, f, caps in KARPATHY_TEST]
    n = convert_karpathy(tmp_path / "dataset_coco.json", ["train", "restval"], "", tmp_path / "train.jsonl")
    assert n == 2 and _jsonl(tmp_path / "train.jsonl") == [
        {"id": 522418, "image": "val2014/COCO_val2014_000000522418.jpg", "captions": ["A woman cutting a cake."]},
        {"id": 318556, "image": "train2014/COCO_train2014_000000318556.jpg", "captions": ["A child holding an umbrella."]}]
    with pytest.raises(ValueError, match=r"Karpathy splits are \['train', 'restval', 'val', 'test'\]; got \['tset'\]"):
        main(["data", "karpathy", "--dataset", str(tmp_path / "dataset_coco.json"), "--split", "tset",
              "--out", str(tmp_path / "x.jsonl")])
    del ds["images"][0]["sentences"][1]["raw"]
    _write(tmp_path / "dataset_coco.json", ds)
    with pytest.raises(ValueError, match=r"image 0's sentence 1 has no 'raw' field"):
        convert_karpathy(tmp_path / "dataset_coco.json", ["test"], "", tmp_path / "x.jsonl")


def test_missing_fields_are_named_not_key_errors(tmp_path):
    _write(tmp_path / "caps.json", {"images": [{"id": 1, "file_name": "a.jpg"}],
                                    "annotations": [{"image_id": 1, "id": 5, "text": "a dog"}]})
    with pytest.raises(ValueError, match=r"caps.json: annotation 0 has no 'caption' field \(it has \['id', 'image_id', 'text'\]\)"):
        convert_coco_captions(tmp_path / "caps.json", "", tmp_path / "x.jsonl")
    _write(tmp_path / "q.json", {"questions": [{"image_id": 1, "question": "q", "question_id": 1}]})
    with pytest.raises(ValueError, match="q.json: no 'data_subtype' field to name the images by; pass --image-pattern"):
        main(["data", "vqav2", "--questions", str(tmp_path / "q.json"), "--out", str(tmp_path / "x.jsonl")])
    main(["data", "vqav2", "--questions", str(tmp_path / "q.json"), "--image-pattern", "{image_id}.jpg",
          "--out", str(tmp_path / "x.jsonl")])
    assert _jsonl(tmp_path / "x.jsonl") == [{"id": 1, "image": "1.jpg", "question": "q"}]
