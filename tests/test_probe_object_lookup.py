"""The object-lookup probe builds the image tokens it claims and trains the LM on them."""

from argparse import Namespace

import numpy as np
import pytest
import torch

from data.sort_of_clevr import COLORS, SHAPES, sample_scene
from scripts.probe_object_lookup import FEATURES, run, scene_tokens, table, world_tokenizer


def test_scene_tokens_hold_each_object_once_and_empty_pads():
    scene = sample_scene(np.random.default_rng(3))
    rows = scene_tokens(scene, pads=19, rng=np.random.default_rng(0))
    assert rows.shape == (25, FEATURES)
    objects = rows[rows.abs().sum(-1) > 0]
    assert len(objects) == 6 and (rows.abs().sum(-1) == 0).sum() == 19
    by_color = {list(COLORS)[int(r[:6].argmax())]: r for r in objects}
    assert sorted(by_color) == sorted(COLORS)
    for o in scene.objects:
        r = by_color[o.color]
        assert r[:6].sum() == 1 and SHAPES[int(r[6:8].argmax())] == o.shape and r[6:8].sum() == 1
        assert r[-2:].tolist() == pytest.approx([o.cx / 37.5 - 1, o.cy / 37.5 - 1])


def test_probe_trains_and_reports_a_row_per_interval(tmp_path):
    world_tokenizer(tmp_path / "tok")
    args = Namespace(steps=4, batch=6, lr=1e-3, every=2, seed=0, captions="none")
    rows = run(3, args, str(tmp_path / "tok"))
    assert [r["step"] for r in rows] == [2, 4] and all(r["tokens"] == 9 for r in rows)
    for r in rows:
        assert 0 <= r["non_relational"] <= 1 and torch.isfinite(torch.tensor(r["loss"]))
    text = table(rows)
    assert text.count("\n") == 3 and "| 9 | 3 | none | 4 |" in text


def test_saved_probe_lm_loads_into_a_language_model(tmp_path):
    from models.language import LanguageModel
    from scripts.probe_object_lookup import LM_CONFIG

    world_tokenizer(tmp_path / "tok")
    run(0, Namespace(steps=2, batch=4, lr=1e-2, every=2, seed=0, captions="none"), str(tmp_path / "tok"), save=str(tmp_path / "lm.ckpt"))
    loaded = LanguageModel(config=dict(LM_CONFIG), tokenizer=str(tmp_path / "tok"), weights_from=str(tmp_path / "lm.ckpt"))
    saved = torch.load(tmp_path / "lm.ckpt", weights_only=False)["state_dict"]
    for name, p in loaded.state_dict().items():
        assert torch.equal(p, saved[f"model.language.{name}"])


def test_last_answer_masks_only_the_final_answer():
    from data.tokenize import IGNORE_INDEX as X
    from scripts.probe_object_lookup import last_answer

    targets = torch.tensor([[X, 5, 6, X, X, 7, 8, X],   # caption, then answer 7 8, then padding
                            [X, X, X, X, 9, 4, 3, 2]])  # one answer running to the end
    assert last_answer(targets).int().tolist() == [[0, 0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 1, 1, 1]]


def test_conversation_kinds():
    from scripts.probe_object_lookup import conversation

    scene = sample_scene(np.random.default_rng(1))
    q = conversation(scene, "red", "shape", "question")
    c = conversation(scene, "red", "shape", "caption")
    both = conversation(scene, "red", "shape", "context")
    assert q[0]["value"] == "<image>\nWhat is the shape of the red object?" and q[1]["value"] == scene.get("red").shape
    assert c[0]["value"] == "<image>\nDescribe the image." and c[1]["value"].startswith(f"red {scene.get('red').shape} ")
    assert both == c + [{**q[0], "value": "What is the shape of the red object?"}, q[1]]


@pytest.mark.parametrize("captions", ["records", "context"])
def test_probe_with_captions_scores_questions_only(tmp_path, captions):
    world_tokenizer(tmp_path / "tok")
    rows = run(0, Namespace(steps=2, batch=8, lr=1e-3, every=2, seed=0, captions=captions), str(tmp_path / "tok"))
    assert rows[0]["captions"] == captions and 0 <= rows[0]["non_relational"] <= 1
    with pytest.raises(ValueError, match="captions"):
        run(0, Namespace(steps=1, batch=2, lr=1e-3, every=1, seed=0, captions="both"), str(tmp_path / "tok"))
