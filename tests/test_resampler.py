"""Perceiver Resampler: shapes of both input forms, what its embeddings do, use as a LLaVA connector."""

import pytest
import torch

from models.language import LanguageModel
from models.llava import LLaVA
from models.resampler import PerceiverResampler
from models.vision import TimmVision
from tests.tiny import LM_CONFIG, VISION, tiny_world


def small(in_dim=16, out_dim=16, **kw):
    return PerceiverResampler(in_dim, out_dim, **{"num_latents": 4, "depth": 2, "heads": 2, "dim_head": 8, **kw})


def test_shapes_and_num_tokens():
    r = small(16, 32)
    assert r(torch.randn(3, 10, 16)).shape == (3, 4, 32)
    assert r(torch.randn(2, 3, 2, 10, 16)).shape == (2, 3, 4, 32)
    assert r.num_tokens(10) == 4 == r.num_tokens(99)
    assert isinstance(small(16, 16).proj, torch.nn.Identity)
    with pytest.raises(ValueError, match="B, N, D"):
        r(torch.randn(10, 16))


def test_each_image_resampled_independently_and_patch_order_irrelevant():
    r = small().eval()
    x = torch.randn(3, 10, 16)
    out = r(x)
    torch.testing.assert_close(r(x[1:2]), out[1:2], rtol=0, atol=1e-6)
    torch.testing.assert_close(r(x[:, torch.randperm(10)]), out, rtol=0, atol=1e-5)
    torch.testing.assert_close(r(x[:, None, None]), out[:, None], rtol=0, atol=1e-6)


def test_frame_and_media_embeddings_tell_positions_apart():
    x = torch.randn(1, 2, 3, 5, 16)
    plain, timed = small(), small(max_num_media=2, max_num_frames=3)
    swap_frames = x[:, :, [2, 1, 0]]
    torch.testing.assert_close(plain(swap_frames), plain(x), rtol=0, atol=1e-5)  # a set, without embeddings
    assert not torch.allclose(timed(swap_frames), timed(x), atol=1e-3)
    one = timed(x[:, :1])  # media 0 alone is resampled as when it comes with media 1
    torch.testing.assert_close(one[:, 0], timed(x)[:, 0], rtol=0, atol=1e-6)
    assert not torch.allclose(timed(x[:, [1, 0]])[:, 1], timed(x)[:, 0], atol=1e-3)  # media time matters
    with pytest.raises(ValueError, match="max_num_frames"):
        timed(torch.randn(1, 1, 4, 5, 16))


def test_gradient_reaches_inputs_and_every_parameter():
    r = small(16, 8, max_num_media=2, max_num_frames=2)
    x = torch.randn(2, 2, 2, 5, 16, requires_grad=True)
    r(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in r.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def openflamingo_perceiver_shapes(dim, depth, heads, dim_head, num_latents, ff_mult, max_num_media, max_num_frames):
    """Parameter names and shapes of open_flamingo's `PerceiverResampler` (open_flamingo/src/helpers.py)."""
    inner = heads * dim_head
    out = {"latents": (num_latents, dim), "frame_embs": (max_num_frames, dim),
           "media_time_embs": (max_num_media, 1, dim), "norm.weight": (dim,), "norm.bias": (dim,)}
    for i in range(depth):
        out.update({f"layers.{i}.0.norm_media.weight": (dim,), f"layers.{i}.0.norm_media.bias": (dim,),
                    f"layers.{i}.0.norm_latents.weight": (dim,), f"layers.{i}.0.norm_latents.bias": (dim,),
                    f"layers.{i}.0.to_q.weight": (inner, dim), f"layers.{i}.0.to_kv.weight": (2 * inner, dim),
                    f"layers.{i}.0.to_out.weight": (dim, inner), f"layers.{i}.1.0.weight": (dim,),
                    f"layers.{i}.1.0.bias": (dim,), f"layers.{i}.1.1.weight": (dim * ff_mult, dim),
                    f"layers.{i}.1.3.weight": (dim, dim * ff_mult)})
    return out


def test_state_dict_has_open_flamingos_names_and_shapes():
    r = small(max_num_media=3, max_num_frames=2)
    theirs = openflamingo_perceiver_shapes(16, depth=2, heads=2, dim_head=8, num_latents=4, ff_mult=4,
                                           max_num_media=3, max_num_frames=2)
    assert {k: tuple(v.shape) for k, v in r.state_dict().items()} == theirs
    state = {k: torch.randn(shape) for k, shape in theirs.items()}
    r.load_state_dict(state, strict=True)
    assert all(torch.equal(r.state_dict()[k], v) for k, v in state.items())


def test_checkpoints_with_the_old_3d_frame_embeddings_still_load():
    r = small(max_num_media=2, max_num_frames=3)
    old = {**r.state_dict(), "frame_embs": torch.randn(3, 1, 16)}
    small(max_num_media=2, max_num_frames=3).load_state_dict(old)  # a fresh one, strict
    r.load_state_dict(old)
    assert torch.equal(r.frame_embs, old["frame_embs"][:, 0])
    x = torch.randn(1, 1, 2, 5, 16)
    with torch.no_grad():  # frame f gets frame_embs[f] on every patch, as open_flamingo's repeat does
        plain = small(max_num_media=2)
        plain.load_state_dict({k: v for k, v in r.state_dict().items() if k != "frame_embs"})
        torch.testing.assert_close(r(x), plain(x + r.frame_embs[:2, None]), rtol=0, atol=1e-6)


def test_media_index_gives_each_image_its_time_embedding():
    """Images resampled one by one with their place in the row equal the (B, T, ...) layout, and
    every time embedding gets a gradient (not only the first)."""
    r = small(max_num_media=3).eval()
    x = torch.randn(2, 3, 1, 5, 16)
    together = r(x)
    flat = x[:, :, 0].flatten(0, 1)  # (6, N, D): row 0's three images, then row 1's
    index = torch.arange(3).repeat(2)
    torch.testing.assert_close(r(flat, media_index=index).unflatten(0, (2, 3)), together, rtol=0, atol=1e-6)
    torch.testing.assert_close(r(flat)[:2], r(flat[:2], media_index=torch.zeros(2, dtype=torch.long)))
    assert not torch.allclose(r(flat, media_index=index), r(flat), atol=1e-3)
    r(flat, media_index=index).square().sum().backward()
    assert (r.media_time_embs.grad.flatten(1).abs().sum(1) > 0).all()
    with pytest.raises(ValueError, match="media number 4 of a row but max_num_media=3"):
        r(flat[:1], media_index=torch.tensor([3]))


def test_a_known_media_bound_is_checked_without_reading_the_index():
    """With `num_media` (the caller's bound on media_index) the same output, no host sync, and the
    bound, not the values, is what max_num_media is checked against."""
    from train.host_syncs import HostSyncCounter

    r = small(max_num_media=3).eval()
    flat, index = torch.randn(4, 5, 16), torch.tensor([0, 1, 2, 0])
    with HostSyncCounter() as syncs:
        bounded = r(flat, media_index=index, num_media=3)
    assert syncs.total == 0
    torch.testing.assert_close(bounded, r(flat, media_index=index), rtol=0, atol=0)
    with pytest.raises(ValueError, match="media number 4 of a row but max_num_media=3"):
        r(flat, media_index=index, num_media=4)


def test_llava_with_resampler_connector(tmp_path_factory):
    world = tiny_world(tmp_path_factory.mktemp("world"))
    model = LLaVA(TimmVision(**VISION["init_args"]),
                  LanguageModel(config=LM_CONFIG, tokenizer=str(world / "tokenizer")),
                  connector=lambda i, o: PerceiverResampler(i, o, num_latents=8, depth=1, heads=2, dim_head=16))
    assert model.num_image_tokens == 8
    img = model.language.image_token_id
    ids = torch.tensor([[5, img, 6, 7], [8, 9, img, 10]])
    labels = torch.tensor([[-100, -100, 6, 7], [-100, -100, -100, 10]])
    rows = [model.image_placeholders.widen(i, lab) for i, lab in zip(ids, labels)]  # what the collators feed
    ids, labels = torch.stack([i for i, _ in rows]), torch.stack([lab for _, lab in rows])
    logits, loss = model(ids, torch.ones_like(ids), torch.randn(2, 3, 75, 75), labels)
    assert logits.shape[:2] == (2, 4 - 1 + 8)
    loss.backward()
    assert all(p.grad is not None for p in model.connector.parameters())
