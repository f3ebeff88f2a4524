"""Every shipped YAML loads into its config class, and the jobs/ entrypoint runs."""

import subprocess
import sys
from pathlib import Path

import pytest

from raytt import config
from raytt.corpus import IngestConfig
from raytt.runconfig import TrainConfig
from raytt.tune import SearchConfig
from raytt.sequences import BuildConfig, open_shards
from raytt.synth import SynthConfig

ROOT = Path(__file__).resolve().parents[1]
KINDS = {"synth": SynthConfig, "build": BuildConfig, "demo": TrainConfig, "wiki768": TrainConfig, "pydocs": TrainConfig,
         "tune": SearchConfig, "ingest": IngestConfig}


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_loads(path):
    kind = path.stem.split("_")[0]
    assert kind in KINDS, f"{path.name}: name must start with one of {sorted(KINDS)}"
    config.load(KINDS[kind], path)


def test_prepare_job_entrypoint(tmp_path):
    (tmp_path / "s.yaml").write_text("num_vectors: 3000\ndim: 32\nlatent_dim: 8\n")
    subprocess.run([sys.executable, str(ROOT / "jobs" / "prepare.py"), "--out", str(tmp_path / "run"),
                    "--synth-config", str(tmp_path / "s.yaml"), "--build-config",
                    str(ROOT / "configs" / "build_demo.yaml")], check=True, capture_output=True)
    assert open_shards(tmp_path / "run" / "shards").rows("train") > 1000


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("tune_*.yaml")), ids=lambda p: p.name)
def test_shipped_search_space_fits_its_training_config(path, monkeypatch):
    from raytt.tune import base_config, check_space

    monkeypatch.chdir(ROOT)
    search = config.load(SearchConfig, path)
    check_space(search, base_config(search))
