"""Flamingo's training step without avoidable host syncs or full-size copies: one media mask per LM
call shared by every block (equal to the old per-block boolean one), blocks in the LM's dtype,
special-token logits added in place, and the chunked loss equal to the plain one."""

import copy

import pytest
import torch
import torch.nn.functional as F

from models.flamingo import GatedCrossAttentionBlock, SpecialTokenDeltas, media_attention
from models.language import LanguageModel
from models.losses import next_token_loss
from models.resampler import PerceiverResampler, merge_heads, split_heads
from tests.tensor_probe import LargestOutputs
from tests.test_flamingo import _padded_batch, build, images, language, text_ids
from tests.tiny import LM_CONFIG, tiny_world
from train.host_syncs import HostSyncCounter


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def timed(world):
    """Gates open, time embeddings on (the resampler is given each image's place), deltas nonzero."""
    model = build(world, resampler=lambda i, o: PerceiverResampler(i, o, num_latents=4, depth=1, heads=2,
                                                                   dim_head=8, max_num_media=3))
    with torch.no_grad():
        for p in model.special_tokens.parameters():
            p.normal_(0, 0.5)
    return model.train()


def padded(model):
    """Rows with 2, 0 and 1 images, right-padded; labels are the ids on real tokens."""
    rows, _, pix = _padded_batch(model)
    L, pad = max(map(len, rows)), model.tokenizer.pad_token_id
    ids = torch.tensor([r + [pad] * (L - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (L - len(r)) for r in rows])
    return ids, mask, pix, ids.masked_fill(mask == 0, -100)


def test_training_step_makes_one_host_sync(timed):
    """The one left reads T (the most images in a row: the media tensor's shape) and checks the image
    count with it. The LM alone makes one (transformers asks whether the attention mask is all ones);
    Flamingo builds the causal mask itself (`models.sample_attention`), so that one is gone. Main made
    6 here (image count, T, nonzero, mask index, resampler bound, the LM's mask check)."""
    model = copy.deepcopy(timed)
    ids, mask, pix, labels = padded(model)
    with HostSyncCounter() as flamingo:
        _, loss = model(ids, mask, pix, labels)
        loss.backward()
    assert flamingo.total == 1 and set(flamingo.by_op) == {"item"}, flamingo.by_op
    model.loss_chunk_size = 4
    with HostSyncCounter() as chunked:
        model(ids, mask, pix, labels)[1].backward()
    assert chunked.total == 2 and chunked.by_op["nonzero"] == 1  # the chunked loss's positions


def old_block(block, x, media, media_idx, immediate):
    """The block as main computed it: a (B, 1, L, T*M) boolean mask per block, in the gates' dtype."""
    h = x.to(block.attn_gate.dtype)
    B, T, M, _ = media.shape
    slot = torch.arange(1, T + 1)
    idx = media_idx[..., None]
    allowed = slot == idx if immediate else slot <= idx
    has_media = media_idx > 0
    allowed = (allowed | ~has_media[..., None]).repeat_interleave(M, -1)[:, None]
    q = split_heads(block.to_q(block.norm(h)), block.heads)
    k, v = (split_heads(t, block.heads) for t in block.to_kv(media.flatten(1, 2).to(h.dtype)).chunk(2, -1))
    out = block.to_out(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)))
    h = h + block.attn_gate.tanh() * torch.where(has_media[..., None], out, 0.0)
    return (h + block.ff_gate.tanh() * block.ff(h)).to(x.dtype)


@pytest.mark.parametrize("immediate", [True, False])
def test_blocks_share_one_float_mask_and_equal_the_old_boolean_masking(timed, immediate):
    model = copy.deepcopy(timed).eval()
    model.only_attend_immediate_media = immediate
    ids, mask, pix, _ = padded(model)
    calls = []
    hooks = [b.register_forward_hook(lambda m, args, out: calls.append((m, args, out))) for b in model.cross_attention]
    with torch.no_grad():
        model(ids, mask, pix)
    for h in hooks:
        h.remove()
    assert len(calls) == len(model.cross_attention) == 2
    biases = [args[2] for _, args, _ in calls]
    assert biases[0] is biases[1]  # built once per LM call
    assert biases[0].dtype == calls[0][1][0].dtype and biases[0].is_floating_point()
    media_idx = (ids == model.image_token_id).cumsum(1)
    with torch.no_grad():
        for block, (x, media, *_), out in calls:
            torch.testing.assert_close(out, old_block(block, x, media, media_idx, immediate), rtol=0, atol=1e-6)


def test_media_attention_by_hand():
    """Row: no image, image 1, image 1, image 2 (M = 2 tokens per image)."""
    inf = float("-inf")
    bias, has = media_attention(torch.tensor([[0, 1, 1, 2]]), 2, 2, immediate=True, dtype=torch.bfloat16)
    assert bias.dtype == torch.bfloat16 and bias.shape == (1, 1, 4, 4)
    assert bias[0, 0].float().tolist() == [[0, 0, 0, 0], [0, 0, inf, inf], [0, 0, inf, inf], [inf, inf, 0, 0]]
    assert has[0, :, 0].tolist() == [False, True, True, True]
    bias, _ = media_attention(torch.tensor([[0, 1, 2]]), 2, 1, immediate=False, dtype=torch.float32)
    assert bias[0, 0].tolist() == [[0, 0], [0, inf], [0, 0]]


def test_block_runs_in_the_hidden_states_dtype():
    """fp32 parameters, bf16 hidden states: bf16 out, no fp32 tensor of the hidden states' size made
    (forward or backward), and the values of the fp32 computation within bf16 tolerance."""
    torch.manual_seed(0)
    block = GatedCrossAttentionBlock(32, 16, heads=2, dim_head=8, ff_mult=2)
    with torch.no_grad():
        block.attn_gate.fill_(1.0)
        block.ff_gate.fill_(1.0)
    B, L, T, M = 2, 200, 2, 3
    x = torch.randn(B, L, 32).bfloat16().requires_grad_()
    media = torch.randn(B, T, M, 16)
    media_idx = torch.randint(0, T + 1, (B, L)).sort(1).values
    with LargestOutputs() as probe:
        bias, has = media_attention(media_idx, T, M, True, torch.bfloat16)
        out = block(x, media, bias, has)
        out.square().sum().backward()
    assert out.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16
    assert probe.numel.get(torch.float32, 0) < B * L * 32, probe.numel
    bias32, _ = media_attention(media_idx, T, M, True, torch.float32)
    ref = block(x.detach().float(), media, bias32, has)
    torch.testing.assert_close(out.float(), ref, rtol=2 ** -6, atol=3e-2)
    torch.testing.assert_close(out, old_block(block, x.detach(), media, media_idx, True), rtol=2 ** -6, atol=3e-2)


def test_special_token_logits_added_in_place_equal_the_old_copy():
    torch.manual_seed(0)
    deltas = SpecialTokenDeltas([3, 7], 8)
    with torch.no_grad():
        deltas.output_delta.normal_()
    head = torch.nn.Linear(8, 11, bias=False)
    hidden = torch.randn(2, 5, 8, requires_grad=True)

    def grads(out):
        return torch.autograd.grad(out.square().sum(), [hidden, deltas.output_delta, head.weight])

    logits = head(hidden)
    extra = hidden @ deltas.output_delta.T
    old = logits.index_add(-1, deltas.token_ids, extra)
    new = deltas.add_to_logits(hidden, head(hidden))
    assert torch.equal(new, old)
    for a, b in zip(grads(new), grads(old)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    same = head(hidden)
    assert deltas.add_to_logits(hidden, same) is same  # no (B, L, V) copy


def test_chunked_loss_equals_the_plain_loss(timed):
    """Same loss and gradients on every trained part (the output deltas included: the chunks are
    recomputed in the backward, outside the call's hooks)."""
    model = copy.deepcopy(timed)
    ids, mask, pix, labels = padded(model)
    results = []
    for chunk in (None, 3):
        model.zero_grad()
        model.loss_chunk_size = chunk
        logits, loss = model(ids, mask, pix, labels)
        loss.backward()
        results.append((logits, loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (logits, plain, g_plain), (none, chunked, g_chunked) = results
    assert logits is not None and none is None
    torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=1e-6)
    assert g_plain.keys() == g_chunked.keys() and "special_tokens.output_delta" in g_plain
    for name, g in g_plain.items():
        torch.testing.assert_close(g_chunked[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_language_model_trains_and_generates(world, timed):
    """A bf16 LM (fp32 bridge): its blocks return bf16, the loss is the fp32 model's within bf16
    tolerance, every trained part gets a gradient, and generation runs with the KV cache."""
    lm = LanguageModel(config={**LM_CONFIG, "num_hidden_layers": 2}, tokenizer=str(world / "tokenizer"),
                       dtype="bfloat16")
    model = build(world, lm, resampler=lambda i, o: PerceiverResampler(i, o, num_latents=4, depth=1, heads=2,
                                                                       dim_head=8, max_num_media=3)).train()
    state = timed.state_dict()
    model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in state.items()})
    assert model.language.model.dtype == torch.bfloat16 and model.cross_attention[0].to_q.weight.dtype == torch.float32
    ids, mask, pix, labels = padded(model)
    dtypes = []
    hook = model.cross_attention[0].register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    _, loss = model(ids, mask, pix, labels)
    loss.backward()
    hook.remove()
    assert dtypes == [torch.bfloat16]
    _, ref = copy.deepcopy(timed)(ids, mask, pix, labels)
    torch.testing.assert_close(loss, ref, rtol=2e-2, atol=0)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.cross_attention.parameters())
    img, (a, b) = model.image_token_id, text_ids(model, 2)
    new = model.eval().generate(torch.tensor([[a, img, b]]), torch.ones(1, 3, dtype=torch.long), images(1),
                                max_new_tokens=3, eos_token_id=None, min_new_tokens=3)
    assert new.shape == (1, 3)


def test_too_many_images_in_a_row_is_checked_without_reading_indices(world):
    model = build(world, resampler=lambda i, o: PerceiverResampler(i, o, num_latents=4, depth=1, heads=2,
                                                                   dim_head=8, max_num_media=2))
    img, (a,) = model.image_token_id, text_ids(model, 1)
    ids = torch.tensor([[img, a, img, a, img]])
    with pytest.raises(ValueError, match="media number 3 of a row but max_num_media=2"):
        model(ids, torch.ones_like(ids), images(3))


def test_under_autocast_the_mask_is_built_in_the_queries_dtype(timed):
    """bf16-mixed (an fp32 model under autocast): the blocks get a bf16 mask, not an fp32 one each
    would convert, and the loss is the fp32 one within bf16 tolerance."""
    model = copy.deepcopy(timed)
    ids, mask, pix, labels = padded(model)
    biases = []
    hook = model.cross_attention[0].register_forward_hook(lambda m, args, out: biases.append(args[2].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(ids, mask, pix, labels)
    loss.backward()
    hook.remove()
    assert biases == [torch.bfloat16]
    torch.testing.assert_close(loss, model(ids, mask, pix, labels)[1], rtol=2e-2, atol=0)
