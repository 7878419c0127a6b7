"""LLaVA behaviour: learning, freezing, generation with the KV cache, save/load."""

import copy

import pytest
import torch

from data.collate import Collator
from data.conversation_dataset import ConversationDataset, QADataset
from models.language import LanguageModel
from tests.tiny import LM_CONFIG, module_config, tiny_world
from train.checkpoint import build_module


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("world"))


@pytest.fixture
def module(world):
    torch.manual_seed(0)
    return build_module(module_config(world))


def _train_batch(module, world, n=4):
    m = module.model
    ds = ConversationDataset(world / "train.json", m.tokenizer, module.template, m.vision.transform(), max_turns=2)
    return Collator(m.tokenizer.pad_token_id, placeholders=m.image_placeholders)([ds[i] for i in range(n)])


def _prompt_batch(module, world, idx):
    m = module.model
    ds = QADataset(world / "val_qa.jsonl", m.tokenizer, module.template, m.vision.transform())
    return Collator(m.tokenizer.pad_token_id, left_pad=True, placeholders=m.image_placeholders)([ds[i] for i in idx])


def test_loss_falls_when_training(module, world):
    batch = _train_batch(module, world)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(25):
        _, loss = module.model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"])
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("stage,trainable", [("align", {"connector"}), ("finetune", {"connector", "language"}),
                                             ("full", {"vision", "connector", "language"})])
def test_stage_declares_what_trains(world, stage, trainable):
    module = build_module(module_config(world, stage=stage))
    table = {name: (total, tr) for name, total, tr in module.parameter_table()}
    for name, (total, tr) in table.items():
        assert total > 0 and tr == (total if name in trainable else 0)
    module.train()
    assert module.model.vision.training == ("vision" in trainable)
    assert module.model.language.training == ("language" in trainable)


def test_frozen_vision_gets_no_graph(world):
    module = build_module(module_config(world, stage="align"))
    batch = _train_batch(module, world)
    _, loss = module.model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"])
    loss.backward()
    assert all(p.grad is None for p in module.model.vision.parameters())
    assert all(p.grad is None for p in module.model.language.parameters())
    assert all(p.grad is not None for p in module.model.connector.parameters())


def test_image_changes_the_logits(module, world):
    batch = _train_batch(module, world, n=2)
    logits, _ = module.model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    swapped, _ = module.model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"].flip(0))
    n_img = module.model.num_image_tokens  # one image per row, widened to its placeholders
    assert ((batch["input_ids"] == module.model.language.image_token_id).sum(1) == n_img).all()
    assert logits.shape[1] == batch["input_ids"].shape[1]
    assert not torch.allclose(logits[0, -1], swapped[0, -1])


def _greedy_without_cache(model, ids, mask, pixels, steps):
    out = []
    for _ in range(steps):
        logits, _ = model(ids, mask, pixels)
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out.append(nxt)
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    return torch.cat(out, 1)


def test_generate_with_kv_cache_matches_full_recompute(module, world):
    model = module.model.eval()
    batch = _prompt_batch(module, world, [0])
    cached = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], max_new_tokens=5,
                            eos_token_id=None, min_new_tokens=5)
    plain = _greedy_without_cache(model, batch["input_ids"], batch["attention_mask"], batch["pixel_values"], 5)
    assert torch.equal(cached, plain)


def test_batched_left_padded_generation_equals_one_by_one(module, world):
    model = module.model.eval()
    idx = [0, 1, 2, 5]  # questions of different lengths -> left padding
    batch = _prompt_batch(module, world, idx)
    assert (batch["attention_mask"] == 0).any()
    together = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], max_new_tokens=4,
                              eos_token_id=None, min_new_tokens=4)
    for row, i in enumerate(idx):
        one = _prompt_batch(module, world, [i])
        alone = model.generate(one["input_ids"], one["attention_mask"], one["pixel_values"], max_new_tokens=4,
                               eos_token_id=None, min_new_tokens=4)
        assert torch.equal(together[row], alone[0]), (row, together[row], alone[0])


def test_language_model_save_and_load_pretrained(world, tmp_path):
    lm = LanguageModel(config=LM_CONFIG, tokenizer=str(world / "tokenizer"))
    lm.save_pretrained(tmp_path / "lm")
    back = LanguageModel(name_or_path=str(tmp_path / "lm"))
    ids = torch.tensor([[1, 5, 9, lm.image_token_id, 7]])
    assert back.image_token_id == lm.image_token_id
    torch.testing.assert_close(back(back.embed(ids)), lm(lm.embed(ids)), rtol=0, atol=0)


def test_language_model_missing_path_is_named(world):
    with pytest.raises(FileNotFoundError, match="no/such/lm"):
        LanguageModel(name_or_path="no/such/lm")


def test_state_dict_round_trip_gives_identical_logits(module, world):
    batch = _train_batch(module, world, n=2)
    clone = build_module(copy.deepcopy(module_config(world)))
    clone.load_state_dict(module.state_dict())
    a, _ = module.model.eval()(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    b, _ = clone.model.eval()(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_checkpoint_save_and_load_gives_identical_logits(module, world, tmp_path):
    """Through the path `chimera generate` uses: config inside the checkpoint, rebuilt by the typed parser."""
    from train.checkpoint import load_module

    batch = _train_batch(module, world, n=2)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-2)  # move away from the seeded init first
    _, loss = module.model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"])
    loss.backward(); opt.step()
    module.chimera_config = module_config(world)
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "tiny.ckpt")
    torch.manual_seed(123)  # a different init for the rebuilt model: only the loaded weights can match
    loaded = load_module(tmp_path / "tiny.ckpt")
    a, _ = module.model.eval()(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    b, _ = loaded.model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert loaded.stage == module.stage and not loaded.training
