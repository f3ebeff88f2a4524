"""Tune: a search runs trials of TorchTrainers, ASHA stops a bad trial on full-bank recall, best.yaml trains as
is, and a killed search resumes without re-running finished trials."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from helpers import QUIET

from raytt import config
from raytt.errors import ConfigError
from raytt.training.config import TrainConfig
from raytt.training.driver import train
from raytt.tuning import SearchConfig, load_search, tune


def _base(tmp_path, bank, shards, epochs):
    path = tmp_path / "base.yaml"
    cfg = config.load(
        TrainConfig,
        None,
        [
            f"data.bank={bank}",
            f"data.shards={shards}",
            f"storage={tmp_path / 'runs'}",
            "workers=1",
            "data.batch_size=64",
            "data.shuffle_buffer=2000",
            "data.cache=true",
            "tower.hidden=32",
            "tower.residual=false",
            "loss.tau=0.1",
            "optim.warmup_steps=5",
            "log_every=20",
            "val_queries=300",
            f"optim.epochs={epochs}",
            "checkpoint_every=100000",
        ],
    )
    config.dump(cfg, path)
    return path


def _search(tmp_path, base, name, lrs, **over):
    data = {
        "name": name,
        "storage": str(tmp_path / "tune"),
        "train": str(base),
        "search": "grid",
        "num_samples": 1,
        "max_concurrent_trials": 1,
        "space": {"optim.lr": {"kind": "grid", "values": lrs}},
        **over,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return config.load(SearchConfig, path), path


def test_search_stops_a_bad_trial_and_best_yaml_trains(ray_local, synth_bank, synth_shards, tmp_path):
    search, _ = _search(
        tmp_path,
        _base(tmp_path, synth_bank, synth_shards, 3),
        "asha",
        [0.005, 10.0],
        grace_period=1,
        reduction_factor=2,
    )
    rows = tune(search, progress=QUIET)
    assert len(rows) == 2
    good, bad = rows
    assert good["params"] == {"optim.lr": 0.005} and good["epochs"] == 3 and not good["stopped_early"]
    assert bad["params"] == {"optim.lr": 10.0} and bad["stopped_early"] and bad["epochs"] < 3, (
        "ASHA must stop lr=10 on full-bank val recall before the last epoch"
    )
    run_dir = search.run_dir
    assert (run_dir / "results.csv").read_text().count("\n") == 3
    trials = sorted(p for p in (run_dir / "trials").iterdir() if p.is_dir())
    assert len(trials) == 2 and all(list((t / "tensorboard").glob("events.out.tfevents.*")) for t in trials), (
        "each trial's run directory holds its own TensorBoard events"
    )
    best = config.load(TrainConfig, run_dir / "best.yaml")
    assert best.optim.lr == 0.005 and best.name == "asha-best"
    summary = train(best, progress=QUIET)
    assert summary["epochs"] == 3


def test_killed_search_resumes_without_rerunning_finished_trials(ray_local, synth_bank, synth_shards, tmp_path):
    """SIGKILL the search once Tune's saved state shows trial 1 finished and trial 2 running: no clock involved."""
    search, path = _search(
        tmp_path, _base(tmp_path, synth_bank, synth_shards, 2), "killed", [0.005, 0.004], scheduler="fifo"
    )
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "raytt.cli", "tune", "--config", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while sorted(_saved_statuses(search.run_dir).values()) != ["RUNNING", "TERMINATED"]:
            assert proc.poll() is None, "the search ended before it could be killed"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = [t for t, status in _saved_statuses(search.run_dir).items() if status == "TERMINATED"]
    assert len(finished) == 1
    rows = tune(load_search(search.run_dir), resume=True, progress=QUIET)
    assert sorted(r["epochs"] for r in rows) == [2, 2]
    trials = search.run_dir / "trials"
    starts = {t.name: len((t / "starts.log").read_text().splitlines()) for t in trials.glob("*")}
    assert starts[finished[0]] == 1, f"finished trial {finished[0]} was started again on resume"
    assert sorted(starts.values()) == [1, 2], "the killed trial, and only it, runs again"


def _saved_statuses(search_dir) -> dict[str, str]:
    """Trial id -> status in the newest experiment state Tune saved: what a resume starts from."""
    files = sorted(search_dir.glob("experiment_state-*.json"))
    try:
        state = json.loads(files[-1].read_text()) if files else {"trial_data": []}
    except (json.JSONDecodeError, FileNotFoundError):
        return {}  # being replaced right now; the next look sees it whole
    trials = [json.loads(trial) for trial, _ in state["trial_data"]]
    return {t["trial_id"]: t["status"] for t in trials}


def test_optuna_search_runs_on_uri_storage(ray_local, synth_bank, synth_shards, tmp_path):
    """Optuna's TPE, with the search (Tune state, trials, results) on a pyarrow-filesystem URI."""
    base = _base(tmp_path, synth_bank, synth_shards, 1)
    store = tmp_path / "bucket"
    search, _ = _search(
        tmp_path,
        base,
        "tpe",
        [0.01],
        search="optuna",
        num_samples=2,
        scheduler="fifo",
        storage=f"file://{store}",
        space={
            "loss.tau": {"kind": "loguniform", "low": 0.05, "high": 0.2},
            "tower.query": {"kind": "choice", "values": ["gru", "lstm"]},
        },
    )
    rows = tune(search, progress=QUIET)
    assert len(rows) == 2 and all(r["epochs"] == 1 and 0.05 <= r["params"]["loss.tau"] <= 0.2 for r in rows)
    remote = store / "tpe"
    assert "optuna" in (remote / "search.yaml").read_text()
    assert (remote / "results.csv").is_file() and (remote / "best.yaml").is_file()
    for row in rows:
        trial = remote / "trials" / row["trial"]
        assert (trial / "metrics.jsonl").is_file() and (trial / "starts.log").is_file()
        assert [p for p in trial.glob("checkpoint_0*") if p.is_dir()], "Ray Train wrote the trial's checkpoints"
    assert load_search(f"file://{store}/tpe").remote == f"file://{store}/tpe"


def test_search_config_refuses_bad_metrics_and_keys(synth_bank, synth_shards, tmp_path):
    base = _base(tmp_path, synth_bank, synth_shards, 2)
    with pytest.raises(ConfigError, match="full-bank validation metric"):
        _search(tmp_path, base, "m", [0.01], metric="train/loss")
    with pytest.raises(ConfigError, match="full-bank validation metric"):
        _search(tmp_path, base, "m", [0.01], metric="val/in_batch_acc")
    with pytest.raises(ConfigError, match="optuna samples its own points"):
        _search(tmp_path, base, "m", [0.01], search="optuna")
    with pytest.raises(ConfigError, match="grid needs every space parameter"):
        _search(tmp_path, base, "m", [0.01], space={"loss.tau": {"kind": "loguniform", "low": 0.01, "high": 0.1}})
    from raytt.tuning import base_config, check_space

    search, _ = _search(tmp_path, base, "k", [0.01], space={"optim.lrr": {"kind": "grid", "values": [0.1]}})
    with pytest.raises(ConfigError, match="space.optim.lrr"):
        check_space(search, base_config(search))
    search, _ = _search(
        tmp_path, base, "s", [0.01], space={"mining.schedule": {"kind": "grid", "values": ["0:none;1-5:8@0.9-0.8"]}}
    )
    with pytest.raises(ConfigError, match="space.mining.schedule"):
        check_space(search, base_config(search))


@pytest.mark.parametrize(
    "param, problem",
    [
        ({"kind": "choice"}, "a choice parameter needs values"),
        ({"kind": "uniform", "low": 0.5, "high": 0.1}, "needs low < high"),
        ({"kind": "loguniform", "low": 0.0, "high": 0.1}, "needs low > 0"),
        ({"kind": "normal", "low": 0.0, "high": 0.1}, "must be one of"),
    ],
)
def test_search_space_refuses_bad_params(synth_bank, synth_shards, tmp_path, param, problem):
    base = _base(tmp_path, synth_bank, synth_shards, 2)
    with pytest.raises(ConfigError, match=problem):
        _search(tmp_path, base, "p", [0.01], search="random", space={"loss.tau": param})
