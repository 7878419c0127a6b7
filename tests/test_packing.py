"""Sequence packing and the chunked loss change how a step is computed, never what it computes."""

import pytest
import torch

from data.collate import Collator
from data.conversation_dataset import ConversationDataset
from data.packing import PackingCollator, first_fit_decreasing
from models.losses import chunked_next_token_loss, next_token_loss
from models.sample_attention import segment_positions
from tests.tiny import module_config, tiny_world
from train.checkpoint import build_module


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("world"))


@pytest.fixture
def model(world):
    torch.manual_seed(0)
    model = build_module(module_config(world, stage="full")).model
    return model.eval()  # no dropout, BatchNorm on running statistics: both batchings see the same function


def _samples(model, world, n=8):
    from data.templates import ChatTemplate

    ds = ConversationDataset(world / "train.json", model.tokenizer, ChatTemplate(), model.vision.transform(),
                             max_turns=2)
    return [ds[i] for i in range(n)]


def _grads(model, batch):
    model.zero_grad()
    kwargs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "labels")}
    kwargs.update({k: batch[k] for k in ("segment_ids", "image_positions") if k in batch})
    _, loss = model(**kwargs)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_first_fit_decreasing_respects_capacity():
    lengths = [7, 2, 5, 3, 9, 1, 12]
    bins = first_fit_decreasing(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins if len(b) > 1)
    assert bins == [[6], [4, 5], [0, 3], [2, 1]]  # 12 alone (longer than a row) | 9+1 | 7+3 | 5+2


def test_segment_positions_restart_per_sample():
    seg = torch.tensor([[0, 0, 0, 1, 1, 2, -1, -1], [0, 0, 0, 0, 0, 0, 0, 0]])
    assert segment_positions(seg).tolist() == [[0, 1, 2, 0, 1, 0, 0, 1], list(range(8))]


def test_packed_loss_and_gradients_equal_padded(model, world):
    samples = _samples(model, world)
    placeholders = model.image_placeholders
    padded = Collator(model.tokenizer.pad_token_id, placeholders=placeholders)(samples)
    longest = max(len(placeholders.widen(s["input_ids"])[0]) for s in samples)
    packed = PackingCollator(model.tokenizer.pad_token_id, placeholders, max_length=3 * longest)(samples)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]  # rows really hold several samples
    assert packed["pixel_values"].shape == padded["pixel_values"].shape
    # same tokens: every sample's id sequence appears once, in one row, inside its own segment
    for s in samples:
        hits = [(r, k) for r in range(packed["input_ids"].shape[0]) for k in packed["segment_ids"][r].unique().tolist()
                if k >= 0 and torch.equal(packed["input_ids"][r][packed["segment_ids"][r] == k],
                                          placeholders.widen(s["input_ids"])[0])]
        assert hits
    loss_pad, grads_pad = _grads(model, padded)
    loss_pack, grads_pack = _grads(model, packed)
    torch.testing.assert_close(loss_pack, loss_pad, rtol=1e-5, atol=1e-6)
    assert grads_pad.keys() == grads_pack.keys() and grads_pad
    for name in grads_pad:
        torch.testing.assert_close(grads_pack[name], grads_pad[name], rtol=1e-4, atol=1e-6, msg=name)


def test_packing_without_segments_would_leak(model, world):
    """The control: the same packed rows with ordinary causal attention give a different loss."""
    samples = _samples(model, world)
    packer = PackingCollator(model.tokenizer.pad_token_id, model.image_placeholders, max_length=10_000)
    packed = packer(samples)
    with torch.no_grad():
        _, leaky = model(packed["input_ids"], packed["attention_mask"], packed["pixel_values"], packed["labels"])
        _, kept = model(packed["input_ids"], packed["attention_mask"], packed["pixel_values"], packed["labels"],
                        segment_ids=packed["segment_ids"])
        padded = Collator(model.tokenizer.pad_token_id, placeholders=model.image_placeholders)(samples)
        _, ref = model(padded["input_ids"], padded["attention_mask"], padded["pixel_values"], padded["labels"])
    torch.testing.assert_close(kept, ref, rtol=1e-5, atol=1e-6)
    assert abs(leaky.item() - ref.item()) > 1e-4


def test_chunked_loss_equals_plain_loss_and_gradients():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(3, 11, 16, requires_grad=True)
    labels = torch.randint(0, 50, (3, 11))
    labels[0, :4] = -100
    labels[2, 7:] = -100
    plain = next_token_loss(head(hidden), labels)
    g_plain = torch.autograd.grad(plain, [hidden, head.weight])
    for chunk in (1, 4, 7, 1000):
        chunked = chunked_next_token_loss(hidden, head, labels, chunk_size=chunk)
        g_chunked = torch.autograd.grad(chunked, [hidden, head.weight])
        torch.testing.assert_close(chunked, plain)
        for a, b in zip(g_chunked, g_plain):
            torch.testing.assert_close(a, b)


def test_llava_chunked_loss_equals_plain(model, world):
    batch = Collator(model.tokenizer.pad_token_id, placeholders=model.image_placeholders)(_samples(model, world, n=4))
    loss_plain, grads_plain = _grads(model, batch)
    model.loss_chunk_size = 5
    loss_chunk, grads_chunk = _grads(model, batch)
    torch.testing.assert_close(loss_chunk, loss_plain, rtol=1e-5, atol=1e-6)
    for name in grads_plain:
        torch.testing.assert_close(grads_chunk[name], grads_plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_chunked_loss_refuses_rescaled_logits(model):
    model.language.model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        model.language.output_head


def test_fit_with_packing_logs_the_same_losses_and_throughput(world, tmp_path):
    """`data.pack_length` end to end through `chimera fit`: same first losses as padded batches."""
    import csv

    import yaml

    from tests.tiny import experiment_config
    from train.cli import main

    def run(name, pack_length):
        cfg = experiment_config(world, tmp_path / name, max_steps=3)
        cfg["data"]["init_args"]["pack_length"] = pack_length
        cfg["trainer"]["callbacks"] = [{"class_path": "train.throughput.Throughput",
                                        "init_args": {"log_every_n_steps": 1, "warmup_steps": 0}}]
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        main(["fit", "--config", str(path)])
        rows = list(csv.DictReader(open(tmp_path / name / "tiny" / "version_0" / "metrics.csv")))
        losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
        rates = [float(r["throughput/tokens_per_s"]) for r in rows if r.get("throughput/tokens_per_s")]
        return losses, rates

    padded, _ = run("padded", None)
    packed, rates = run("packed", 4096)
    assert len(packed) == len(padded) == 3
    torch.testing.assert_close(torch.tensor(packed), torch.tensor(padded), rtol=1e-4, atol=1e-5)
    assert rates and all(r > 0 for r in rates)


def test_packing_refuses_flamingo(world):
    from models.flamingo import Flamingo
    from train.data_module import ConversationDataModule

    dm = ConversationDataModule(str(world / "train.json"), pack_length=256)
    with pytest.raises(ValueError, match="packing needs a LLaVA-style model"):
        dm.build_packer(Flamingo.__new__(Flamingo))  # refused before anything of the model is read
