"""The forecast fine-tuning task: scoring with known answers, rollout, data fraction, loading a
pretrained model with replaced and frozen parts, and the predictions dataset."""
import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from orbit.config import load_config
from orbit.data.loader import evaluation_batches
from orbit.synthetic.toy_earth import synthesize
from orbit.registry import build_task
from orbit.tasks.forecast import (ForecastTask, InitTimeSubset, leading_fraction,
                                  scorecard_markdown, scorecard_rows)
from orbit.tasks.forecast_eval import channel_attrs, forecast_dataset, score_forecasts
from orbit.tasks.rollout import rollout

CONFIG = Path(__file__).resolve().parents[2] / "configs/finetune/forecast/tiny.yaml"
SMALL_MODEL = ["model.embed_dim=32", "model.depth=1", "model.num_heads=2"]


@pytest.fixture(scope="module")
def reanalysis_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("reanalysis")
    synthesize(root, sources=["reanalysis"], years=(1990, 1992), grid=(16, 32), train_years=(1990, 1990))
    return root


def make_task(root, *overrides) -> ForecastTask:
    cfg = load_config(CONFIG, [f"data.root={root}", "data.train_years=[1990,1990]",
                               "eval.validation_years=[1991,1991]", "eval.years=[1992,1992]",
                               "data.leads_hours=[6,12,24]", "eval.leads_hours=[6,12,24]", 
                               "eval.max_samples=6", "eval.batch_size=4", "options.map_lead_hours=24",
                               *SMALL_MODEL, *overrides])
    return build_task(cfg)


class Forward:
    """What `engine.forward` is for a plain model."""

    def __init__(self, model):
        self.model = model.eval()

    def __call__(self, inputs):
        return self.model(*inputs)


# --------------------------------------------------------------------------- scoring


def test_perfect_forecast_scores_rmse_zero_acc_one_and_persistence_equals_its_baseline(reanalysis_root):
    task = make_task(reanalysis_root)
    leads = [6, 12, 24]
    batches = list(evaluation_batches(task.eval_set, leads, 4, 6))
    perfect = score_forecasts(((b, b.y) for b in batches), task.eval_set, leads)["skill"]
    persistent = score_forecasts(((b, b.x) for b in batches), task.eval_set, leads)["skill"]
    for channel in ("z500", "t850", "t2m"):
        for lead in ("6", "24"):
            assert perfect[channel][lead]["model"]["rmse"] == pytest.approx(0.0, abs=1e-6)
            assert perfect[channel][lead]["model"]["acc"] == pytest.approx(1.0, abs=1e-5)
            assert persistent[channel][lead]["model"] == persistent[channel][lead]["persistence"]
            assert persistent[channel][lead]["persistence"]["rmse"] > 0
    # persistence error grows with lead on the toy Earth, as on the real one
    assert persistent["z500"]["24"]["persistence"]["rmse"] > persistent["z500"]["6"]["persistence"]["rmse"]


def _skill(direct, rollout_rmse, persistence, climatology):
    score = lambda rmse, acc=0.5: {"rmse": rmse, "acc": acc}  # noqa: E731
    return {"direct": score(direct), "rollout": score(rollout_rmse), "persistence": score(persistence),
            "climatology": score(climatology, None)}


def test_scorecard_verdicts_need_both_baselines_beaten():
    skill = {"z500": {"6": _skill(1.0, 1.5, 2.0, 3.0), "168": _skill(2.9, None, 4.0, 2.5)}}
    rows = scorecard_rows(skill)
    assert [row[-2:] for row in rows] == [["yes", "yes"], ["no", "-"]]
    assert rows[1][3] == "-" and rows[1][5] == "2.5"  # missing rollout score, climatology RMSE
    table = scorecard_markdown(skill)
    assert "direct beats persistence and climatology (RMSE) in 1/2" in table
    assert "rollout beats persistence and climatology (RMSE) in 1/1" in table
    assert table.count("\n| z500 |") == 2


# --------------------------------------------------------------------------- rollout


def test_rollout_yields_each_step_and_recomputes_the_valid_time(reanalysis_root):
    task = make_task(reanalysis_root)
    batch = next(iter(evaluation_batches(task.eval_set, [24], 2)))
    seen = []

    def predict(b):
        seen.append((b.time.clone(), b.lead_hours.clone()))
        return b.x + 1.0

    steps = list(rollout(predict, batch, step_hours=6, steps=4))
    assert [lead for lead, _ in steps] == [6.0, 12.0, 18.0, 24.0]
    assert torch.allclose(steps[-1][1], batch.x + 4.0)  # each step fed the previous forecast
    hour_ns = 3_600_000_000_000
    assert [int((t - batch.time)[0]) // hour_ns for t, _ in seen] == [0, 6, 12, 18]
    assert all(torch.all(lead == 6.0) for _, lead in seen)
    with pytest.raises(ValueError, match="steps >= 1"):
        next(rollout(predict, batch, step_hours=6, steps=0))


def test_one_rollout_step_equals_the_direct_six_hour_forecast(reanalysis_root):
    task = make_task(reanalysis_root)
    torch.manual_seed(0)
    forward = Forward(task.build_model())
    batch = next(iter(evaluation_batches(task.eval_set, [24], 3)))  # its lead (24 h) is not the step
    with torch.no_grad():
        (lead, first), = list(task.rollout(forward, batch, steps=1))
        direct = task.predict(forward, dataclasses.replace(batch, lead_hours=torch.full_like(batch.lead_hours, 6.0)))
        second = list(task.rollout(forward, batch, steps=2))[1][1]
    assert lead == 6.0
    torch.testing.assert_close(first, direct, rtol=0, atol=0)
    assert not torch.allclose(second, first)


def test_rollout_forecasts_pair_each_scored_lead_with_its_truth(reanalysis_root):
    task = make_task(reanalysis_root, "options.rollout_step_hours=12")
    assert task.rollout_leads == [12, 24]
    pairs = list(task.rollout_forecasts(lambda inputs: torch.zeros_like(inputs[0][:, :14])))
    # a zero residual forecast is persistence: its input is the init state at every lead
    assert sorted({float(b.lead_hours[0]) for b, _ in pairs}) == [12.0, 24.0]
    for b, forecast in pairs:
        torch.testing.assert_close(forecast, b.x)


# --------------------------------------------------------------------------- data fraction


def test_leading_fraction_is_the_earliest_span_of_the_right_size():
    times = np.array(["1990-01-03", "1990-01-01", "1990-01-02", "1990-01-05", "1990-01-04"], dtype="datetime64[ns]")
    assert leading_fraction(times, 0.4).tolist() == [1, 2]
    assert leading_fraction(times, 0.5).tolist() == [0, 1, 2]  # ceil(2.5)
    assert leading_fraction(times, 1.0).tolist() == [0, 1, 2, 3, 4]
    assert leading_fraction(times, 0.4).tolist() == leading_fraction(times.copy(), 0.4).tolist()
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        leading_fraction(times, 0.0)


def test_data_fraction_subsamples_training_batches_deterministically(reanalysis_root):
    task = make_task(reanalysis_root, "finetune.data_fraction=0.1", "data.batch_size=4")
    full = len(task.train_set)
    assert len(task.train_subset) == math.ceil(0.1 * full)
    cutoff = task.train_set.init_times()[len(task.train_subset) - 1]

    def first_times():
        loader = task.train_batches(0, 1)
        return [b.time.clone() for b, _ in zip(loader, range(30))]

    times = first_times()
    assert all((t <= cutoff.astype(np.int64)).all() for t in torch.stack(times).numpy())
    assert all(torch.equal(a, b) for a, b in zip(times, first_times()))
    subset = InitTimeSubset(task.train_set, np.array([5, 7]))
    assert len(subset) == 2 and subset[(1, 6.0)].time == task.train_set[(7, 6.0)].time


# --------------------------------------------------------------------------- pretrained init


def test_prepare_model_loads_all_but_the_replaced_head_and_freezes_the_backbone(reanalysis_root, tmp_path):
    torch.manual_seed(1)
    pretrained = make_task(reanalysis_root).build_model().state_dict()
    export = tmp_path / "pretrained.pt"
    torch.save(pretrained, export)
    torch.manual_seed(2)
    model = make_task(reanalysis_root, f"finetune.init={export}", "finetune.replace=[head]",
                      "finetune.freeze=backbone").build_model()
    loaded = model.state_dict()
    assert all(torch.equal(loaded[name], pretrained[name]) for name in loaded if not name.startswith("head."))
    assert not torch.equal(loaded["head.weight"], pretrained["head.weight"])  # replaced: freshly initialized
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(name.startswith("blocks.") for name in trainable)
    assert {"head.weight", "var_embed.weight", "lead_embed.fc1.weight"} <= trainable


def test_missing_pretrained_tensor_must_be_listed_in_replace(reanalysis_root, tmp_path):
    state = make_task(reanalysis_root).build_model().state_dict()
    del state["head.weight"]
    export = tmp_path / "partial.pt"
    torch.save(state, export)
    with pytest.raises(ValueError, match="finetune.replace"):
        make_task(reanalysis_root, f"finetune.init={export}").build_model()


# --------------------------------------------------------------------------- options and predictions


@pytest.mark.parametrize("override, message", [
    ("options.score_channels=[z500,msl]", "score_channels"),
    ("options.rollout_step_hours=18", "rollout_step_hours"),
    ("options.map_lead_hours=48", "map_lead_hours"),
])
def test_invalid_options_are_clear_errors(reanalysis_root, override, message):
    with pytest.raises(ValueError, match=message):
        make_task(reanalysis_root, override)


def test_validation_and_test_years_are_scored_apart_and_must_not_overlap(reanalysis_root):
    task = make_task(reanalysis_root, "eval.leads_hours=[6,12]", "eval.max_samples=2", "options.map_lead_hours=12")
    task.model = task.build_model().eval()
    with torch.no_grad():
        results = task.evaluate(SimpleNamespace(forward=lambda inputs: task.model(*inputs)), step=0)
    test, validation = results["skill"], results["validation_skill"]
    assert set(test) == set(validation) == set(task.options.score_channels)
    assert test["z500"]["6"]["persistence"] != validation["z500"]["6"]["persistence"]  # different years
    assert "val/direct_rmse_over_climatology" in results["scalars"]
    with pytest.raises(ValueError, match="eval.validation_years .* overlaps eval.years"):
        make_task(reanalysis_root, "eval.validation_years=[1992,1992]")
    with pytest.raises(ValueError, match="data.train_years .* overlaps eval.validation_years"):
        make_task(reanalysis_root, "eval.validation_years=[1990,1991]")


def test_forecast_dataset_has_cf_coordinates_and_physical_units():
    values = np.arange(2 * 3 * 2 * 4 * 8, dtype=np.float32).reshape(2, 3, 2, 4, 8)
    init = np.array(["1993-01-01T00", "1993-01-02T06"], dtype="datetime64[ns]")
    ds = forecast_dataset(values, ["z500", "t2m"], init, [6, 24, 168], np.linspace(-60, 60, 4),
                          np.arange(8) * 45.0, {"title": "test"})
    assert ds["z500"].dims == ("init_time", "lead_time", "lat", "lon")
    assert ds["z500"].attrs["units"] == "m2 s-2" and "500 hPa" in ds["z500"].attrs["long_name"]
    assert ds["t2m"].attrs["units"] == "K"
    np.testing.assert_array_equal(ds["t2m"].values, values[:, :, 1])
    assert ds["lead_time"].values[-1] == np.timedelta64(168, "h")
    assert ds["valid_time"].values[1, 1] == np.datetime64("1993-01-03T06", "ns")
    assert ds["init_time"].attrs["standard_name"] == "forecast_reference_time"
    assert channel_attrs("unknown") == {}


def test_run_comparison_summarizes_skill_relative_to_climatology(tmp_path):
    from orbit.tasks.forecast_compare import comparison_markdown, normalized_rmse, wins

    skill = {"z500": {"6": _skill(1.0, 1.5, 2.0, 4.0), "168": _skill(6.0, None, 4.0, 4.0)}}
    assert normalized_rmse(skill) == pytest.approx((1.0 / 4.0 + 6.0 / 4.0) / 2)
    assert normalized_rmse(skill, "rollout") == pytest.approx(1.5 / 4.0)
    assert wins(skill) == (1, 2) and wins(skill, "rollout") == (1, 1)
    table = comparison_markdown({"pretrained": {"skill": skill, "validation_skill": skill}, "scratch": {"skill": skill}})
    assert "| pretrained | 0.875 | 0.875 | 1/2 | 0.375 | 1/1 |" in table
    assert "| scratch | - | 0.875 | 1/2 | 0.375 | 1/1 |" in table
    assert "| z500 | 168 h | 6 | 6 | 4 | 4 |" in table


def test_one_channel_with_solar_forcing_masks_every_forcing_token(reanalysis_root):
    """The mask covers the channels and both solar-forcing fields, whatever the channel count."""
    task = make_task(reanalysis_root, "data.channels=[t850]", "options.score_channels=[t850]", "data.solar_forcing=true")
    batch = next(iter(task.train_batches(0, 1)))
    x, _, _, mask = task.model_inputs(batch)
    assert x.shape[1] == mask.shape[1] == 1 + len(task.forcing_names) == 3
    model = task.build_model().eval()
    with torch.no_grad():
        assert torch.isfinite(model(*task.model_inputs(batch))).all()
