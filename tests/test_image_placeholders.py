"""`<image>` widened on the host: the collators' placeholders, and a LLaVA step that never syncs.

The forward is checked against a plain per-sample construction (text embeddings and image
features concatenated in reading order, one sample per LM call, no padding): the old splice
path's definition of what the model sees.
"""

import pytest
import torch
import torch.nn.functional as F

from data.collate import Collator
from data.conversation_dataset import ConversationDataset
from data.image_placeholders import ImagePlaceholders
from data.packing import PackingCollator
from tests.tiny import module_config, tiny_world
from train.checkpoint import build_module
from train.host_syncs import HostSyncCounter

IMG = 7
MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "labels", "segment_ids", "image_positions")


def test_widen_repeats_each_image_and_masks_its_labels():
    p = ImagePlaceholders(token_id=IMG, width=3)
    ids, labels = p.widen(torch.tensor([1, IMG, 5, IMG, 6]), torch.tensor([-100, -100, 5, 8, 6]))
    assert ids.tolist() == [1, IMG, IMG, IMG, 5, IMG, IMG, IMG, 6]
    assert labels.tolist() == [-100, -100, -100, -100, 5, -100, -100, -100, 6]
    assert p.widen(torch.tensor([1, 2]))[0].tolist() == [1, 2] and p.widen(torch.tensor([1, 2]))[1] is None


def test_collators_widen_and_find_positions_on_the_host():
    p = ImagePlaceholders(token_id=IMG, width=2)
    items = [{"input_ids": torch.tensor([1, IMG, 5]), "labels": torch.tensor([-100, -100, 5]),
              "pixel_values": torch.zeros(1, 3, 4, 4)},
             {"input_ids": torch.tensor([1, 6]), "labels": torch.tensor([-100, 6]), "pixel_values": None}]
    right = Collator(0, placeholders=p)(items)
    assert right["input_ids"].tolist() == [[1, IMG, IMG, 5], [1, 6, 0, 0]]
    assert right["labels"].tolist() == [[-100, -100, -100, 5], [-100, 6, -100, -100]]
    assert right["image_positions"].tolist() == [1, 2]  # flat positions in the (2, 4) batch
    left = Collator(0, left_pad=True, placeholders=p)(items)
    assert left["input_ids"].tolist() == [[1, IMG, IMG, 5], [0, 0, 1, 6]]
    assert left["image_positions"].tolist() == [1, 2]
    packed = PackingCollator(0, p, max_length=6)(items)
    assert packed["input_ids"].tolist() == [[1, IMG, IMG, 5, 1, 6]]  # the widened lengths 4 + 2 fit one row
    assert packed["segment_ids"].tolist() == [[0, 0, 0, 0, 1, 1]]
    assert packed["image_positions"].tolist() == [1, 2]
    assert PackingCollator(0, p, max_length=5)(items)["input_ids"].shape == (2, 4)  # 4 + 2 > 5: two rows


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("world"))


@pytest.fixture
def model(world):
    torch.manual_seed(0)
    return build_module(module_config(world, stage="full")).model


def _samples(model, world, n=4):
    from data.templates import ChatTemplate

    ds = ConversationDataset(world / "train.json", model.tokenizer, ChatTemplate(), model.vision.transform(),
                             max_turns=2, num_image_tokens=model.num_image_tokens)
    return [ds[i] for i in range(n)]


def _batches(model, world):
    samples = _samples(model, world)
    placeholders = model.image_placeholders
    return samples, {"unpacked": Collator(model.tokenizer.pad_token_id, placeholders=placeholders)(samples),
                     "packed": PackingCollator(model.tokenizer.pad_token_id, placeholders, max_length=4096)(samples)}


def _inputs(batch):
    return {k: batch[k] for k in MODEL_KEYS if k in batch}


@pytest.mark.parametrize("layout", ["unpacked", "packed"])
def test_training_forward_and_backward_never_sync(model, world, layout):
    model.train()
    _, batches = _batches(model, world)
    batch = batches[layout]
    assert layout == "unpacked" or batch["input_ids"].shape[0] == 1  # the 4 samples share one row
    with HostSyncCounter() as syncs:
        _, loss = model(**_inputs(batch))
        loss.backward()
    assert syncs.total == 0, dict(syncs.by_op)
    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.connector.parameters())


def _per_sample_reference(model, samples):
    """(logits per sample, mean next-token loss): each sample alone, images' features placed by hand."""
    image_id = model.language.image_token_id
    features = model.encode_images(torch.cat([s["pixel_values"] for s in samples]))
    logits, nll, targets, k = [], 0.0, 0, 0
    for s in samples:
        rows, labels = [], []
        for tok, lab in zip(s["input_ids"].tolist(), s["labels"].tolist()):
            if tok == image_id:
                rows += list(features[k]); labels += [-100] * features.shape[1]; k += 1
            else:
                rows.append(model.language.embed(torch.tensor([tok]))[0]); labels.append(lab)
        out = model.language(torch.stack(rows)[None])[0]
        target = torch.tensor(labels[1:])
        logits.append(out)
        nll = nll + F.cross_entropy(out[:-1], target, ignore_index=-100, reduction="sum")
        targets += int((target != -100).sum())
    return logits, nll / targets


def test_forward_equals_per_sample_construction(model, world):
    model.eval()  # BatchNorm on running statistics: encoding images together or apart is the same function
    samples, batches = _batches(model, world)
    with torch.no_grad():
        ref_logits, ref_loss = _per_sample_reference(model, samples)
        logits, loss = model(**_inputs(batches["unpacked"]))
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        for i, ref in enumerate(ref_logits):
            torch.testing.assert_close(logits[i, :len(ref)], ref, rtol=1e-5, atol=1e-5)
        packed = batches["packed"]
        logits, loss = model(**_inputs(packed))
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        placed = 0
        for i, ref in enumerate(ref_logits):  # each sample's row and segment: where its widened ids are
            widened = model.image_placeholders.widen(samples[i]["input_ids"])[0]
            for r in range(packed["input_ids"].shape[0]):
                for seg in range(int(packed["segment_ids"][r].max()) + 1):
                    at = packed["segment_ids"][r] == seg
                    if torch.equal(packed["input_ids"][r][at], widened):
                        torch.testing.assert_close(logits[r][at], ref, rtol=1e-5, atol=1e-5)
                        placed += 1
        assert placed == len(samples)


def test_placeholder_width_other_than_the_models_is_a_clear_error(model, world):
    samples = _samples(model, world, n=2)
    n = model.num_image_tokens
    wrong = ImagePlaceholders(model.language.image_token_id, n - 1)
    batch = Collator(model.tokenizer.pad_token_id, placeholders=wrong)(samples)
    with pytest.raises(ValueError, match=f"{2 * (n - 1)} <image> placeholders for 2 images of {n} tokens"):
        model(**_inputs(batch))
    unwidened = Collator(model.tokenizer.pad_token_id)(samples)  # no positions given: the model finds them
    with pytest.raises(ValueError, match=f"2 <image> placeholders for 2 images of {n} tokens"):
        model(**_inputs(unwidened))


def test_compiled_training_step_equals_eager(model, world):
    """The whole forward + loss as one graph (`fullgraph`: any graph break fails), same loss and
    gradients as eager, packed and unpacked. Slower than most (~20 s on 2 CPU cores): tracing the
    vision tower and the LM dominates, aot_eager keeps the kernels eager."""
    model.eval()
    _, batches = _batches(model, world)

    def step(**inputs):
        return model(**inputs)[1]

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for layout, batch in batches.items():
        grads = []
        for fn in (step, compiled):
            model.zero_grad()
            loss = fn(**_inputs(batch))
            loss.backward()
            grads.append((loss.detach(),
                          {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
        (eager_loss, eager), (compiled_loss, traced) = grads
        torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6, msg=layout)
        assert eager.keys() == traced.keys() and len(eager) > 10
        for name in eager:
            torch.testing.assert_close(traced[name], eager[name], rtol=1e-4, atol=1e-6, msg=f"{layout} {name}")
