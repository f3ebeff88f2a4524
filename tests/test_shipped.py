"""Every shipped YAML loads into its config class, and the jobs/ entrypoint runs."""

import os
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


@pytest.mark.parametrize("script", ["train.py", "tune.py", "ingest.py"])
def test_job_entrypoints_refuse_bad_flags_and_a_missing_cluster(script, tmp_path):
    """jobs/*.py check their flags before connecting, and never start a private Ray when no cluster runs."""
    run = lambda *args: subprocess.run([sys.executable, str(ROOT / "jobs" / script), *args], cwd=ROOT,  # noqa: E731
                                       capture_output=True, text=True, timeout=120,
                                       env={**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
                                            "RAY_TMPDIR": str(tmp_path)})
    flags = {"train.py": ["--config", "configs/demo.yaml"], "tune.py": ["--config", "configs/tune_demo.yaml"],
             "ingest.py": ["--input", str(tmp_path), "--out", str(tmp_path / "bank")]}[script]
    bad = run(*flags, "--no-such-flag")
    assert bad.returncode == 2 and "unrecognized arguments: --no-such-flag" in bad.stderr
    alone = run(*flags)
    assert alone.returncode == 2 and "no Ray cluster" in alone.stderr
