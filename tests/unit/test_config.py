"""Config loading: strict keys, type checks, dotted overrides, value checks."""
import pytest

from orbit.config import ConfigError, RunConfig, load_config, save_config

TINY = "configs/pretrain/tiny.yaml"


def test_shipped_config_loads_and_overrides_apply():
    cfg = load_config(TINY, ["train.max_steps=50", "model.embed_dim=128", "data.leads_hours=[6,24]"])
    assert isinstance(cfg, RunConfig)
    assert cfg.train.max_steps == 50 and cfg.model.embed_dim == 128 and cfg.data.leads_hours == [6, 24]
    assert cfg.model.overrides() == {"embed_dim": 128}


def test_unknown_key_names_key_and_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'train.max_step'.*max_steps"):
        load_config(TINY, ["train.max_step=5"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("modle:\n  preset: tiny\n")
    with pytest.raises(ConfigError, match=r"'modle'.*'model'"):
        load_config(bad)


@pytest.mark.parametrize("override, message", [
    ("train.max_steps=ten", "must be an integer"),
    ("train.activation_checkpointing=2", "true or false"),
    ("train.precision=fp8", "fp32"),
    ("data.channels=[t2m,sst]", "unknown channels"),
    ("eval.years=[1996,1990]", "first <= last"),
    ("data.batch_size=0", ">= 1"),
    ("train.max_steps", "section.key=value"),
    ("train.nonfinite=ignore", "stop"),
    ("finetune.freeze=head", "all_but_head"),
    ("finetune.data_fraction=0", "in \\(0, 1\\]"),
    ("parallel.heartbeat_timeout_s=0", "positive seconds"),
])
def test_bad_values_are_rejected(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, [override])


def test_ints_promote_to_float_and_roundtrip(tmp_path):
    cfg = load_config(TINY, ["train.lr=1"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg and again.hash() == cfg.hash()
    assert load_config(TINY, ["train.seed=1"]).hash() != cfg.hash()


def test_yaml_1_1_surprises_read_as_written(tmp_path):
    # PyYAML reads 1e-3 as a string and 2000-01-01 as a date; both mean what the user wrote
    cfg = load_config(TINY, ["train.lr=1e-3", "train.min_lr=-2E-5", "name=2000-01-01"])
    assert cfg.train.lr == 1e-3 and cfg.train.min_lr == -2e-5 and cfg.name == "2000-01-01"
    with pytest.raises(ConfigError, match="must be a float"):
        load_config(TINY, ["train.lr=fast"])


def test_missing_file_is_a_clear_error():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("configs/nope.yaml")


def test_task_options_are_typed_by_the_task_and_roundtrip(tmp_path):
    cfg = load_config(None, ["task=downscale", "options.store=pairs.zarr", "options.head_features=16"])
    assert type(cfg.options).__name__ == "DownscaleOptions"
    assert (cfg.options.store, cfg.options.head_features) == ("pairs.zarr", 16)
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    with pytest.raises(ConfigError, match=r"unknown config key 'options.stor'; valid keys here: \['store'"):
        load_config(None, ["task=downscale", "options.stor=x"])
    with pytest.raises(ConfigError, match="task 'pretrain' takes no options section"):
        load_config(None, ["options.store=x"])
