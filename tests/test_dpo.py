"""DPO: the loss by hand, preference pairs that really hallucinate, and a tiny stage whose loss
falls and whose chosen-minus-rejected margin grows."""

import csv
import json
import math
import re

import numpy as np
import pytest
import torch
import yaml

from data.preferences import hallucinated_scene, preference_pairs
from data.shapes import World, caption, sample_scene, write_shapes
from tests.tiny import VISION
from train.cli import main
from train.dpo_module import dpo_loss


def test_dpo_loss_by_hand():
    loss, chosen, rejected = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]),
                                      torch.tensor([-2.0]), beta=0.5)
    assert chosen.item() == 0.5 and rejected.item() == -0.5
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1.0)))
    # policy == reference: log 2, whatever the log-probabilities
    loss, _, _ = dpo_loss(torch.tensor([-5.0, -1.0]), torch.tensor([-2.0, -7.0]), torch.tensor([-5.0, -1.0]),
                          torch.tensor([-2.0, -7.0]), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))


def test_rejected_responses_hallucinate():
    world, rng = World(), np.random.default_rng(0)
    for _ in range(200):
        scene = sample_scene(world, rng)
        fake = hallucinated_scene(scene, world, rng)
        changed = [o for o in fake.objects if o not in scene.objects]
        assert len(changed) == 1 and changed[0].name not in scene.names  # an object the image lacks
        pairs = preference_pairs(scene, world, rng)
        assert pairs[0]["chosen"] == caption(scene) and pairs[0]["rejected"] != pairs[0]["chosen"]
        for p in pairs[1:]:
            name = re.fullmatch(r"Is there an? (.+) in the image\?", p["prompt"]).group(1)
            assert p["chosen"] == ("yes" if name in scene.names else "no") and p["rejected"] != p["chosen"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_shapes(root, train_images=8, val_images=3, seed=0, max_objects=2)
    return root


def test_preference_file_and_label_masks(shapes):
    from data.preference_dataset import PreferenceCollator, PreferenceDataset
    from data.templates import ChatTemplate
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(shapes / "tokenizer")
    ds = PreferenceDataset(shapes / "preference_train.jsonl", tok, ChatTemplate(), lambda im: torch.zeros(3, 4, 4))
    assert len(ds) == sum(1 for _ in open(shapes / "preference_train.jsonl"))
    batch = PreferenceCollator(tok.pad_token_id)([ds[0], ds[1]])
    assert batch["input_ids"].shape[0] == 4 and batch["pixel_values"].shape[0] == 4
    rec = ds.records[0]
    for row, text in ((0, rec["chosen"]), (2, rec["rejected"])):
        targets = [i for i, lab in zip(batch["input_ids"][row].tolist(), batch["labels"][row].tolist()) if lab != -100]
        # the response's ids as the whole text has them: with the space after "ASSISTANT:"
        assert targets == tok(" " + text + "</s>", add_special_tokens=False)["input_ids"]


def test_dpo_stage_lowers_loss_and_grows_margin(shapes, tmp_path):
    lm = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 256}
    vision = json.loads(json.dumps(VISION))
    vision["init_args"]["image_size"] = 72
    cfg = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 60, "log_every_n_steps": 1,
                    "num_sanity_val_steps": 0, "limit_val_batches": 0, "enable_progress_bar": False,
                    "enable_model_summary": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path), "name": "dpo"}}},
        "model": {"class_path": "train.dpo_module.DPOModule",
                  "init_args": {"stage": "finetune", "lr": 1e-2, "warmup_ratio": 0.0, "beta": 1.0,
                                "model": {"class_path": "models.llava.LLaVA", "init_args": {
                                    "vision": vision,
                                    "language": {"class_path": "models.language.LanguageModel",
                                                 "init_args": {"tokenizer": str(shapes / "tokenizer"), "config": lm}},
                                    "connector": {"class_path": "models.connectors.MLPConnector"}}}}},
        "data": {"class_path": "train.data_module.PreferenceDataModule",
                 "init_args": {"train_json": str(shapes / "preference_train.jsonl"), "batch_size": 8,
                               "num_workers": 0}},
    }
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(path)])
    rows = [r for r in csv.DictReader(open(tmp_path / "dpo" / "version_0" / "metrics.csv")) if r.get("train/loss")]
    loss = [float(r["train/loss"]) for r in rows]
    margin = [float(r["train/reward_margin"]) for r in rows]
    assert loss[0] == pytest.approx(math.log(2), abs=1e-4)  # policy starts equal to the reference
    assert np.mean(loss[-10:]) < 0.75 * math.log(2)
    assert margin[0] == pytest.approx(0.0, abs=1e-4) and np.mean(margin[-10:]) > 1.0


def test_reference_is_a_frozen_eval_copy_outside_the_trained_module(shapes):
    from tests.tiny import module_config
    from train.checkpoint import build_module
    from train.dpo_module import Reference

    cfg = module_config(shapes, stage="finetune")
    cfg["class_path"] = "train.dpo_module.DPOModule"
    module = build_module(cfg).train()
    ref = module.reference
    assert isinstance(ref, Reference) and not any(m.training for m in ref.modules())
    assert not any(p.requires_grad for p in ref.parameters())
    ref_params = {id(p) for p in ref.parameters()}
    assert ref_params and not ref_params & {id(p) for p in module.parameters()}  # so in no optimizer group
    assert not any("reference" in k for k in module.state_dict())
    policy = dict(module.model.named_parameters())
    assert all(torch.equal(p, policy[n]) and p.data_ptr() != policy[n].data_ptr()
               for n, p in ref.model.named_parameters())
    ids = torch.tensor([[5, 6, 7, 8]])
    pixels = torch.randn(0, 3, module.model.vision.image_size, module.model.vision.image_size)
    with torch.no_grad():
        torch.testing.assert_close(ref(ids, torch.ones_like(ids), pixels, ids), module.model.sequence_logprobs(
            ids, torch.ones_like(ids), pixels, ids))
