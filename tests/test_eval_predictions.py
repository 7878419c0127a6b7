"""`chimera eval --predictions`: LLaVA answer files, named fields, ids as text, missing predictions
as a one-line error (exit status 2), and what results.json records of the inputs."""

import hashlib
import json

import datasets
import pytest

from tests.cli_run import chimera, plain_error
from train.cli import main
from train.evaluation.predictions import id_key, read_predictions

DATA = [{"id": 262148000, "image": "a.jpg", "question": "q1", "answer": "yes"},
        {"id": 262148001, "image": "a.jpg", "question": "q2", "answer": "no"},
        {"id": 262148002, "image": "b.jpg", "question": "q3", "answer": "yes"},
        {"id": 262148003, "image": "b.jpg", "question": "q4", "answer": "no"}]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _results(out):
    return json.loads((out / "results.json").read_text())


def test_id_key_matches_ints_numeric_strings_and_integral_floats():
    assert id_key(262148000) == id_key("262148000") == id_key(262148000.0) == id_key(" 262148000") == "262148000"
    assert id_key("random-1") == "random-1" and id_key(1.5) == "1.5"


def test_llava_answer_file_and_named_fields_score_alike(tmp_path):
    data = _jsonl(tmp_path / "pope.jsonl", [{**r, "split": "random"} for r in DATA])
    texts = ["Yes, there is.", "No.", "no", "I am not sure."]  # right, right, wrong, unparsed
    llava = _jsonl(tmp_path / "llava.jsonl", [
        {"question_id": str(r["id"]) if i % 2 else r["id"], "prompt": r["question"], "text": t, "answer_id": f"a{i}",
         "model_id": "llava-v1.5-7b", "metadata": {}} for i, (r, t) in enumerate(zip(DATA, texts))])
    other = tmp_path / "other.json"  # a JSON list with its own names
    other.write_text(json.dumps([{"qid": r["id"], "response": t} for r, t in zip(DATA, texts)]))
    main(["eval", "--tasks", "pope", "--data", str(data), "--predictions", str(llava), "--out", str(tmp_path / "a")])
    main(["eval", "--tasks", "pope", "--data", str(data), "--predictions", str(other), "--id-field", "qid",
          "--text-field", "response", "--out", str(tmp_path / "b")])
    a, b = _results(tmp_path / "a")["pope"], _results(tmp_path / "b")["pope"]
    assert a == b
    # tp 1, tn 1, fn 1 (yes answered "no"), 1 unparsed on a "no" probe: neither tn nor fp
    assert a["accuracy"] == 0.5 and a["precision"] == 1.0 and a["recall"] == 0.5 and a["unparsed"] == 1.0
    assert a["f1"] == pytest.approx(2 / 3) and a["yes_ratio"] == 0.25
    with pytest.raises(ValueError, match=r"other.json: record 0 has none of the field pairs .*--id-field and --text-field"):
        read_predictions(other)
    _jsonl(tmp_path / "dup.jsonl", [{"id": 1, "prediction": "a"}, {"id": "1", "prediction": "b"}])
    with pytest.raises(ValueError, match="dup.jsonl: id '1' has two predictions"):
        read_predictions(tmp_path / "dup.jsonl")


def test_results_record_inputs_and_lmms_eval_sample_fields(tmp_path):
    data = _jsonl(tmp_path / "vqa.jsonl", DATA)
    preds = _jsonl(tmp_path / "p.jsonl", [{"id": r["id"], "prediction": "Yes"} for r in DATA])
    main(["eval", "--tasks", "vqa", "--data", str(data), "--predictions", str(preds), "--out", str(tmp_path / "o")])
    results = _results(tmp_path / "o")
    assert results["vqa"] == {"accuracy": 0.5, "n": 4.0, "skipped": 0.0}
    meta = results["meta"]
    assert meta["data_sha256"]["vqa"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert meta["predictions_sha256"] == hashlib.sha256(preds.read_bytes()).hexdigest()
    rows = [json.loads(x) for x in open(tmp_path / "o" / "vqa.jsonl")]
    assert [(r["doc_id"], r["target"], r["resps"], r["filtered_resps"], r["score"]) for r in rows] == [
        (0, "yes", [["Yes"]], ["Yes"], 1.0), (1, "no", [["Yes"]], ["Yes"], 0.0),
        (2, "yes", [["Yes"]], ["Yes"], 1.0), (3, "no", [["Yes"]], ["Yes"], 0.0)]


def test_missing_predictions_and_a_bad_column_are_one_line_with_status_2(tmp_path):
    data = _jsonl(tmp_path / "vqa.jsonl", DATA)
    preds = _jsonl(tmp_path / "p.jsonl", [{"question_id": DATA[1]["id"], "text": "no"}])
    ds = datasets.Dataset.from_dict({"question_id": [1], "answer": ["x"], "image": [b"\x89PNG"]})
    ds.to_parquet(str(tmp_path / "noq.parquet"))
    proc = chimera("eval", "--tasks", "vqa", "--data", data, "--predictions", preds, "--out", tmp_path / "o")
    assert plain_error(proc, "eval") == (f"{preds}: 3 of 4 samples of {data} have no prediction (first ids: "
                                         "262148000, 262148002, 262148003); --allow-missing scores the rest")
    proc = chimera("eval", "--tasks", "vqa", "--data", tmp_path / "noq.parquet", "--predictions", preds,
                   "--out", tmp_path / "o")
    assert plain_error(proc, "eval") == (f"{tmp_path / 'noq.parquet'}: no 'question' column (the 'vqa' task's "
                                         "'question' field); it has ['answer', 'image', 'question_id']")
    main(["eval", "--tasks", "vqa", "--data", str(data), "--predictions", str(preds), "--allow-missing",
          "--out", str(tmp_path / "o")])
    assert _results(tmp_path / "o")["vqa"] == {"accuracy": 1.0, "n": 1.0, "skipped": 3.0}
