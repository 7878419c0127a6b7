"""The host-sync counter sees each operation that reads device values on the host, and nothing else."""

import torch

from train.host_syncs import HostSyncCounter


def test_counts_each_sync_kind():
    x = torch.randn(4, 3, requires_grad=True)
    with HostSyncCounter() as c:
        m = x > 0
        picked = x[m]  # mask index forward; its backward scatters through the mask again
        n = int(m.sum())  # item
        torch.repeat_interleave(torch.tensor([1, 2]), torch.tensor([2, 1]))  # output size read from values
        torch.nonzero(m)
        picked.sum().backward()
    assert n == int((x > 0).sum())
    assert dict(c.by_op) == {"mask_index": 2, "item": 1, "repeat_interleave": 1, "nonzero": 1}
    assert c.total == 5


def test_sync_free_ops_count_zero():
    x = torch.randn(4, 3, requires_grad=True)
    with HostSyncCounter() as c:
        m = x > 0
        y = torch.where(m, x, 0.0).masked_fill(~m, 1.0)
        y = y[torch.tensor([0, 2])]  # integer index: no value read
        torch.repeat_interleave(torch.tensor([1, 2]), torch.tensor([2, 1]), output_size=3)
        torch.zeros(4, 3).masked_scatter(m, torch.ones(12))
        y.sum().backward()
    assert c.total == 0, c.by_op
