"""The training-step benchmark runs its cases at toy sizes and reports each against its peer, with
each step's host syncs and, with --compile, the step under torch.compile."""

from argparse import Namespace

import pytest
import torch

from scripts.bench_train_step import PEERS, host_syncs, run_case, table

ARGS = Namespace(size="tiny", cpu=True, steps=1, warmup=1, compile=None)


@pytest.fixture(scope="module")
def results():
    return {case: run_case(case, ARGS) for case in ("matmul_peak", "llava_1b", "llava_1b_hf", "mix_padded",
                                                    "mix_packed", "flamingo_1b")}


@pytest.fixture(scope="module")
def compiled():
    """llava_1b with its forward and backward compiled (aot_eager: no code generation, seconds on a CPU)."""
    return run_case("llava_1b", Namespace(**{**vars(ARGS), "compile": "aot_eager"}))


def test_ours_and_the_transformers_peer_train_the_same_model(results):
    ours, peer = results["llava_1b"], results["llava_1b_hf"]
    # same architecture and stage: the same parameters train (connector + LM, tower frozen)
    assert ours["trainable"] == peer["trainable"] > 0
    for r in (ours, peer):
        assert r["tokens_per_s"] > 0 and r["tflops"] > 0 and r["seconds"] > 0


def test_packing_keeps_the_samples_of_a_step(results):
    padded, packed = results["mix_padded"], results["mix_packed"]
    assert padded["samples_per_s"] * padded["seconds"] == pytest.approx(packed["samples_per_s"] * packed["seconds"])
    assert padded["tokens_per_s"] * padded["seconds"] == pytest.approx(packed["tokens_per_s"] * packed["seconds"])


def test_table_has_a_row_per_case_and_ratios_to_peers(results):
    text = table(results)
    for case in results:
        assert case in text
    assert f"x {PEERS['llava_1b']}" in text and f"x {PEERS['mix_packed']}" in text
    assert "not run" not in text


def test_a_failed_case_is_reported_not_fatal():
    text = table({"flamingo_1b_of": {"error": "ModuleNotFoundError: open_flamingo is not installed"}})
    assert "flamingo_1b_of       not run: ModuleNotFoundError" in text


def test_host_syncs_counts_the_forward_backward_and_the_optimizer_apart():
    """Hand-counted: a boolean-mask index and an .item() in the forward, the mask's index_put in the
    backward; plain SGD reads nothing."""
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))

    def forward():
        loss = w[w > 0].sum()
        loss.item()
        return loss

    model, optimizer = host_syncs(forward, torch.optim.SGD([w], lr=0.1))
    assert dict(model.by_op) == {"mask_index": 2, "item": 1} and optimizer.total == 0
    assert torch.equal(w.detach(), torch.tensor([0.9, -2.0, 2.9]))  # the step did run


def test_every_case_reports_its_host_syncs(results):
    for case, r in results.items():
        if case == "matmul_peak":
            continue
        assert r["host_syncs"] == sum(r["host_syncs_by_op"].values()) >= 0, case
        assert r["optimizer_syncs"] >= 0 and r["compile"] is None
    text = table(results)
    assert "syncs/step" in text.splitlines()[0]
    row = next(line for line in text.splitlines() if line.startswith("llava_1b "))
    assert row.split()[2] == str(results["llava_1b"]["host_syncs"])


def test_compiled_step_trains_the_same_model_and_reports_its_graph_breaks(results, compiled):
    assert compiled["compile"]["backend"] == "aot_eager" and compiled["compile"]["graph_breaks"] >= 0
    assert compiled["trainable"] == results["llava_1b"]["trainable"]
    # same seed, weights and batch: the compiled forward/backward gives the eager loss after the same updates
    assert compiled["loss"] == pytest.approx(results["llava_1b"]["loss"], rel=1e-4)
    assert compiled["host_syncs"] == results["llava_1b"]["host_syncs"]  # counted on an eager step
    row = next(line for line in table({"llava_1b": compiled}).splitlines() if line.startswith("llava_1b"))
    assert row.endswith(f"aot_eager, {compiled['compile']['graph_breaks']} breaks")
