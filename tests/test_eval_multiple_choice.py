"""Multiple-choice tasks: the official answer readers on tricky cases, each task's lmms-lab layout
scored from predictions with hand-computed values, MMBench's circular rotations, and
`--mc-mode loglik` against the model's own log-probabilities (LLaVA and Flamingo)."""

import io
import json
import math

import datasets
import pytest
import torch
from PIL import Image

from tests.tiny import module_config, tiny_world
from train.checkpoint import build_module
from train.cli import main
from train.evaluation.decoding import Decoding
from train.evaluation.mc_parsing import (mmbench_choice, mmbench_letter_in_text, mmstar_correct, scienceqa_correct,
                                         seed_choice)
from train.evaluation.mmmu_parsing import eval_open, parse_multi_choice_response, parse_open_response
from train.evaluation.runner import evaluate_model, make_task

LETTER = "\nAnswer with the option's letter from the given choices directly."


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def _parquet(path, columns: dict, image_columns=("image",), features=None):
    ds = datasets.Dataset.from_dict(columns, features=features)
    for c in image_columns:
        if features is None:
            ds = ds.cast_column(c, datasets.Image())
    ds.to_parquet(str(path))
    return str(path)


def _score(tmp_path, task, data, preds: dict, name="out"):
    pred_file = tmp_path / f"{task}_preds.jsonl"
    pred_file.write_text("".join(json.dumps({"id": k, "prediction": v}) + "\n" for k, v in preds.items()))
    out = tmp_path / name
    main(["eval", "--tasks", task, "--predictions", str(pred_file), "--data", data, "--out", str(out)])
    rows = [json.loads(line) for line in open(out / f"{task}.jsonl")]
    return json.loads((out / "results.json").read_text())[task], rows


# ---- answer readers --------------------------------------------------------------------------------

def test_mmbench_letter_parser_reads_decorated_letters_and_option_texts():
    options = {"A": "dog", "B": "cat", "C": "bird"}
    assert mmbench_letter_in_text("The answer is (B).") == "B"
    assert mmbench_letter_in_text("B. cat") == "B"
    assert mmbench_letter_in_text("C") == "C"
    assert mmbench_letter_in_text("Answer:C") is None  # one word, no decoration listed matches it
    assert mmbench_letter_in_text("A or B") is None  # two letters: not readable
    # "A" among more than 3 words may be the article: no letter, then the option text decides
    assert mmbench_letter_in_text("A cat sits on the mat") is None
    assert mmbench_choice("A cat sits on the mat", options) == "B"
    assert mmbench_choice("I do not know", options) is None  # no letter, no option: wrong
    assert mmbench_choice("a cat or a dog", options) is None  # two options' texts


def test_scienceqa_seed_and_mmstar_readers_follow_lmms_eval():
    assert scienceqa_correct("B", "B") and scienceqa_correct("B. cat", "B")
    assert not scienceqa_correct("The answer is B", "B") and not scienceqa_correct("b", "B")
    assert seed_choice(" C) bird ") == "C" and seed_choice("The answer is A") == "T"
    assert mmstar_correct("(B) cat", "B") and mmstar_correct("Option b", "B")
    assert mmstar_correct("The answer is C.", "C") and not mmstar_correct("Answer: C", "C")
    assert not mmstar_correct("", "A") and not mmstar_correct("(", "A")


def test_mmmu_parsers_follow_the_official_eval_utils():
    opts = {"A": "red apple", "B": "banana", "C": "cherry"}
    assert parse_multi_choice_response("The answer is (B).", opts) == "B"
    assert parse_multi_choice_response("(A) or (C), I pick (C)", opts) == "C"  # the last bracketed one
    assert parse_multi_choice_response("I think it is definitely the red apple here", opts) == "A"  # by text
    assert parse_multi_choice_response("B", opts) == "B"
    # nothing readable: a pick seeded by the id, the same every time
    picks = {parse_multi_choice_response("no idea", opts, seed=f"validation_Art_{i}") for i in range(20)}
    assert picks <= set(opts) and len(picks) > 1
    again = [parse_multi_choice_response("no idea", opts, seed="x") for _ in range(3)]
    assert len(set(again)) == 1
    # open answers: thousands commas, rounding to 2 places, numbers compared as numbers
    assert set(parse_open_response("The answer is 1,000.")) == {1000.0, 0.0}  # "000" is also extracted
    assert eval_open("1000", parse_open_response("The answer is 1,000."))
    assert eval_open("3.14", parse_open_response("so x = 3.14159"))
    assert not eval_open("2", parse_open_response("There are 12 apples"))  # "2" is in "12", 2.0 is not 12.0
    assert eval_open("Paris", parse_open_response("I believe the capital is Paris."))
    assert not eval_open("a", parse_open_response("the answer is banana"))  # one letter never matches inside a word


# ---- lmms-lab layouts, scored from predictions -----------------------------------------------------

MMBENCH = {
    "index": [0, 1], "question": ["Which shape is red?", "What is shown?"],
    "hint": ["Look closely.", None], "A": ["square", "a cat"], "B": ["red circle", "a dog"],
    "C": ["triangle", "a bird"], "D": ["blue star", None], "answer": ["C", "A"],
    "category": ["color", "object"], "L2-category": ["perception", "perception"], "source": ["s", "s"],
    "split": ["dev", "dev"], "image": [_png("red"), _png("blue")],
}


def test_mmbench_circular_rotations_and_scores(tmp_path):
    data = _parquet(tmp_path / "mmbench.parquet", MMBENCH)
    # rotation k of index i has id i + k*1e6 and the options shifted by k; the answer letter moves with them
    # question 0 (answer "triangle"): rounds answer C, B, A, D; question 1 ("a cat"): A, C, B
    preds = {0: "C", 1_000_000: "The answer is (B).", 2_000_000: "A. triangle", 3_000_000: "triangle",
             1: "A", 1_000_001: "C", 2_000_001: "I do not know"}
    metrics, rows = _score(tmp_path, "mmbench", data, preds)
    assert [r["id"] for r in rows] == [0, 1_000_000, 2_000_000, 3_000_000, 1, 1_000_001, 2_000_001]
    assert [r["reference"] for r in rows] == ["C", "B", "A", "D", "A", "C", "B"]
    assert [r["score"] for r in rows] == [1, 1, 1, 1, 1, 1, 0]
    assert rows[1]["prompt"] == ("Look closely.\nWhich shape is red?\nA. red circle\nB. triangle\nC. blue star"
                                 "\nD. square" + LETTER)
    assert rows[4]["prompt"] == "What is shown?\nA. a cat\nB. a dog\nC. a bird" + LETTER  # no hint, no empty D
    assert metrics["accuracy"] == 0.5  # question 1 fails its third rotation
    assert metrics["accuracy_single"] == 1.0  # both right in the first rotation
    assert metrics["accuracy_color"] == 1.0 and metrics["accuracy_object"] == 0.0
    assert metrics["accuracy_l2_perception"] == 0.5 and metrics["n"] == 7


def test_mmbench_file_that_already_holds_rotations_is_used_as_it_is(tmp_path):
    # the official TSVs carry the rotations themselves (index + k*1e6): nothing is added
    rows = {k: v[:1] * 2 for k, v in MMBENCH.items()}
    rows.update({"index": [5, 1_000_005], "A": ["square", "red circle"], "B": ["red circle", "triangle"],
                 "C": ["triangle", "blue star"], "D": ["blue star", "square"], "answer": ["C", "B"]})
    data = _parquet(tmp_path / "mmb.parquet", rows)
    metrics, out = _score(tmp_path, "mmbench", data, {5: "C", 1_000_005: "A"})
    assert [r["id"] for r in out] == [5, 1_000_005] and metrics["accuracy"] == 0.0 and metrics["accuracy_single"] == 1


def scienceqa_data(tmp_path) -> str:
    cols = {"image": [_png("red"), _png("green"), _png("blue")],
            "question": ["Which is a mammal?", "Which is hot?", "Pick one."],
            "choices": [["frog", "whale"], ["ice", "fire", "snow"], ["x", "y", "z"]], "answer": [1, 0, 2],
            "hint": ["Mammals feed milk.", "", ""], "task": ["t"] * 3, "grade": ["g"] * 3,
            "subject": ["natural science", "natural science", "language science"], "topic": ["t"] * 3,
            "category": ["c"] * 3, "skill": ["s"] * 3, "lecture": [""] * 3, "solution": [""] * 3}
    return _parquet(tmp_path / "sqa.parquet", cols)


def test_scienceqa_img_layout(tmp_path):
    data = scienceqa_data(tmp_path)
    # rows have no id: their position is the id (lmms-eval's doc_id)
    metrics, rows = _score(tmp_path, "scienceqa_img", data, {0: "B", 1: "A. ice", 2: "The answer is C"})
    assert rows[0]["prompt"] == "Context: Mammals feed milk.\nWhich is a mammal?\nA. frog\nB. whale" + LETTER
    assert rows[1]["prompt"] == "Which is hot?\nA. ice\nB. fire\nC. snow" + LETTER
    assert [r["score"] for r in rows] == [1, 1, 0]  # "The answer is C" is not LLaVA's format
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["accuracy_natural science"] == 1.0 and metrics["accuracy_language science"] == 0.0


def seed_data(tmp_path) -> str:
    img = {"bytes": _png("red"), "path": None}
    features = datasets.Features({
        "answer": datasets.Value("string"), **{f"choice_{c}": datasets.Value("string") for c in "abcd"},
        "data_id": datasets.Value("string"), "data_type": datasets.Value("string"),
        "question": datasets.Value("string"), "question_id": datasets.Value("string"),
        "question_type_id": datasets.Value("int64"), "image": datasets.Sequence(datasets.Image())})
    cols = {"answer": ["B", "C", "A", "D"], "choice_a": ["a1", "a2", "a3", "a4"], "choice_b": ["b1", "b2", "b3", "b4"],
            "choice_c": ["c1", "c2", "c3", "c4"], "choice_d": ["d1", "d2", "d3", "d4"],
            "data_id": ["1.jpg", "2.jpg", "3.jpg", "v.mp4"], "data_type": ["image", "image", "image", "video"],
            "question": ["Q1?", "Q2?", "Q3?", "Q4?"], "question_id": ["101", "102", "103", "104"],
            "question_type_id": [1, 1, 2, 10], "image": [[img], [img], [img], [img, img]]}
    return _parquet(tmp_path / "seed.parquet", cols, features=features)


def test_seed_bench_image_subset_by_dimension(tmp_path):
    data = seed_data(tmp_path)
    metrics, rows = _score(tmp_path, "seed_bench", data, {"101": "B", "102": "C) c2", "103": "The answer is A"})
    assert [r["id"] for r in rows] == ["101", "102", "103"]  # the video question is not evaluated
    assert rows[0]["prompt"] == "Q1?\nA. a1\nB. b1\nC. c1\nD. d1" + LETTER
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["accuracy_scene_understanding"] == 1.0 and metrics["accuracy_instance_identity"] == 0.0


def mmmu_data(tmp_path) -> str:
    none = [None] * 4
    cols = {"id": ["validation_Art_1", "validation_Art_2", "validation_Math_1", "validation_Math_2"],
            "question": ["Which? <image 1>", "Which fruit?", "How many grams?", "How many?"],
            "options": ["['circle', 'square']", "['red apple', 'banana', 'cherry']", "[]", "[]"],
            "explanation": [""] * 4, "image_1": [_png("red"), _png("green"), _png("blue"), _png("white")],
            **{f"image_{i}": none for i in range(2, 8)}, "img_type": ["['Photos']"] * 4,
            "answer": ["B", "A", "1000", "2"], "topic_difficulty": ["Easy"] * 4,
            "question_type": ["multiple-choice", "multiple-choice", "open", "open"], "subfield": ["x"] * 4}
    features = datasets.Features({k: (datasets.Image() if k.startswith("image_") else datasets.Value("string"))
                                  for k in cols})
    return _parquet(tmp_path / "mmmu.parquet", cols, features=features)


def test_mmmu_layout_multiple_choice_and_open(tmp_path):
    data = mmmu_data(tmp_path)
    preds = {"validation_Art_1": "(B)", "validation_Art_2": "I think it is definitely the red apple here",
             "validation_Math_1": "The answer is 1,000.", "validation_Math_2": "There are 12 apples"}
    metrics, rows = _score(tmp_path, "mmmu", data, preds)
    assert rows[0]["prompt"] == ("Which? <image 1>\nA. circle\nB. square\n\n"
                                 "Answer with the option's letter from the given choices directly.")
    assert rows[2]["prompt"] == "How many grams?\n\nAnswer the question using a single word or phrase."
    assert [r["score"] for r in rows] == [1, 1, 1, 0]
    assert metrics["accuracy"] == 0.75 and metrics["accuracy_Art"] == 1.0 and metrics["accuracy_Math"] == 0.5
    assert metrics["accuracy_art_and_design"] == 1.0 and metrics["accuracy_science"] == 0.5


def mmstar_data(tmp_path) -> str:
    cols = {"index": [0, 1, 2, 3, 4],
            "question": ["Which angle? Options: A: 30, B: 60", "Q2", "Q3", "Q4", "Is it sad? Please answer yes or no."],
            "image": [_png("red")] * 5, "answer": ["A", "B", "C", "D", "A"],
            "category": ["math", "math", "math", "math", "coarse perception"],
            "l2_category": ["geometry", "geometry", "geometry", "statistical reasoning", "image emotion"]}
    return _parquet(tmp_path / "mmstar.parquet", cols)


def test_mmstar_layout_category_means(tmp_path):
    data = mmstar_data(tmp_path)
    metrics, rows = _score(tmp_path, "mmstar", data, {0: "A", 1: "C", 2: "(a)", 3: "Option D", 4: "B"})
    assert rows[0]["prompt"] == ("Which angle? Options: A: 30, B: 60"
                                 "\nAnswer with the option's letter from the given choices directly")
    assert rows[4]["prompt"].startswith("Is it sad?\nAnswer")  # lmms-eval drops the yes/no instruction
    assert [r["score"] for r in rows] == [1, 0, 0, 1, 0]
    assert metrics["accuracy"] == pytest.approx(2 / 5)
    assert metrics["accuracy_l2_geometry"] == pytest.approx(1 / 3)
    assert metrics["average"] == pytest.approx((1 / 3 + 1 + 0) / 3)  # lmms-eval's number: mean of l2 means
    assert metrics["accuracy_math"] == pytest.approx((1 / 3 + 1) / 2) and metrics["accuracy_coarse perception"] == 0


def test_default_prompts_and_cli_override(tmp_path):
    for name in ("scienceqa_img", "mmbench", "seed_bench"):
        assert make_task(name).prompt_suffix == LETTER
    assert make_task("mme").prompt_suffix == "\nAnswer the question using a single word or phrase."
    data = _parquet(tmp_path / "mmbench.parquet", MMBENCH)
    pred_file = tmp_path / "p.jsonl"
    pred_file.write_text("".join(json.dumps({"id": i, "prediction": "A"}) + "\n"
                                 for i in (0, 1_000_000, 2_000_000, 3_000_000, 1, 1_000_001, 2_000_001)))
    main(["eval", "--tasks", "mmbench", "--predictions", str(pred_file), "--data", data, "--out", str(tmp_path / "o"),
          "--prompt-suffix", "mmbench=\\nLetter:"])
    rows = [json.loads(line) for line in open(tmp_path / "o" / "mmbench.jsonl")]
    assert rows[4]["prompt"].endswith("C. a bird\nLetter:")


# ---- model runs: prompts reach the model; loglik picks the most probable option -------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("mcworld"))


def _llava(world):
    cfg = module_config(world)
    cfg["init_args"]["model"]["init_args"]["language"]["init_args"]["config"]["initializer_range"] = 0.4
    torch.manual_seed(0)
    return build_module(cfg).eval()


def _flamingo(world, tmp_path):
    from tests.test_flamingo_stage import flamingo_config

    torch.manual_seed(0)
    module = build_module(flamingo_config(world, tmp_path)["model"]).eval()
    for block in module.model.cross_attention:  # open the gates so the image changes the scores
        block.attn_gate.data.fill_(1.0)
        block.ff_gate.data.fill_(1.0)
    return module


def _reference_logprobs(module, task, rec: dict, root) -> list[float]:
    """Each option's summed log-probability by a direct, unbatched call of the model."""
    from data.conversation_dataset import load_pixels
    from data.tokenize import tokenize_prompt

    model = module.model
    tok = model.tokenizer
    _, pixels = load_pixels(rec, root, model.vision.transform(train=False))
    prompt = tokenize_prompt(task.prompt(rec), tok, module.template, image=True)
    out = []
    for _, text in task.choices(rec):
        cont = tok(text, add_special_tokens=False).input_ids
        ids = torch.tensor(prompt + cont)
        placeholders = getattr(model, "image_placeholders", None)
        if placeholders is not None:
            ids, _ = placeholders.widen(ids)
        with torch.no_grad():
            logits, _ = model(ids[None], torch.ones(1, len(ids), dtype=torch.long), pixels)
        logp = torch.log_softmax(logits[0].float(), -1)
        start = len(ids) - len(cont)
        out.append(sum(float(logp[start + k - 1, c]) for k, c in enumerate(cont)))
    return out


@pytest.mark.parametrize("kind", ["llava", "flamingo"])
def test_loglik_picks_the_option_the_model_finds_most_probable(world, tmp_path, kind):
    module = _llava(world) if kind == "llava" else _flamingo(world, tmp_path)
    data = _parquet(tmp_path / "mmbench.parquet", MMBENCH)
    runs = {}
    for bs in (1, 5):
        decoding = Decoding(batch_size=bs, mc_mode="loglik")
        runs[bs] = evaluate_model(module, {"mmbench": data}, tmp_path / f"out{bs}", decoding, limit=1)
    results, rows = runs[5]
    rows = rows["mmbench"]
    assert len(rows) == 4  # the first question's four rotations
    task = make_task("mmbench")
    records = task.prepare(_records(tmp_path / "out5", data)[:1])
    for row, rec in zip(rows, records):
        values = row["resps"][0][0]
        reference = _reference_logprobs(module, task, rec, tmp_path / "out5")
        assert values == pytest.approx(reference, abs=1e-4)
        assert row["prediction"] == "ABCD"[max(range(len(reference)), key=reference.__getitem__)]
        assert row["score"] == float(row["prediction"] == row["reference"])
    # batching and padding change nothing
    for one, batched in zip(runs[1][1]["mmbench"], rows):
        assert one["resps"][0][0] == pytest.approx(batched["resps"][0][0], abs=1e-4)
    assert results["mmbench"]["n"] == 4 and results["meta"]["decoding"]["mc_mode"] == "loglik"


def _records(out_dir, data):
    from train.evaluation.inputs import read_task_data

    return read_task_data(data, "mmbench", image_dir=out_dir / "images").records


def test_generate_mode_reaches_the_model_with_each_rotation(world, tmp_path):
    module = _llava(world)
    data = _parquet(tmp_path / "mmbench.parquet", MMBENCH)
    results, rows = evaluate_model(module, {"mmbench": data}, tmp_path / "gen",
                                   Decoding(batch_size=4, max_new_tokens=3))
    rows = rows["mmbench"]
    assert len(rows) == 7 and all(r["prediction"] is not None for r in rows)
    assert rows[2]["prompt"] == ("Look closely.\nWhich shape is red?\nA. triangle\nB. blue star\nC. square"
                                 "\nD. red circle" + LETTER)
    meta = json.loads((tmp_path / "gen" / "results.json").read_text())["meta"]
    assert meta["prompts"]["mmbench"]["suffix"] == LETTER and meta["decoding"]["mc_mode"] == "generate"
    hits = [all(r["score"] for r in rows if r["id"] % 1_000_000 == q) for q in (0, 1)]
    assert results["mmbench"]["accuracy"] == sum(hits) / 2
    assert not math.isnan(results["mmbench"]["accuracy"])


def mmbench_data(tmp_path) -> str:
    return _parquet(tmp_path / "mmbench.parquet", MMBENCH)


@pytest.mark.parametrize("mode", ["generate", "loglik"])
def test_every_task_runs_on_a_tiny_model(world, tmp_path, mode):
    """Each task's prompts reach the model in both modes; MMMU's open questions are generated in both."""
    module = _llava(world)
    builders = {"scienceqa_img": scienceqa_data, "mmbench": mmbench_data, "seed_bench": seed_data,
                "mmmu": mmmu_data, "mmstar": mmstar_data}
    files = {name: build(tmp_path) for name, build in builders.items()}
    decoding = Decoding(batch_size=8, max_new_tokens=2, mc_mode=mode)
    results, rows = evaluate_model(module, files, tmp_path / mode, decoding)
    for name in builders:
        assert all(r["prediction"] is not None for r in rows[name]) and results[name]["n"] == len(rows[name])
        if mode == "loglik":
            for r in rows[name]:
                picked = isinstance(r["resps"][0][0], list)
                assert picked == (r.get("question_type") != "open")  # open MMMU questions: generated text
                if picked:
                    assert r["prediction"] in "ABCDE"
    assert rows["mmmu"][0]["prompt"] == ("Which? <image 1>\nA. circle\nB. square\n\n"
                                         "Answer with the option's letter from the given choices directly.")
    assert len(rows["mmbench"]) == 7 and len(rows["seed_bench"]) == 3
