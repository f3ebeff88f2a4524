import pytest

from raytt import config
from raytt.errors import ConfigError
from raytt.sequences import BuildConfig
from raytt.synthetic import SynthConfig


def test_round_trip_through_yaml(tmp_path):
    cfg = BuildConfig(context_len=7, split=(0.7, 0.2, 0.1), seed=3)
    config.dump(cfg, tmp_path / "b.yaml")
    assert config.load(BuildConfig, tmp_path / "b.yaml") == cfg


def test_overrides_beat_the_file_and_parse_types(tmp_path):
    (tmp_path / "s.yaml").write_text("dim: 768\nseed: 1\n")
    cfg = config.load(SynthConfig, tmp_path / "s.yaml", ["seed=5", "noise=0.25"])
    assert (cfg.dim, cfg.seed, cfg.noise) == (768, 5, 0.25)


def test_comma_separated_tuple():
    assert config.load(BuildConfig, None, ["split=0.6,0.2,0.2"]).split == (0.6, 0.2, 0.2)


def test_unknown_key_names_file_and_key(tmp_path):
    (tmp_path / "s.yaml").write_text("dimm: 768\n")
    with pytest.raises(ConfigError, match=r"s\.yaml.*unknown key\(s\) \['dimm'\]"):
        config.load(SynthConfig, tmp_path / "s.yaml")


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="dim must be an integer"):
        config.load(SynthConfig, None, ["dim=big"])


def test_invalid_value_is_refused():
    with pytest.raises(ConfigError, match="split must be three shares"):
        config.load(BuildConfig, None, ["split=0.5,0.1,0.1"])


def test_malformed_override():
    with pytest.raises(ConfigError, match="expected key=value"):
        config.load(BuildConfig, None, ["context_len"])
