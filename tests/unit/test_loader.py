"""ResumableLoader: determinism, rank sharding parity, exact resumption, evaluation batches."""
import itertools

import numpy as np
import pytest
import torch

from orbit.data.dataset import ForecastDataset
from orbit.data.loader import ResumableLoader, epoch_leads, evaluation_batches, evaluation_inits
from test_dataset import write_toy_store  # tests/unit is on sys.path under pytest

CHANNELS = ["t2m", "z500"]
LEADS = [6, 12, 24]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two sources, 2 x 36 init times (Jan 1 .. Jan 10 2001, max lead 24 h)."""
    root = tmp_path_factory.mktemp("stores")
    paths = {}
    for name in ("era5", "cmip"):
        paths[name] = root / f"{name}.zarr"
        write_toy_store(paths[name], source=name, start="2000-12-01", end="2001-01-10T18")
    return ForecastDataset(paths, CHANNELS, years=[2001], lead_hours=LEADS)


def keys(batch):
    """(source, init time ns, lead) of each sample: identifies a sample of the epoch order."""
    return list(zip(batch.source_index.tolist(), batch.time.tolist(), batch.lead_hours.tolist()))


def take(loader, n):
    return list(itertools.islice(iter(loader), n))


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert keys(a) == keys(b)
        torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)
        torch.testing.assert_close(a.y, b.y, rtol=0, atol=0)


def test_epoch_leads_depend_only_on_seed_and_epoch():
    first = epoch_leads(50, LEADS, seed=3, epoch=1)
    np.testing.assert_array_equal(first, epoch_leads(50, LEADS, seed=3, epoch=1))
    assert first.shape == (50,) and set(first.tolist()) == {6.0, 12.0, 24.0}
    assert not np.array_equal(first, epoch_leads(50, LEADS, seed=3, epoch=2))
    assert not np.array_equal(first, epoch_leads(50, LEADS, seed=4, epoch=1))


def test_one_epoch_visits_distinct_samples_and_ignores_the_global_rng(dataset):
    loader = ResumableLoader(dataset, batch_size=5, seed=7)
    assert len(dataset) == 72 and loader.batches_per_epoch == 14
    torch.manual_seed(0)
    np.random.seed(0)
    epoch = take(loader, loader.batches_per_epoch)
    torch.manual_seed(1)
    np.random.seed(1)
    assert_same_batches(epoch, take(ResumableLoader(dataset, batch_size=5, seed=7), 14))
    samples = [(s, t) for batch in epoch for s, t, _ in keys(batch)]
    assert len(samples) == len(set(samples)) == 70
    assert loader.state_dict() == {"epoch": 1, "step_in_epoch": 0, "seed": 7, "global_batch_size": 5}


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_concatenated_equal_the_single_process_global_batch(dataset, world_size):
    steps = 2 * (len(dataset) // (4 * world_size)) + 1  # runs into the second epoch
    single = take(ResumableLoader(dataset, batch_size=4 * world_size, seed=11), steps)
    per_rank = [take(ResumableLoader(dataset, batch_size=4, seed=11, rank=r, world_size=world_size), steps)
                for r in range(world_size)]
    for step in range(steps):
        shards = [per_rank[r][step] for r in range(world_size)]
        assert sum((keys(b) for b in shards), []) == keys(single[step])
        torch.testing.assert_close(torch.cat([b.x for b in shards]), single[step].x, rtol=0, atol=0)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("stop_after", [3, 17])  # 17 > batches_per_epoch = 14: resumes inside epoch 1
def test_resumed_loader_yields_exactly_the_next_batches(dataset, num_workers, stop_after):
    uninterrupted = take(ResumableLoader(dataset, batch_size=5, seed=2, num_workers=num_workers), stop_after + 3)
    interrupted = ResumableLoader(dataset, batch_size=5, seed=2, num_workers=num_workers)
    take(interrupted, stop_after)
    state = interrupted.state_dict()
    assert state["epoch"] == stop_after // 14 and state["step_in_epoch"] == stop_after % 14
    resumed = ResumableLoader(dataset, batch_size=5, seed=999, num_workers=num_workers)
    resumed.load_state_dict(state)
    assert_same_batches(take(resumed, 3), uninterrupted[stop_after:])


def test_lazy_dataset_in_worker_processes_matches_in_memory(dataset):
    lazy = ForecastDataset({n: dataset._paths[n] for n in dataset.sources}, CHANNELS, years=[2001],
                           lead_hours=LEADS, in_memory=False)
    assert not lazy.in_memory
    assert_same_batches(take(ResumableLoader(lazy, batch_size=6, seed=5, num_workers=2), 4),
                        take(ResumableLoader(dataset, batch_size=6, seed=5), 4))


def test_resume_with_another_world_size_keeps_the_global_stream(dataset):
    two_ranks = [ResumableLoader(dataset, batch_size=3, seed=4, rank=r, world_size=2) for r in range(2)]
    for loader in two_ranks:
        take(loader, 5)
    single = ResumableLoader(dataset, batch_size=6, seed=4)
    single.load_state_dict(two_ranks[0].state_dict())
    expected = take(ResumableLoader(dataset, batch_size=6, seed=4), 6)[5]
    assert keys(take(single, 1)[0]) == keys(expected)
    with pytest.raises(ValueError, match="global batch size 6, this sampler has 5"):
        ResumableLoader(dataset, batch_size=5).load_state_dict(two_ranks[0].state_dict())


def test_keep_last_wraps_so_every_batch_is_full(dataset):
    loader = ResumableLoader(dataset, batch_size=10, seed=1, shuffle=False, drop_last=False)
    assert loader.batches_per_epoch == 8
    epoch = take(loader, 8)
    assert all(len(batch) == 10 for batch in epoch)
    in_order = [(s, t) for batch in epoch for s, t, _ in keys(batch)]
    assert in_order[72:] == in_order[:8]  # the last global batch is filled from the epoch's start
    assert len(set(in_order[:72])) == 72


def test_lead_subset_and_invalid_arguments(dataset):
    batch = take(ResumableLoader(dataset, batch_size=8, lead_hours=[12]), 1)[0]
    assert set(batch.lead_hours.tolist()) == {12.0}
    with pytest.raises(ValueError, match=r"subset of the dataset's leads \[6.0, 12.0, 24.0\]"):
        ResumableLoader(dataset, batch_size=8, lead_hours=[48])
    with pytest.raises(ValueError, match="72 samples, fewer than one global batch of 80"):
        ResumableLoader(dataset, batch_size=40, world_size=2)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        ResumableLoader(dataset, batch_size=4, rank=2, world_size=2)


def test_evaluation_batches_cover_spread_inits_at_every_lead_once(dataset):
    loader = evaluation_batches(dataset, [6, 24], batch_size=4, max_samples=9)
    seen = [k for batch in loader for k in keys(batch)]
    inits = dataset.init_times()[evaluation_inits(dataset, 9)].astype(np.int64)
    assert len(seen) == 2 * 18 and len(loader) == 9
    assert [t for _, t, lead in seen if lead == 6.0] == inits.tolist()
    assert [t for _, t, lead in seen if lead == 24.0] == inits.tolist()
    shards = [[k for b in evaluation_batches(dataset, [6, 24], 4, 9, rank=r, world_size=3) for k in keys(b)]
              for r in range(3)]
    assert sorted(sum(shards, [])) == sorted(seen)
    everything = [k for b in evaluation_batches(dataset, [6], 4) for k in keys(b)]
    assert len(everything) == len(dataset)
    with pytest.raises(ValueError, match="subset of the dataset's leads"):
        evaluation_batches(dataset, [48], 4)


def test_evaluation_scores_every_source_season_and_hour(tmp_path):
    """Init times are spread within each source over the whole year, not taken from the start of
    the concatenated index (which once scored one source all year and another not at all)."""
    paths = {}
    for name in ("cmip_a", "cmip_b", "cmip_c"):
        paths[name] = tmp_path / f"{name}.zarr"
        write_toy_store(paths[name], source=name, start="2000-12-01", end="2001-12-31T18")
    year = ForecastDataset(paths, CHANNELS, years=[2001], lead_hours=LEADS)
    inits = evaluation_inits(year, 64)
    sources = [year.locate(int(i))[0] for i in inits]
    assert [sources.count(s) for s in range(3)] == [64, 64, 64]
    times = year.init_times()[inits]
    for s in range(3):
        mine = times[np.asarray(sources) == s]
        months = set((mine.astype("datetime64[M]").astype(int) % 12 + 1).tolist())
        hours = set((mine.astype("datetime64[h]").astype(int) % 24).tolist())
        assert months == set(range(1, 13)) and hours == {0, 6, 12, 18}
    with pytest.raises(ValueError, match="per_source must be >= 1"):
        evaluation_inits(year, 0)
