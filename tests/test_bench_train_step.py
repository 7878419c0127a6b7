"""The training-step benchmark runs its cases at toy sizes and reports each against its peer."""

from argparse import Namespace

import pytest

from scripts.bench_train_step import PEERS, run_case, table

ARGS = Namespace(size="tiny", cpu=True, steps=1, warmup=1)


@pytest.fixture(scope="module")
def results():
    return {case: run_case(case, ARGS) for case in ("matmul_peak", "llava_1b", "llava_1b_hf", "mix_padded",
                                                    "mix_packed", "flamingo_1b")}


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
