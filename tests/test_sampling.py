"""The training sampler: rank shards that cover each epoch, a length that never changes, and a
resume position counted in global samples, valid at another world size."""

from __future__ import annotations

import pytest

from data.sampling import ResumableSampler


def take(sampler: ResumableSampler) -> list[int]:
    return [i for i, _ in sampler]


def test_ranks_split_each_epoch_evenly_and_cover_it():
    ranks = [ResumableSampler(10, seed=3, num_replicas=4, rank=r) for r in range(4)]
    shards = [take(s) for s in ranks]
    assert [len(s) for s in shards] == [3, 3, 3, 3] == [len(s) for s in ranks]  # 10 padded to 12
    assert sorted(i for s in shards for i in s[:2]) == sorted(ranks[0].order(0)[:8])
    assert set(i for s in shards for i in s) == set(range(10))
    assert ranks[0].order(0) != ranks[0].order(1)  # reshuffled per epoch, same on every rank
    single = ResumableSampler(10, seed=3)
    assert take(single) == single.order(0) and sorted(single.order(0)) == list(range(10))


def test_epoch_comes_from_set_epoch_and_travels_with_the_index():
    s = ResumableSampler(6, seed=0, num_replicas=2, rank=1)
    s.set_epoch(2)
    items = list(s)
    assert {e for _, e in items} == {2} and [i for i, _ in items] == s.order(2)[1::2]


def test_resume_skips_global_positions_and_keeps_the_length():
    full = ResumableSampler(12, seed=1, num_replicas=2, rank=0)
    cut = ResumableSampler(12, seed=1, num_replicas=2, rank=0)
    cut.resume_at(epoch=0, consumed=4)  # both ranks have taken 2 samples
    assert take(cut) == take(full)[2:]
    assert len(cut) == len(full) == 6  # the schedule's count does not shrink after a resume
    cut.set_epoch(1)
    assert take(cut) == full.order(1)[0::2]  # the next epoch is whole again


def test_resume_at_another_world_size_continues_the_same_order():
    one = ResumableSampler(12, seed=5)
    one.resume_at(epoch=0, consumed=6)
    two = [ResumableSampler(12, seed=5, num_replicas=2, rank=r) for r in range(2)]
    for s in two:
        s.resume_at(epoch=0, consumed=6)
    assert sorted(take(one)) == sorted(i for s in two for i in take(s)) == sorted(one.order(0)[6:])


def test_a_position_at_the_epoch_end_resumes_the_next_epoch():
    s = ResumableSampler(8, seed=0, num_replicas=2, rank=1)
    s.resume_at(epoch=3, consumed=8)
    assert s.epoch == 4 and take(s) == s.order(4)[1::2]


def test_bad_worlds_are_refused():
    with pytest.raises(ValueError, match="empty"):
        ResumableSampler(0)
    with pytest.raises(ValueError, match="rank 2"):
        ResumableSampler(4, num_replicas=2, rank=2)
