"""Toy land C/N model: budgets close every step, spin-up ends at a fixed point, linear pools hit input / k."""
import numpy as np
import pytest

from orbit.synthetic import land_model as lm
from orbit.data.elm_dataset import BUFFER, TEST, TRAIN, VALIDATION, extract_patches, holdout_regions, insolation

MONTH = np.arange(12)


def _cells(constant_months: bool = False):
    """Six cells covering every PFT, wet/dry, warm/cold; optionally the same forcing every month."""
    n = 6
    tmean = np.array([26.0, 14.0, -2.0, 18.0, 9.0, 24.0])
    amp = np.array([2.0, 10.0, 18.0, 8.0, 12.0, 3.0]) * (0.0 if constant_months else 1.0)
    tair = tmean[:, None] - amp[:, None] * np.cos(2 * np.pi * (MONTH + 0.5) / 12)
    moist = np.broadcast_to(np.array([0.7, 0.5, 0.55, 0.25, 0.6, 0.9])[:, None], (n, 12)).copy()
    rad = np.array([220.0, 160.0, 110.0, 230.0, 150.0, 200.0])[:, None] * (
        1.0 - (0.0 if constant_months else 0.4) * np.cos(2 * np.pi * (MONTH + 0.5) / 12))
    site = lm.Site(clay=np.array([0.2, 0.3, 0.1, 0.05, 0.4, 0.25]), sand=np.array([0.3, 0.3, 0.5, 0.8, 0.1, 0.4]),
                   pft=np.array([0, 1, 2, 3, 1, 0]), ndep=np.array([0.5, 1.0, 0.2, 0.3, 2.0, 0.8]))
    return lm.LandModel(lm.Forcing(tair, moist, rad), site)


class FastWoodPfts(lm.PftTable):
    """Stem and coarse roots turn over 10x faster (the slowest vegetation pools)."""

    turnover = lm.PftTable.turnover * np.array([1.0, 1.0, 10.0, 10.0])


def _fast_cells(constant_months: bool = False):
    """The same cells with their slow pools permanently accelerated (wood 10x, cwd / soil2 / soil3 by the AD
    factors): the same equations reach equilibrium in a few hundred years instead of thousands, which keeps
    the spin-up tests fast without changing what they check."""
    base = _cells(constant_months)
    model = lm.LandModel(base.forcing, base.site, FastWoodPfts())
    model.k *= lm.AD_FACTORS
    return model


def test_every_step_closes_the_carbon_and_nitrogen_budgets():
    model = _cells()
    state = lm.cold_start(model.n)
    for year in range(40):  # through the fast-growing transient, where every flux is large
        for month in range(12):
            c0, n0 = model.total_c(state), model.total_n(state)
            state, f = model.step(state, month)
            np.testing.assert_allclose(model.total_c(state) - c0, f["gpp"] - f["ra"] - f["hr"], atol=1e-8, rtol=1e-10)
            np.testing.assert_allclose(model.total_n(state) - n0, f["ndep"] + f["nfix"] - f["nloss"], atol=1e-9,
                                       rtol=1e-10)
            assert (state >= 0).all()
    assert (f["gpp"] > 0).any() and (f["hr"] > 0).all()


@pytest.fixture(scope="module")
def spun_up():
    model = _fast_cells()
    return model, lm.spin_up(model, lm.cold_start(model.n), tol=0.02, window=5, max_years=2000, accelerated=True)


def test_ad_spin_up_ends_at_a_fixed_point(spun_up):
    model, result = spun_up
    assert (result.years > 100).all()  # from a cold start equilibrium takes centuries
    after, fluxes = model.run_year(result.state.copy())
    change = np.abs(after - result.state)
    assert change.max() < 0.2  # gC or gN m-2 in one more year
    assert np.abs(fluxes["nee"]).max() < 0.02
    np.testing.assert_allclose(fluxes["ndep"] + fluxes["nfix"], fluxes["nloss"], atol=5e-3)  # N inputs = losses
    assert (result.years >= 0).all() and result.years.max() < 2000 - 5
    again = lm.spin_up(model, result.state.copy(), tol=0.02, window=5, max_years=50, record=True)
    assert (again.years == 0).all()  # an equilibrium start meets the criterion at once ...
    assert again.nee.shape == (5, model.n)  # ... and stops once the 5-year window has held


def test_derived_nloss_obeys_the_equilibrium_nitrogen_balance(spun_up):
    """nloss = ndep + nfix holds exactly for the derived output, and matches the spun-up model's own nloss
    (to the spin-up tolerance); every learned output passes through unchanged."""
    model, result = spun_up
    truth = lm.equilibrium_outputs(model, result.state, result.fluxes)
    learned = {name: truth[name] for name in lm.LEARNED_OUTPUTS}
    assert "nloss" not in learned and len(lm.LEARNED_OUTPUTS) == len(lm.OUTPUTS) - len(lm.DERIVED_OUTPUTS)
    full = lm.derive_outputs(learned, model.site.ndep)
    assert list(full) == list(lm.OUTPUTS)
    np.testing.assert_array_equal(full["nloss"], model.site.ndep + truth["nfix"])
    np.testing.assert_allclose(full["nloss"], truth["nloss"], rtol=0.01)
    for name in lm.LEARNED_OUTPUTS:
        assert full[name] is learned[name]
    with pytest.raises(ValueError, match="nfix"):
        lm.derive_outputs({k: v for k, v in learned.items() if k != "nfix"}, model.site.ndep)


def test_output_identities_behind_the_independent_count(spun_up):
    """The outputs not counted as independent are what lm.EXACT_FUNCTIONS / EQUILIBRIUM_FUNCTIONS say:
    uptake = NPP x N per C of growth in any year; Rh = litterfall = NPP and net_nmin = uptake at equilibrium."""
    model, result = spun_up
    truth = lm.equilibrium_outputs(model, result.state, result.fluxes)
    np.testing.assert_allclose(truth["plant_nuptake"], truth["npp"] * model.n_per_c_growth, rtol=1e-12)
    np.testing.assert_allclose(truth["ra"], truth["gpp"] - truth["npp"], rtol=1e-12)
    for name, other in (("hr", "npp"), ("litfall", "npp"), ("net_nmin", "plant_nuptake")):
        np.testing.assert_allclose(truth[name], truth[other], rtol=0.01, atol=0.02)
    assert len(lm.INDEPENDENT_OUTPUTS) == 19 and "nfix" in lm.INDEPENDENT_OUTPUTS and "hr" not in lm.INDEPENDENT_OUTPUTS


def test_done_state_and_the_accelerated_image(spun_up):
    model, result = spun_up
    # leaving AD multiplies the AD pools by AD_FACTORS: to_accelerated is its inverse
    image = lm.to_accelerated(result.state)
    assert image[0, lm.IDX["soil3c"]] == pytest.approx(result.state[0, lm.IDX["soil3c"]] / 100.0)
    np.testing.assert_array_equal(image[:, lm.IDX["leafc"]], result.state[:, lm.IDX["leafc"]])
    # each cell hands over its state of the year its criterion first held, not the last simulated one
    cold = lm.spin_up(model, lm.cold_start(model.n), tol=0.5, window=3, max_years=2000, accelerated=True)
    first = cold.years.argmin()
    assert cold.years[first] < cold.years.max()
    replay = lm.spin_up(model, lm.cold_start(model.n), tol=0.5, window=3, max_years=int(cold.years[first]) + 3,
                        accelerated=True)
    np.testing.assert_allclose(cold.done_state[first], replay.state[first])
    # a cell still in AD at the cap hands over its scaled-back pools
    stuck = lm.spin_up(model, lm.cold_start(model.n), tol=1e-9, window=3, max_years=5, accelerated=True)
    np.testing.assert_allclose(lm.to_accelerated(stuck.done_state), stuck.state)


def test_plain_spin_up_from_cold_start_takes_centuries():
    model = _cells()  # the real turnover rates
    result = lm.spin_up(model, lm.cold_start(model.n), tol=1.0, window=10, max_years=300, record=True)
    assert (result.years == -1).all()  # no cell meets the ELM criterion within 300 years
    assert result.nee.shape == (300, model.n)
    assert (result.nee[0] < 0).all()  # a growing ecosystem is a carbon sink
    assert (np.abs(result.nee[-10:]) > 1.0).any(axis=0).all()  # still drifting at the end


def test_single_linear_pool_reaches_input_over_k():
    """With the same forcing every month, the stem pool (input a_stem NPP, turnover k) settles at
    input / (1 - exp(-k dt)) per step, i.e. ~ annual input / k."""
    model = _fast_cells(constant_months=True)
    result = lm.spin_up(model, lm.cold_start(model.n), tol=0.01, window=5, max_years=2000, accelerated=True)
    assert (result.years >= 0).all()
    state, f = model.step(result.state.copy(), 0)
    woody = (model.turnover[:, 2] > 0) & (f["npp"] > 0)  # a cell frozen all year grows nothing
    assert woody.sum() >= 4
    k, a, npp = model.turnover[woody, 2], model.alloc[woody, 2], f["npp"][woody]
    stem = state[woody, lm.IDX["stemc"]]
    np.testing.assert_allclose(stem, a * npp / (1.0 - np.exp(-k * lm.DT)), rtol=1e-3)
    np.testing.assert_allclose(stem, a * npp * 12 / k, rtol=0.02)
    assert (state[model.alloc[:, 2] == 0, lm.IDX["stemc"]] == 0).all()  # grass grows no wood


def test_outputs_and_state_round_trip():
    model = _cells()
    state = lm.cold_start(model.n)
    for _ in range(30):
        state, fluxes = model.run_year(state)
    out = lm.equilibrium_outputs(model, state, fluxes)
    assert set(out) == set(lm.OUTPUTS) and len(lm.OUTPUTS) >= 30
    np.testing.assert_allclose(lm.state_from_outputs(out), state)
    np.testing.assert_allclose(out["totecosysc"], model.total_c(state))
    assert lm.output_units("soil3n") == "gN m-2" and lm.output_units("gpp") == "gC m-2 yr-1"


def test_bad_inputs_are_rejected_with_the_shapes_seen():
    with pytest.raises(ValueError, match="cells, 12"):
        lm.Forcing(np.zeros((3, 11)), np.zeros((3, 11)), np.zeros((3, 11)))
    with pytest.raises(ValueError, match="pft"):
        lm.Site(clay=np.zeros(2), sand=np.zeros(2), pft=np.array([0, 7]), ndep=np.zeros(2))
    with pytest.raises(ValueError, match="state pools"):
        lm.state_from_outputs({"leafc": np.zeros(2)})


def test_patches_wrap_in_longitude_and_repeat_the_polar_row():
    maps = np.arange(4 * 6, dtype=float).reshape(1, 4, 6)
    patch = extract_patches(maps, np.array([0]), np.array([0]), 3)[0, 0]
    np.testing.assert_array_equal(patch, [[5, 0, 1], [5, 0, 1], [11, 6, 7]])
    with pytest.raises(ValueError, match="odd"):
        extract_patches(maps, np.array([0]), np.array([0]), 2)


def test_holdout_takes_whole_regions_with_a_buffer_and_insolation_is_physical():
    grid = (16, 32)
    rows, cols = np.divmod(np.arange(16 * 32), 32)
    split = holdout_regions(rows, cols, grid, block=4, test=0.2, validation=0.1, buffer=2, seed=0)
    assert (split == TEST).sum() == 6 * 16 and (split == VALIDATION).sum() == 3 * 16  # of the 32 4x4 regions
    tile = (rows // 4) * 100 + cols // 4
    for kind in (TEST, VALIDATION):  # whole regions
        assert all((split[tile == t] == kind).all() for t in np.unique(tile[split == kind]))
    held = split >= TEST
    for i in np.nonzero(split == TRAIN)[0]:  # every training cell is > 2 cells from any held-out cell
        dlon = np.abs(cols[held] - cols[i])
        assert (np.maximum(np.abs(rows[held] - rows[i]), np.minimum(dlon, 32 - dlon)) > 2).all()
    buffer = np.nonzero(split == BUFFER)[0]
    assert buffer.size and all(((np.abs(rows[held] - rows[b]) <= 2)
                                & (np.minimum(np.abs(cols[held] - cols[b]), 32 - np.abs(cols[held] - cols[b])) <= 2)
                                ).any() for b in buffer)
    with pytest.raises(ValueError, match="no training region"):
        holdout_regions(rows, cols, grid, block=8, test=0.5, validation=0.45, buffer=0, seed=0)
    q = insolation(np.array([0.0, 89.0, -89.0]), MONTH)
    assert q[1, 0] == 0.0 and q[2, 0] > 400 and q[1, 5] > 400  # polar night / polar day
    assert 380 < q[0].mean() < 440  # tropics: ~S0 / pi
