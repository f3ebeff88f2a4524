"""The `raytt` console script as a user runs it: exit codes, output, and clear one-line errors."""

import subprocess
import sys

import pytest

from raytt.cli import run

pytestmark = pytest.mark.integration  # each test runs the console script in its own process


def raytt(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "raytt.cli", *map(str, args)], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"raytt {args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_synth_build_inspect(tmp_path):
    bank, shards = tmp_path / "bank", tmp_path / "shards"
    out = raytt("synth", "--out", bank, "--num-vectors", 3000, "--dim", 48, "--latent-dim", 12, "--report").stdout
    assert "oracle" in out and "last" in out and "R@10" in out
    raytt("build", "--bank", bank, "--out", shards, "--context-len", 3, "--split", "0.8,0.1,0.1", "--seed", 1)
    out = raytt("inspect", shards).stdout
    assert "train&test: 0" in out and "val&test: 0" in out and "context_len: 3" in out
    assert "sampled rows checked against the bank" in out
    assert "verified: sha256" in raytt("inspect", bank).stdout


def test_config_file_and_flags(tmp_path):
    (tmp_path / "s.yaml").write_text("num_vectors: 2000\ndim: 32\nlatent_dim: 8\nseed: 4\n")
    run(["synth", "--out", str(tmp_path / "b"), "--config", str(tmp_path / "s.yaml"), "--set", "seed=5", "--dim", "40"])
    from raytt.bank import read_manifest

    assert read_manifest(tmp_path / "b").embedder_id == "raytt-synth/1(seed=5,dim=40)"


@pytest.mark.parametrize(
    "args, message",
    [
        (["build", "--bank", "nowhere", "--out", "x"], "nowhere/manifest.json: no bank manifest here"),
        (["train", "--set", "tower.query=cnn"], "tower.query must be one of"),
    ],
)
def test_the_console_script_refuses_in_one_line(tmp_path, args, message):
    """The installed entry point as a process (tests/test_refusals.py holds the whole matrix, in process)."""
    proc = subprocess.run([sys.executable, "-m", "raytt.cli", *args], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_too_little_data_names_the_override(tmp_path):
    raytt("synth", "--out", tmp_path / "b", "--num-vectors", 500, "--dim", 16, "--latent-dim", 8)
    proc = raytt("build", "--bank", tmp_path / "b", "--out", tmp_path / "s", check=False)
    assert proc.returncode == 2 and "too little data" in proc.stderr and "--min-train-pairs" in proc.stderr
    assert not (tmp_path / "s").exists()
    raytt("build", "--bank", tmp_path / "b", "--out", tmp_path / "s", "--min-train-pairs", 10)


def test_eval_baselines_only_and_compare(synth_shards, tmp_path):
    out = raytt("eval", "--shards", synth_shards, "--out", tmp_path / "e", "--max-queries", 200).stdout
    assert "oracle check passed" in out and "context chunks excluded" in out and "exp0.7" in out
    assert (tmp_path / "e" / "report.md").is_file()
    table = raytt("compare", tmp_path / "e", "--view", "context_excluded").stdout
    assert "context excluded" in table and "oracle" in table


def test_refusals_that_need_real_shards(synth_shards, synth_bank, tmp_path):
    proc = raytt(
        "train",
        "--set",
        f"data.shards={synth_shards}",
        "--set",
        f"data.bank={synth_bank}",
        "--set",
        "data.batch_size=100000",
        "--storage",
        tmp_path,
        check=False,
    )
    assert proc.returncode == 2 and "fewer than one step" in proc.stderr
    assert not (tmp_path / "demo").exists()
    raytt("eval", "--shards", synth_shards, "--out", tmp_path / "e", "--max-queries", 50)
    proc = raytt("compare", tmp_path / "e", "--view", "sideways", check=False)
    assert proc.returncode == 2 and "view must be one of" in proc.stderr
