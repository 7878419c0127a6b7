"""Evaluation batching: prompts sorted by length into batches, outputs back in the data's order, KV cache
on; predictions equal at batch 1 and batch N on every generative task (and with sorting off), and for the
multiple-choice tasks also when options are scored by log-likelihood."""

import pytest
import torch

from data.collate import Collator
from data.conversation_dataset import PromptDataset
from scripts.bench_eval import TASK_DATA, tokenizer_dir
from tests.tiny import module_config
from train.checkpoint import build_module
from train.data_module import image_placeholders
from train.evaluation.decoding import Decoding, length_order, prompt_lengths, prompt_template
from train.evaluation.runner import TASKS, evaluate_model, is_contrastive, load_task_data, make_task

SAMPLES = 7  # batch 4 leaves a ragged last batch
# every generative task generating; the multiple-choice ones (with `choices`) also scoring options
MC_TASKS = sorted(t for t in TASK_DATA if hasattr(make_task(t), "choices"))
CASES = [(t, "generate") for t in sorted(TASK_DATA)] + [(t, "loglik") for t in MC_TASKS]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random tiny LLaVA with large weights (every prompt answered differently, so equal outputs
    are not equal by accident) and each task's data. One thread while this module runs: the tiny
    model's ops are too small to split, and on a shared machine a second thread waiting for its core
    made these ~30 runs 4-40x slower (restored afterwards)."""
    root = tmp_path_factory.mktemp("batching")
    cfg = module_config(tokenizer_dir(root).parent)
    cfg["init_args"]["model"]["init_args"]["language"]["init_args"]["config"]["initializer_range"] = 0.4
    torch.manual_seed(0)
    module = build_module(cfg).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield module, {task: write(root, SAMPLES) for task, write in TASK_DATA.items()}, root
    finally:
        torch.set_num_threads(threads)


def test_every_generative_task_has_benchmark_data():
    generative = {name for name, task in TASKS.items() if not is_contrastive(task())}
    assert set(TASK_DATA) == generative


def test_length_order_is_longest_first_and_stable():
    assert length_order([3, 5, 1, 5, 3]) == [1, 3, 0, 4, 2]
    assert length_order([]) == []


def test_prompt_lengths_are_the_collated_row_lengths(setup):
    """Sorting uses the lengths the batches will have: `<image>` widened to its placeholders."""
    module, files, _ = setup
    model = module.model
    for task_name in ("vqa", "caption"):
        task = make_task(task_name)
        data = load_task_data(task, files[task_name], SAMPLES)
        dataset = PromptDataset(data.records, data.root, [task.prompt(r) for r in data.records], model.tokenizer,
                                prompt_template(module, Decoding()), model.vision.transform(train=False))
        placeholders = image_placeholders(model)
        collate = Collator(model.tokenizer.pad_token_id, left_pad=True, placeholders=placeholders)
        actual = [int(collate([dataset[i]])["attention_mask"].sum()) for i in range(len(dataset))]
        assert prompt_lengths(dataset, placeholders) == actual
        assert actual[0] > model.num_image_tokens  # the image's placeholders are counted


def test_multiple_choice_tasks_are_checked_in_both_modes():
    assert MC_TASKS == ["mmbench", "mme", "mmmu", "mmstar", "scienceqa_img", "seed_bench"]


@pytest.mark.parametrize("task, mc_mode", CASES)
def test_predictions_identical_at_batch_size_1_and_n(setup, task, mc_mode, tmp_path):
    """Left padding, masks, positions and the KV cache must not leak between samples; sorting by
    length must not change which prediction lands on which record; nor, in log-likelihood mode,
    right-padded (record, option) rows."""
    module, files, _ = setup
    runs = {}
    for bs, beams, sort in ((1, 1, True), (4, 1, True), (4, 1, False), (1, 3, True), (4, 3, True)):
        if beams > 1 and (task != "vqa" or mc_mode != "generate"):
            continue  # beam search: one task is enough (and the slowest runs)
        decoding = Decoding(batch_size=bs, num_beams=beams, stop=[], max_new_tokens=4, sort_by_length=sort,
                            prompt_suffix={task: ""}, mc_mode=mc_mode)
        results, rows = evaluate_model(module, {task: files[task]}, tmp_path / f"{bs}_{beams}_{sort}", decoding,
                                       limit=SAMPLES)
        runs[bs, beams, sort] = results[task], rows[task]
    data = load_task_data(make_task(task), files[task], SAMPLES)
    for beams in (1, 3):
        if (1, beams, True) not in runs:
            continue
        metrics, rows = runs[1, beams, True]
        assert len(rows) == len(data.records) >= SAMPLES  # MMBench: every rotation of each question
        assert [r["id"] for r in rows] == [r["id"] for r in data.records]  # the data's order, not the batches'
        preds = [r["prediction"] for r in rows]
        scores = option_scores(rows)
        if mc_mode == "generate":
            assert len(set(preds)) >= 2, preds  # captions: one prompt, answers differ by image only
        else:  # the picks may all be one label (MME: "No" throughout); the scores they come from differ
            assert len({round(v, 3) for v in scores}) >= 4, scores
        for key in [(4, beams, True), (4, beams, False)]:
            if key in runs:
                assert [r["prediction"] for r in runs[key][1]] == preds, key
                assert runs[key][0] == metrics
                assert option_scores(runs[key][1]) == pytest.approx(scores, rel=1e-4, abs=1e-4)


def option_scores(rows: list[dict]) -> list[float]:
    """Every option's summed log-probability, in row order (`--mc-mode loglik` responses; none when generating)."""
    return [v for r in rows if isinstance(r["resps"][0][0], list) for v in r["resps"][0][0]]


def test_kv_cached_decoding_equals_uncached(setup):
    """The cache evaluation decodes with gives the tokens a full recompute gives (left-padded batch)."""
    module, files, _ = setup
    model = module.model
    task = make_task("vqa")
    data = load_task_data(task, files["vqa"], 4)
    dataset = PromptDataset(data.records, data.root, [task.prompt(r) + " and more words" * i
                                                      for i, r in enumerate(data.records)],
                            model.tokenizer, module.template, model.vision.transform(train=False))
    batch = Collator(model.tokenizer.pad_token_id, left_pad=True, placeholders=model.image_placeholders)(
        [dataset[i] for i in range(4)])
    assert (batch["attention_mask"] == 0).any()  # some rows are padded
    args = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    cached = model.generate(*args, max_new_tokens=6, use_cache=True)
    full = model.generate(*args, max_new_tokens=6, use_cache=False)
    assert cached.tolist() == full.tolist()
