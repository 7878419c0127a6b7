"""Flamingo behaviour: an unchanged LM at zero gates, which image each token sees, batching,
generation with the KV cache and beams, special-token rows, state_dict round trip."""

import copy

import pytest
import torch

from models.flamingo import Flamingo, FlamingoLayer
from models.language import LanguageModel
from models.resampler import PerceiverResampler
from models.vision import TimmVision
from tests.tiny import LM_CONFIG, VISION, tiny_world

H = VISION["init_args"]["image_size"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("world"))


def language(world, layers=2):
    return LanguageModel(config={**LM_CONFIG, "num_hidden_layers": layers}, tokenizer=str(world / "tokenizer"))


def build(world, lm=None, open_gates=True, seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"xattn_heads": 2, "xattn_dim_head": 8, "xattn_ff_mult": 2,
          "resampler": lambda i, o: PerceiverResampler(i, o, num_latents=4, depth=1, heads=2, dim_head=8), **kw}
    model = Flamingo(TimmVision(**VISION["init_args"]), lm or language(world), **kw).eval()
    if open_gates:
        for block in model.cross_attention:
            block.attn_gate.data.fill_(1.0)
            block.ff_gate.data.fill_(1.0)
    return model


@pytest.fixture(scope="module")
def built(world):
    return build(world)


def fresh(built, immediate=True):
    """A deep copy: cheaper than building, and the wrappers must follow their blocks into the copy."""
    model = copy.deepcopy(built)
    model.only_attend_immediate_media = immediate
    return model


def text_ids(model, n):
    special = set(model.tokenizer.all_special_ids) | {model.image_token_id, model.end_of_chunk_token_id}
    return [i for i in range(len(model.tokenizer)) if i not in special][:n]


def images(n, seed=1):
    return torch.randn(n, 3, H, H, generator=torch.Generator().manual_seed(seed))


def sequence(model):
    """a b <image> c d <image> e f: image 0 conditions positions 2-4, image 1 positions 5-7."""
    a, b, c, d, e, f = text_ids(model, 6)
    img = model.image_token_id
    return torch.tensor([[a, b, img, c, d, img, e, f]])


def test_zero_gates_leave_the_language_model_unchanged(world):
    lm = language(world, layers=4)
    lm.add_special_tokens(["<|endofchunk|>"])  # the resize Flamingo does; a no-op inside it then
    model = build(world, lm, open_gates=False, cross_attn_every_n_layers=2)
    ids = sequence(model)
    model.unwrap_language()
    base = lm.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    model = build(world, lm, open_gates=False, cross_attn_every_n_layers=2)
    assert [isinstance(layer, FlamingoLayer) for layer in lm.model.model.layers] == [False, True, False, True]
    assert len(model.cross_attention) == 2
    logits, _ = model(ids, torch.ones_like(ids), images(2))
    assert torch.equal(logits, base)
    assert torch.equal(lm.model(input_ids=ids).logits, base)  # outside a Flamingo call: the plain LM


def _logits(model, ids, pixels):
    return model(ids, torch.ones_like(ids), pixels)[0][0]


def test_each_token_sees_only_its_preceding_image(built):
    model = fresh(built)
    ids, pix = sequence(model), images(2)
    ref = _logits(model, ids, pix)
    new_first = _logits(model, ids, torch.stack([images(1, seed=7)[0], pix[1]]))
    new_second = _logits(model, ids, torch.stack([pix[0], images(1, seed=7)[0]]))
    assert torch.equal(new_first[:2], ref[:2]) and torch.equal(new_second[:2], ref[:2])  # before any image
    assert torch.equal(new_second[:5], ref[:5])  # a later image changes nothing before it
    assert not torch.allclose(new_first[2:5], ref[2:5], atol=1e-4)
    assert not torch.allclose(new_second[5:], ref[5:], atol=1e-4)


@pytest.mark.parametrize("immediate", [True, False])
def test_earlier_images_reach_cross_attention_only_when_not_immediate(built, immediate):
    """Read the first block (before any self-attention), where image 0's only route to e, f is cross-attention."""
    model = fresh(built, immediate)
    ids, pix = sequence(model), images(2)
    seen = []
    hook = model.cross_attention[0].register_forward_hook(lambda m, a, out: seen.append(out[0]))
    _logits(model, ids, pix)
    _logits(model, ids, torch.stack([images(1, seed=7)[0], pix[1]]))
    hook.remove()
    assert torch.equal(seen[0][:2], seen[1][:2])
    assert not torch.allclose(seen[0][2:5], seen[1][2:5], atol=1e-4)
    assert torch.equal(seen[0][5:], seen[1][5:]) == immediate


def _padded_batch(model):
    """Rows with 2, 0 and 1 images and different lengths; pixels in `<image>` order."""
    t, img = text_ids(model, 8), model.image_token_id
    rows = [[t[0], img, t[1], t[2], img, t[3]], [t[4], t[5], t[6]], [t[7], t[0], img, t[1]]]
    pix = images(3)
    per_row = [pix[0:2], pix[2:2], pix[2:3]]
    return rows, per_row, pix


def test_results_do_not_depend_on_batch_composition(built):
    model = fresh(built)
    rows, per_row, pix = _padded_batch(model)
    L = max(map(len, rows))
    pad = model.tokenizer.pad_token_id
    ids = torch.tensor([r + [pad] * (L - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (L - len(r)) for r in rows])
    together, _ = model(ids, mask, pix)
    for i, (r, p) in enumerate(zip(rows, per_row)):
        alone, _ = model(torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long), p)
        torch.testing.assert_close(together[i, :len(r)], alone[0], rtol=0, atol=1e-5)


def test_resampler_time_embeddings_follow_each_rows_images(world):
    """Image k of a row is resampled with media_time_embs[k], as open_flamingo resamples a row's images
    together, so every used time embedding trains (not only the first)."""
    model = build(world, resampler=lambda i, o: PerceiverResampler(i, o, num_latents=4, depth=1, heads=2, dim_head=8,
                                                                   max_num_media=3))
    img = model.image_token_id
    a, b, c = text_ids(model, 3)
    ids = torch.tensor([[img, a, img, b, img, c], [a, img, b, c, c, c]])
    pixels = images(4)
    with torch.no_grad():
        media, counts = model.media_per_row(ids, pixels)
        feats = model.vision(pixels)
        for row, slot, image in [(0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 0, 3)]:
            expected = model.connector(feats[image:image + 1], media_index=torch.tensor([slot]))[0]
            torch.testing.assert_close(media[row, slot], expected, rtol=0, atol=1e-6)
        assert not torch.allclose(media[0, 1], model.connector(feats[1:2])[0], atol=1e-3)
    assert counts.tolist() == [3, 1] and not media[1, 1:].any()
    _, loss = model(ids, torch.ones_like(ids), pixels, labels=ids)
    loss.backward()
    assert (model.connector.media_time_embs.grad.flatten(1).abs().sum(1) > 0).all()


def test_image_count_mismatch_and_bad_layer_path_are_clear_errors(world, built):
    model = fresh(built)
    ids = sequence(model)
    with pytest.raises(ValueError, match="2 <image> tokens but 1 images"):
        model(ids, torch.ones_like(ids), images(1))
    with pytest.raises(ValueError, match="decoder_layers_path 'model.blocks'"):
        build(world, decoder_layers_path="model.blocks")


def test_labels_on_image_tokens_are_ignored(built):
    model = fresh(built)
    ids, pix = sequence(model), images(2)
    masked = ids.masked_fill(ids == model.image_token_id, -100)
    _, a = model(ids, torch.ones_like(ids), pix, labels=ids)
    _, b = model(ids, torch.ones_like(ids), pix, labels=masked)
    assert torch.equal(a, b)


def _left_padded(model, rows):
    L = max(map(len, rows))
    pad = model.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (L - len(r)) + r for r in rows])
    return ids, torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])


def _greedy_without_cache(model, ids, pixels, steps):
    out = []
    for _ in range(steps):
        nxt = _logits(model, ids, pixels)[-1].argmax()[None, None]
        out.append(nxt)
        ids = torch.cat([ids, nxt], 1)
    return torch.cat(out, 1)


@pytest.mark.parametrize("immediate", [True, False])
def test_generate_with_kv_cache_matches_full_recompute(built, immediate):
    model = fresh(built, immediate)
    ids, pix = sequence(model), images(2)
    cached = model.generate(ids, torch.ones_like(ids), pix, max_new_tokens=6, eos_token_id=None, min_new_tokens=6)
    assert torch.equal(cached, _greedy_without_cache(model, ids, pix, 6))


@pytest.mark.parametrize("beams", [1, 2])
def test_batched_left_padded_generation_equals_one_by_one(built, beams):
    model = fresh(built)
    rows, per_row, pix = _padded_batch(model)
    ids, mask = _left_padded(model, rows)
    kw = {"max_new_tokens": 4, "eos_token_id": None, "min_new_tokens": 4, "num_beams": beams}
    together = model.generate(ids, mask, pix, **kw)
    assert together.shape == (3, 4)
    for i, (r, p) in enumerate(zip(rows, per_row)):
        alone = model.generate(torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long), p, **kw)
        assert torch.equal(together[i], alone[0]), (i, together[i], alone[0])


def test_only_special_token_rows_train_when_the_language_model_is_frozen(built):
    model = fresh(built).train()
    for part in (model.vision, model.connector, model.language, model.cross_attention):
        part.requires_grad_(False)
    model.train_special_token_rows(True)
    ids = torch.cat([sequence(model), torch.tensor([[model.end_of_chunk_token_id, text_ids(model, 1)[0]]])], 1)
    vocab = torch.arange(len(model.tokenizer))[None]
    before = {k: v.clone() for k, v in model.language.state_dict().items()}
    emb_before = model.embed(vocab)[0].detach()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    _, loss = model(ids, torch.ones_like(ids), images(2), labels=ids)
    loss.backward()
    opt.step()
    assert all(torch.equal(v, model.language.state_dict()[k]) for k, v in before.items())
    changed = (model.embed(vocab)[0] != emb_before).any(-1).nonzero()[:, 0].tolist()
    assert changed == sorted([model.image_token_id, model.end_of_chunk_token_id])
    assert (model.special_tokens.output_delta != 0).all()  # <|endofchunk|> is a target; <image> is pushed down
    model.train_special_token_rows(False)
    assert not any(p.requires_grad for p in model.parameters())


def test_state_dict_round_trip_gives_identical_logits(world, built):
    model = fresh(built)
    wrapped = [layer for layer in model.language.model.model.layers if isinstance(layer, FlamingoLayer)]
    assert all(w.block is b and w.state is model._state for w, b in zip(wrapped, model.cross_attention, strict=True))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    clone = build(world, seed=1)
    keys = list(model.state_dict())
    assert len(keys) == len(set(keys))
    assert not any(".block." in k for k in keys)
    parts = (model.vision, model.connector, model.language, model.cross_attention, model.special_tokens)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for m in parts for p in m.parameters())
    model.language.requires_grad_(False)
    assert all(p.requires_grad for p in model.cross_attention.parameters())
    clone.load_state_dict(model.state_dict())
    ids, pix = sequence(model), images(2)
    assert torch.equal(_logits(model, ids, pix), _logits(clone, ids, pix))
