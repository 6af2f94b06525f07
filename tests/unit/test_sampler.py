"""ShardedSampler: rank shards, parity, determinism, exact resumption, argument and state checks."""
import itertools

import numpy as np
import pytest

from orbit.data.sampler import ShardedSampler


def take(sampler, n):
    return [batch.tolist() for batch in itertools.islice(iter(sampler), n)]


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_rank_shards_are_disjoint_and_cover_an_epoch(world_size, drop_last):
    samplers = [ShardedSampler(23, 2, seed=5, rank=r, world_size=world_size, drop_last=drop_last)
                for r in range(world_size)]
    steps = samplers[0].batches_per_epoch
    shards = [sum(take(s, steps), []) for s in samplers]
    seen = sum(shards, [])
    assert all(len(shard) == 2 * steps for shard in shards)
    if drop_last:  # floor(23 / G) global batches of distinct samples
        assert len(set(seen)) == len(seen) == steps * 2 * world_size > 23 - 2 * world_size
    else:  # every sample; the wrap-around repeats only the first samples of the epoch
        assert set(seen) == set(range(23)) and len(seen) == steps * 2 * world_size
    assert all(s.state_dict()["epoch"] == 1 and s.state_dict()["step_in_epoch"] == 0 for s in samplers)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_concatenated_equal_the_single_process_batch(world_size):
    single = take(ShardedSampler(30, 2 * world_size, seed=1), 12)  # runs into later epochs
    per_rank = [take(ShardedSampler(30, 2, seed=1, rank=r, world_size=world_size), 12) for r in range(world_size)]
    for step in range(12):
        assert sum((per_rank[r][step] for r in range(world_size)), []) == single[step]


def test_order_depends_only_on_seed_and_epoch():
    sampler = ShardedSampler(40, 4, seed=3)
    np.random.seed(0)
    first = take(sampler, 20)
    np.random.seed(1)
    assert take(ShardedSampler(40, 4, seed=3), 20) == first
    assert sorted(sum(first[:10], [])) == list(range(40))
    assert first[:10] != first[10:]  # a new permutation each epoch
    assert take(ShardedSampler(40, 4, seed=4), 10) != first[:10]
    assert sum(take(ShardedSampler(40, 4, shuffle=False), 10), []) == list(range(40))


@pytest.mark.parametrize("stop_after", [3, 7, 10])  # mid-epoch, the epoch's last batch, into epoch 1
def test_resumed_sampler_yields_exactly_the_next_batches(stop_after):
    uninterrupted = take(ShardedSampler(29, 3, seed=2, rank=1, world_size=2), stop_after + 6)
    interrupted = ShardedSampler(29, 3, seed=2, rank=1, world_size=2)  # 4 batches per epoch
    take(interrupted, stop_after)
    state = interrupted.state_dict()
    assert state == {"epoch": stop_after // 4, "step_in_epoch": stop_after % 4, "seed": 2, "global_batch_size": 6}
    resumed = ShardedSampler(29, 3, seed=99, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert take(resumed, 6) == uninterrupted[stop_after:]


def test_batches_leave_the_position_to_advance():
    sampler = ShardedSampler(10, 2, seed=0)
    ahead = list(itertools.islice(sampler.batches(), 7))  # a prefetching consumer runs ahead
    assert [epoch for epoch, _ in ahead] == [0] * 5 + [1] * 2
    assert sampler.state_dict()["step_in_epoch"] == 0
    for _ in range(6):
        sampler.advance()
    assert (sampler.epoch, sampler.step_in_epoch) == (1, 1)
    assert take(sampler, 1)[0] == ahead[6][1].tolist()


def test_resume_with_another_world_size_keeps_the_global_stream():
    two_ranks = [ShardedSampler(50, 3, seed=4, rank=r, world_size=2) for r in range(2)]
    for sampler in two_ranks:
        take(sampler, 5)
    single = ShardedSampler(50, 6, seed=4)
    single.load_state_dict(two_ranks[0].state_dict())
    assert take(single, 1)[0] == take(ShardedSampler(50, 6, seed=4), 6)[5]


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_samples=0, batch_size=2), "num_samples must be >= 1, got 0"),
    (dict(num_samples=10, batch_size=0), "batch_size >= 1.*got batch_size=0"),
    (dict(num_samples=10, batch_size=2, world_size=0), "world_size >= 1.*world_size=0"),
    (dict(num_samples=10, batch_size=2, rank=2, world_size=2), r"0 <= rank < world_size.*rank=2, world_size=2"),
    (dict(num_samples=10, batch_size=2, seed=-1), "seed must be >= 0.*got -1"),
    (dict(num_samples=10, batch_size=4, world_size=3), r"10 samples, fewer than one global batch of 12 "
                                                        r"\(batch_size 4 x world_size 3\) with drop_last=True"),
])
def test_invalid_arguments_name_the_value_and_what_is_valid(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShardedSampler(**kwargs)
    if "fewer than one global batch" in message:  # drop_last=False always has a batch: it wraps
        assert ShardedSampler(**kwargs, drop_last=False).batches_per_epoch == 1


@pytest.mark.parametrize("change, message", [
    (dict(global_batch_size=8), r"global batch size 8, this sampler has 4 \(batch_size 4 x world_size 1\)"),
    (dict(step_in_epoch=5), r"0 <= step_in_epoch < 5 \(batches per epoch\), got epoch=0, step_in_epoch=5"),
    (dict(epoch=-1), "need epoch >= 0.*got epoch=-1"),
    (dict(seed=-2), "seed must be >= 0, got -2"),
])
def test_invalid_states_are_refused(change, message):
    sampler = ShardedSampler(20, 4)
    with pytest.raises(ValueError, match=message):
        sampler.load_state_dict({**sampler.state_dict(), **change})
    with pytest.raises(ValueError, match=r"lacks \['step_in_epoch', 'seed', 'global_batch_size'\]"):
        sampler.load_state_dict({"epoch": 1, "position": 3})  # e.g. the old CellSampler format
    assert sampler.state_dict() == {"epoch": 0, "step_in_epoch": 0, "seed": 0, "global_batch_size": 4}
