"""Tests for orbit.data.writer and orbit.data.statistics: block-by-block writing, resuming, streaming statistics."""
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from orbit.data import statistics, store, writer

H, W = 4, 8
TIMES = pd.date_range("2000-11-01", "2001-01-15", freq="6h").values  # 301 steps, 244 in 2000


def fields(seed: int = 0, times: np.ndarray = TIMES) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    basis = store.design_matrix(times)
    t2m = 280 + 8 * basis[:, 1, None, None] + rng.normal(size=(times.size, H, W))
    z = 5e4 + 300 * basis[:, 7, None, None, None] + 50 * rng.normal(size=(times.size, 2, H, W))
    return xr.Dataset(
        {"t2m": (("time", "lat", "lon"), t2m.astype(np.float32)),
         "z": (("time", "level", "lat", "lon"), z.astype(np.float32))},
        coords={"time": times, "lat": np.linspace(-60, 60, H), "lon": np.arange(W) * 45.0, "level": [500, 850]},
    )


def blocks_of(ds: xr.Dataset, size: int, calls: list, crash_after: int | None = None):
    """A producer yielding `size` steps at a time, recording where it starts; KeyboardInterrupt after
    `crash_after` blocks (a kill)."""
    def produce(start, state):
        calls.append((start, {k: int(v) for k, v in state.items()}))
        for n, a in enumerate(range(start, ds.sizes["time"], size)):
            if crash_after is not None and n == crash_after:
                raise KeyboardInterrupt
            yield ds.isel(time=slice(a, a + size)), {"next": np.array(a + size)}
    return produce


def write(ds, path, produce=None, **kw):
    kw = {"source": "toy", "kind": "model", "train_years": (2000, 2000), **kw}
    return writer.write_blocks(ds, produce or writer.dataset_producer(ds), path, **kw)


def test_streaming_statistics_equal_the_whole_sample_ones(tmp_path):
    ds = fields(times=pd.date_range("2000-01-01", "2001-01-31", freq="30h").values)  # a year at all hours
    out = write(ds, tmp_path / "s.zarr", blocks_of(ds, 23, []))
    train = ds.sel(time=slice("2000", "2000"))
    for channel, values in (("t2m", train["t2m"]), ("z850", train["z"].sel(level=850))):
        v = values.values.astype(np.float64)
        assert float(out["norm_mean"].sel(channel=channel)) == pytest.approx(v.mean(), rel=1e-6)
        assert float(out["norm_std"].sel(channel=channel)) == pytest.approx(v.std(), rel=1e-5)
        coef = store.fit_harmonics(train["time"].values, v.reshape(len(v), -1))  # lstsq, minimum norm
        np.testing.assert_allclose(out["clim_coef"].sel(channel=channel).values.reshape(15, -1), coef,
                                   rtol=1e-4, atol=1e-3 * np.abs(coef).max())
    np.testing.assert_array_equal(out["z"].values, ds["z"].values)


def test_statistics_state_round_trips():
    stats = statistics.StreamingStatistics(["a"], (2, 3))
    times = TIMES[:20]
    stats.update(times, np.ones((20, 2, 3)), 0)
    stats.advance(times)
    other = statistics.StreamingStatistics(["a"], (2, 3))
    other.load_state_dict(stats.state_dict())
    assert other.result().identical(stats.result())
    with pytest.raises(ValueError, match=r"'xty' have shape \(15, 1, 6\), expected \(15, 1, 4\)"):
        statistics.StreamingStatistics(["a"], (2, 2)).load_state_dict(stats.state_dict())


def test_one_time_step_per_chunk_with_all_levels(tmp_path, monkeypatch):
    out = write(fields(), tmp_path / "s.zarr")  # a 4x8 grid: 64 KiB is 256 steps of z, all 301 of t2m
    assert out["z"].encoding["chunks"] == (256, 2, H, W) and out["t2m"].encoding["chunks"] == (301, H, W)
    monkeypatch.setattr(writer, "MIN_CHUNK_BYTES", 4 * H * W * 2)  # as at 128x256: one step per chunk
    out = write(fields(), tmp_path / "t.zarr", blocks_of(fields(), 40, []))
    assert out["z"].encoding["chunks"] == (1, 2, H, W) and out["t2m"].encoding["chunks"] == (2, H, W)
    xr.testing.assert_identical(out[["t2m", "z"]].load(), store.open_store(tmp_path / "s.zarr")[["t2m", "z"]].load())


def test_a_killed_write_resumes_where_it_stopped_and_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "CHECKPOINT_SECONDS", 0.0)  # save progress after every block
    ds = fields()
    reference = write(ds, tmp_path / "ref.zarr", blocks_of(ds, 40, []))
    old = write(fields(seed=5), tmp_path / "s.zarr")
    path = tmp_path / "s.zarr"

    calls = []
    with pytest.raises(KeyboardInterrupt):
        write(ds, path, blocks_of(ds, 40, calls, crash_after=3), overwrite=True)
    # the old store is untouched and the partial one waits beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.zarr", "s.zarr", "s.zarr.partial"]
    xr.testing.assert_identical(store.open_store(path).load(), old.load())

    out = write(ds, path, blocks_of(ds, 40, calls), overwrite=True)
    assert calls == [(0, {}), (120, {"next": 120})]  # the producer restarts at its last state
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.zarr", "s.zarr"]
    xr.testing.assert_identical(out.load(), reference.load())


def test_a_partial_store_of_other_arguments_is_discarded(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(writer, "CHECKPOINT_SECONDS", 0.0)
    ds = fields()
    with pytest.raises(KeyboardInterrupt):
        write(ds, tmp_path / "s.zarr", blocks_of(ds, 40, [], crash_after=2))
    calls = []
    out = write(ds, tmp_path / "s.zarr", blocks_of(ds, 40, calls), source="other")
    assert calls[0] == (0, {}) and out.attrs["source"] == "other"
    assert "discarding" in capsys.readouterr().err


def test_bad_values_mid_way_leave_nothing(tmp_path):
    ds = fields()
    ds["t2m"][130, 1, 2] = np.nan
    with pytest.raises(ValueError, match=r"variable 't2m' has 1 NaN/Inf values between 2000-12-01T00 and 2000-12-10T18"):
        write(ds, tmp_path / "s.zarr", blocks_of(ds, 40, []))
    assert not any(tmp_path.iterdir())


def test_a_producer_out_of_step_is_an_error(tmp_path):
    ds = fields()
    with pytest.raises(ValueError, match="must yield the template's times in order"):
        write(ds, tmp_path / "s.zarr", lambda start, state: iter([(ds.isel(time=slice(1, 50)), {})]))
    with pytest.raises(ValueError, match="stopped after 50 of 301 time steps"):
        write(ds, tmp_path / "s.zarr", lambda start, state: iter([(ds.isel(time=slice(0, 50)), {})]))
    assert not any(tmp_path.iterdir())


def test_lazy_input_is_written_along_its_dask_chunks(tmp_path):
    ds = fields().chunk({"time": 60})
    ds["z"] = ds["z"].chunk({"time": 100})  # each input chunk is read once: blocks end where any chunk ends
    calls = []
    produce = writer.dataset_producer(ds)
    starts = [0]
    for block, _ in produce(0, {}):
        calls.append(block.sizes["time"])
        starts.append(starts[-1] + block.sizes["time"])
    assert calls == [60, 40, 20, 60, 20, 40, 60, 1]
    with pytest.raises(ValueError, match="cannot resume at time step 7"):
        next(produce(7, {}))


def test_toy_earth_synthesis_resumes_from_its_saved_state(tmp_path, monkeypatch):
    """A kill mid-way through `synthesize`: the rerun continues from the saved model state, bitwise, and
    keeps the stores of sources already finished."""
    from orbit.synthetic import toy_earth

    monkeypatch.setattr(writer, "CHECKPOINT_SECONDS", 0.0)
    monkeypatch.setattr(writer, "BLOCK_BYTES", 14 * 16 * 32 * 4 * 400)  # blocks of 400 steps
    step, calls = toy_earth.ToyEarth.step, []

    def killed_at_1000(self, state, time):
        calls.append(time)
        if len(calls) == toy_earth.SPINUP_STEPS - 1 + 1000:
            raise KeyboardInterrupt
        return step(self, state, time)

    monkeypatch.setattr(toy_earth.ToyEarth, "step", killed_at_1000)
    (tmp_path / "cmip_b.zarr").mkdir()  # a source an earlier run finished: kept when resuming
    with pytest.raises(KeyboardInterrupt):
        toy_earth.synthesize(tmp_path, ["cmip_a"], years=(2000, 2000), grid=(16, 32))
    calls.clear()
    monkeypatch.setattr(toy_earth.ToyEarth, "step", lambda self, s, t: calls.append(t) or step(self, s, t))
    toy_earth.synthesize(tmp_path, ["cmip_b", "cmip_a"], years=(2000, 2000), grid=(16, 32))
    assert calls[0] == np.datetime64("2000-07-19T00")  # step 800: after the last saved block, no spin-up
    expected, _ = toy_earth.generate("cmip_a", (2000, 2000), (16, 32))
    out = store.open_store(tmp_path / "cmip_a.zarr")
    for name in expected.data_vars:
        np.testing.assert_array_equal(out[name].values, expected[name].values)
