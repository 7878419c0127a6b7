"""Converters from the official VQAv2, COCO captions and POPE files (small hand-written copies)."""

import json

from data.eval_formats import convert_coco_captions, convert_pope
from train.cli import main
from train.evaluation.runner import load_task_records, make_task


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
