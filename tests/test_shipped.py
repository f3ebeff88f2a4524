"""Every shipped YAML loads into its config class, and the jobs/ entrypoint runs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from raytt import config
from raytt.corpus.config import IngestConfig
from raytt.rollout_tuning import RolloutSearch, is_rollout_search
from raytt.sequences import BuildConfig, open_shards
from raytt.synthetic import SynthConfig
from raytt.text.config import TextTrainConfig
from raytt.training.config import TrainConfig
from raytt.tuning import SearchConfig

ROOT = Path(__file__).resolve().parents[1]
KINDS = {
    "synth": SynthConfig,
    "build": BuildConfig,
    "demo": TrainConfig,
    "wiki768": TrainConfig,
    "pydocs": TrainConfig,
    "multi": TrainConfig,
    "finetune": TrainConfig,
    "tune": SearchConfig,
    "ingest": IngestConfig,
    "text": TextTrainConfig,
}


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_loads(path):
    kind = path.stem.split("_")[0]
    assert kind in KINDS, f"{path.name}: name must start with one of {sorted(KINDS)}"
    rollout = is_rollout_search(config.read_mapping(path))
    config.load(RolloutSearch if rollout else KINDS[kind], path)


@pytest.mark.integration
def test_prepare_job_entrypoint(tmp_path):
    (tmp_path / "s.yaml").write_text("num_vectors: 3000\ndim: 32\nlatent_dim: 8\n")
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "jobs" / "prepare.py"),
            "--out",
            str(tmp_path / "run"),
            "--synth-config",
            str(tmp_path / "s.yaml"),
            "--build-config",
            str(ROOT / "configs" / "build_demo.yaml"),
        ],
        check=True,
        capture_output=True,
    )
    assert open_shards(tmp_path / "run" / "shards").rows("train") > 1000


TRAINING_SEARCHES = [p for p in sorted((ROOT / "configs").glob("tune_*.yaml")) if "rollout" not in p.stem]


@pytest.mark.parametrize("path", TRAINING_SEARCHES, ids=lambda p: p.name)
def test_shipped_search_space_fits_its_training_config(path, monkeypatch):
    from raytt.tuning import base_config, check_space

    monkeypatch.chdir(ROOT)
    search = config.load(SearchConfig, path)
    check_space(search, base_config(search))


@pytest.mark.integration
@pytest.mark.parametrize("script", ["train.py", "tune.py", "ingest.py"])
def test_job_entrypoints_refuse_bad_flags_and_a_missing_cluster(script, synth_bank, synth_shards, tmp_path):
    """jobs/*.py check their flags and inputs before connecting, and never start a private Ray when no cluster runs."""
    run = lambda *args: subprocess.run(
        [sys.executable, str(ROOT / "jobs" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": str(tmp_path)},
    )
    train = tmp_path / "demo.yaml"
    train.write_text(
        (ROOT / "configs" / "demo.yaml")
        .read_text()
        .replace("runs/demo/bank", str(synth_bank))
        .replace("runs/demo/shards", str(synth_shards))
        .replace("storage: runs/demo", f"storage: {tmp_path / 'runs'}")
    )
    search = tmp_path / "tune.yaml"
    search.write_text(
        (ROOT / "configs" / "tune_demo.yaml")
        .read_text()
        .replace("train: configs/demo.yaml", f"train: {train}")
        .replace("storage: runs/tune", f"storage: {tmp_path / 'tune'}")
    )
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("One sentence here. Another one there.\n")
    flags = {
        "train.py": ["--config", str(train)],
        "tune.py": ["--config", str(search)],
        "ingest.py": ["--input", str(tmp_path / "docs"), "--out", str(tmp_path / "bank")],
    }[script]
    bad = run(*flags, "--no-such-flag")
    assert bad.returncode == 2 and "unrecognized arguments: --no-such-flag" in bad.stderr
    alone = run(*flags)
    assert alone.returncode == 2 and "no Ray cluster" in alone.stderr, alone.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "tune").exists() and not (tmp_path / "bank").exists()
