"""The next-token losses and DPO's label log-probabilities equal the plain fp32 cross-entropy
(values and gradients) while never holding a full-vocabulary fp32 copy of the logits."""

import pytest
import torch
import torch.nn.functional as F

from models.losses import CHUNK_ELEMENTS, chunked_next_token_loss, next_token_loss, summed_label_logprobs, token_nll
from tests.tensor_probe import LargestOutputs
from train.host_syncs import HostSyncCounter


def reference_loss(logits, labels):
    """What next_token_loss computed before: a shifted fp32 copy of the logits."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


def reference_logprobs(logits, labels):
    """What summed_label_logprobs computed before: a transposed fp32 copy."""
    target = labels[:, 1:]
    mask = target != -100
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), target.masked_fill(~mask, 0), reduction="none")
    return -(nll * mask).sum(1)


def batch(B=3, L=9, V=40, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(B, L, V, generator=g)).to(dtype).requires_grad_()
    labels = torch.randint(0, V, (B, L), generator=g)
    labels[0, :4] = -100
    labels[2, 6:] = -100
    return logits, labels


def test_token_nll_by_hand():
    """Two positions, vocabulary 2: -log softmax([0, log 3])[1] = log(4/3); the ignored one gives 0."""
    logits = torch.tensor([[0.0, torch.log(torch.tensor(3.0))], [5.0, 1.0]], requires_grad=True)
    nll = token_nll(logits, torch.tensor([1, -100]))
    torch.testing.assert_close(nll, torch.tensor([torch.log(torch.tensor(4 / 3)), 0.0]))
    nll.sum().backward()  # softmax - one-hot on the kept row, nothing on the ignored one
    torch.testing.assert_close(logits.grad, torch.tensor([[0.25, -0.25], [0.0, 0.0]]))


@pytest.mark.parametrize("rows", [1, 4, 7, None])
def test_token_nll_equals_fp32_cross_entropy_in_any_chunking(rows):
    logits, labels = batch()
    flat, targets = logits.flatten(0, 1), labels.flatten()
    ours = token_nll(flat, targets, chunk_rows=rows)
    ref = F.cross_entropy(flat, targets, ignore_index=-100, reduction="none")
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    w = torch.randn(ours.shape)
    (g_ours,) = torch.autograd.grad((ours * w).sum(), logits)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), logits)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-6, atol=1e-7)


def test_next_token_loss_and_logprobs_equal_the_old_fp32_computation():
    logits, labels = batch()
    for ours, ref in ((next_token_loss, reference_loss), (summed_label_logprobs, reference_logprobs)):
        a, b = ours(logits, labels), ref(logits, labels)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)
        w = torch.randn(a.shape)
        torch.testing.assert_close(torch.autograd.grad((a * w).sum(), logits)[0],
                                   torch.autograd.grad((b * w).sum(), logits)[0], rtol=1e-5, atol=1e-7)
    assert torch.isnan(next_token_loss(logits, torch.full_like(labels, -100)))  # nothing labelled, as before


def test_bf16_logits_give_the_fp32_values_and_bf16_gradients():
    """On bf16 logits the loss is the fp32 loss of the same (bf16) values: only the summation order
    differs (1e-5). The gradient comes back in bf16, so within bf16 rounding of the fp32 one (2^-8)."""
    logits, labels = batch(dtype=torch.bfloat16)
    upcast = logits.detach().float().requires_grad_()
    for ours, ref in ((next_token_loss, reference_loss), (summed_label_logprobs, reference_logprobs)):
        a, b = ours(logits, labels), ref(upcast, labels)
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        (ga,), (gb,) = torch.autograd.grad(a.sum(), logits), torch.autograd.grad(b.sum(), upcast)
        assert ga.dtype == torch.bfloat16
        torch.testing.assert_close(ga.float(), gb, rtol=2 ** -8, atol=1e-6)


def test_no_full_vocabulary_fp32_tensor_on_bf16_logits():
    """A realistic vocabulary (32k): no operation of the loss, forward or backward, or of DPO's
    log-probabilities outputs an fp32 tensor of more than one chunk; the old computation does."""
    B, L, V = 3, 384, 32768
    logits, labels = batch(B, L, V, dtype=torch.bfloat16)
    assert B * L * V >= 2 * CHUNK_ELEMENTS
    with LargestOutputs() as probe:
        next_token_loss(logits, labels).backward()
        with torch.no_grad():
            summed_label_logprobs(logits, labels)
    assert probe.numel[torch.float32] <= CHUNK_ELEMENTS
    assert probe.numel[torch.bfloat16] == B * L * V  # the gradient, in the logits' dtype
    with LargestOutputs() as old, torch.no_grad():
        reference_loss(logits[:1, :256], labels[:1, :256])
    assert old.numel[torch.float32] >= 255 * V  # the probe sees the old full copy


def test_losses_make_no_host_sync_and_the_chunked_one_makes_one():
    logits, labels = batch()
    head = torch.nn.Linear(8, 40, bias=False)
    hidden = torch.randn(3, 9, 8, requires_grad=True)
    with HostSyncCounter() as plain:
        next_token_loss(logits, labels).backward()
        summed_label_logprobs(logits, labels).sum().backward()
    with HostSyncCounter() as chunked:
        chunked_next_token_loss(hidden, head, labels, chunk_size=4).backward()
    assert plain.total == 0, plain.by_op
    assert dict(chunked.by_op) == {"nonzero": 1}  # which positions have targets: sets the chunk count
