"""Training: a tiny run converges, re-running resumes, two workers gather candidates and survive a failure."""

import json
import math
import re

import pytest
import torch
from helpers import QUIET

from raytt import config
from raytt.checkpoints import CheckpointError, read_meta
from raytt.commands import evaluate
from raytt.errors import ConfigError, RayttError
from raytt.rundir import RunDir
from raytt.training.config import TrainConfig
from raytt.training.driver import train
from raytt.training.setup import ema_update


def _cfg(bank, shards, storage, **over) -> TrainConfig:
    base = [
        f"data.bank={bank}",
        f"data.shards={shards}",
        f"storage={storage}",
        "data.batch_size=64",
        "data.shuffle_buffer=2000",
        "tower.hidden=64",
        "tower.residual=false",
        "loss.tau=0.1",
        "optim.lr=5e-3",
        "optim.warmup_steps=5",
        "log_every=10",
        "val_queries=400",
    ]
    return config.load(TrainConfig, None, base + [f"{k}={v}" for k, v in over.items()])


def _rows(run_dir):
    return RunDir(run_dir).rows()


def test_tiny_run_converges_and_evaluates(ray_local, synth_bank, synth_shards, tmp_path):
    cfg = _cfg(synth_bank, synth_shards, tmp_path, name="tiny", workers=0, **{"optim.epochs": 8})
    summary = train(cfg, progress=QUIET)
    assert {"config.yaml", "metrics.jsonl", "summary.json", "best"} <= {p.name for p in cfg.run_dir.iterdir()}
    assert summary["epochs"] == 8
    result = evaluate(run=cfg.run_dir, split="val", max_queries=400, progress=QUIET)
    val = result["views"]["all"]
    assert val["model"]["R@10"] > val["last"]["R@10"]
    assert val["model"]["R@10"] == pytest.approx(summary["best"]["value"])  # validation == evaluation
    assert (cfg.run_dir / "eval" / "val" / "training_curves.png").is_file()


def test_a_run_can_be_watched(ray_local, synth_bank, synth_shards, tmp_path):
    """train.log with timestamped step lines and ETA, TensorBoard and MLflow, curves, elapsed_s on every row."""
    cfg = _cfg(
        synth_bank,
        synth_shards,
        tmp_path,
        name="watched",
        workers=0,
        tracking="tensorboard,mlflow",
        **{"optim.epochs": 2},
    )
    train(cfg, progress=QUIET)
    log = (cfg.run_dir / "train.log").read_text().splitlines()
    steps = [line for line in log if " step " in line and "samples/s" in line]
    assert steps and all(
        re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  step \d+/\d+ \(epoch \d/2, batch", s) for s in steps
    )
    assert all(" lr " in s and "ETA" in s for s in steps)
    assert any("validation took" in line for line in log) and any("train: done" in line for line in log)
    rows = RunDir(cfg.run_dir).all_rows()
    assert all("time" in r and "elapsed_s" in r for r in rows if r["kind"] != "start")
    assert all(r["val_seconds"] > 0 for r in rows if r["kind"] == "epoch")
    assert (cfg.run_dir / "training_curves.png").stat().st_size > 0
    events = list((cfg.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "TensorBoard event files in the run directory"
    assert {"train/loss", "val/R_at_10", "lr"} <= _scalar_tags(events[0])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{(cfg.run_dir / 'mlflow.db').resolve()}")
    (run,) = client.search_runs([client.get_experiment_by_name("watched").experiment_id])
    assert run.data.params["loss.tau"] == "0.1" and run.data.params["tower.query"] == cfg.tower.query
    assert {"train/loss", "val/R_at_10", "lr"} <= set(run.data.metrics)


def _scalar_tags(path) -> set[str]:
    """The scalar tags of a TensorBoard event file (TFRecord framing: length, crc, event proto, crc)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    tags, data = set(), path.read_bytes()
    at = 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at : at + 8])
        event = Event.FromString(data[at + 12 : at + 12 + length])
        tags |= {v.tag for v in event.summary.value if v.HasField("simple_value")}
        at += 12 + length + 4
    return tags


def test_mlflow_tracking_is_refused_without_its_package(monkeypatch, synth_bank, synth_shards, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    cfg = _cfg(synth_bank, synth_shards, tmp_path, name="nomlflow", workers=0, tracking="tensorboard,mlflow")
    with pytest.raises(ConfigError, match=r"raytt\[mlflow\]"):
        train(cfg, progress=QUIET)
    assert not cfg.run_dir.exists()


def test_rerunning_a_name_resumes_where_it_stopped(ray_local, synth_bank, synth_shards, tmp_path):
    cached = {"data.cache": "true"}  # the materialized dataset path, epoch after epoch
    first = train(
        _cfg(synth_bank, synth_shards, tmp_path, name="resume", workers=0, **{"optim.epochs": 1}, **cached),
        progress=QUIET,
    )
    second = train(
        _cfg(synth_bank, synth_shards, tmp_path, name="resume", workers=0, **{"optim.epochs": 2}, **cached),
        progress=QUIET,
    )
    assert second["steps"] == 2 * first["steps"]
    steps = [r["step"] for r in RunDir(tmp_path / "resume").all_rows() if r["kind"] == "train"]
    assert steps == sorted(set(steps)), "a resumed run must not replay steps it had checkpointed"


def test_two_workers_gather_candidates_and_survive_an_injected_failure(
    ray_local, synth_bank, synth_shards, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # relative storage: workers run in another directory, the driver resolves it
    cfg = _cfg(
        synth_bank,
        synth_shards,
        "runs",
        name="ddp",
        workers=2,
        checkpoint_every=6,
        fail_at_step=9,
        log_every=3,
        **{"optim.epochs": 2},
    )
    summary = train(cfg, progress=QUIET)
    cfg = config.load(TrainConfig, tmp_path / "runs" / "ddp" / "config.yaml")
    assert cfg.run_dir == tmp_path / "runs" / "ddp"
    rows = _rows(cfg.run_dir)
    train_rows = [r for r in rows if "train/loss" in r]
    assert {r["train/candidates"] for r in train_rows} == {2 * 64}
    assert (cfg.run_dir / ".injected_failure").exists()
    written = [r["step"] for r in RunDir(cfg.run_dir).all_rows() if r["kind"] == "train"]
    replayed = [s for i, s in enumerate(written) if s in written[:i]]
    assert replayed and max(replayed) - min(replayed) < cfg.checkpoint_every
    steps = [r["step"] for r in train_rows]
    assert steps == sorted(set(steps)), "readers see each step once, from the attempt that trained it last"
    assert [r["attempt"] for r in RunDir(cfg.run_dir).starts()] == [1, 2]
    per_epoch = [r["step"] for r in rows if "val/R@10" in r]
    assert summary["steps"] == per_epoch[-1] == 2 * per_epoch[0]


def test_an_epoch_ending_on_a_checkpoint_step_writes_one_checkpoint(ray_local, synth_bank, synth_shards, tmp_path):
    """Every step checkpoints, so each epoch's last step meets the epoch-end checkpoint; Ray prunes to one."""
    cfg = _cfg(
        synth_bank,
        synth_shards,
        tmp_path,
        name="every",
        workers=2,
        checkpoint_every=1,
        keep_checkpoints=1,
        **{"optim.epochs": 3, "data.batch_size": 512},
    )
    summary = train(cfg, progress=QUIET)
    assert summary["epochs"] == 3 and summary["steps"] >= 6
    left = sorted(p.name for p in cfg.run_dir.glob("checkpoint_*") if p.is_dir())
    assert left == [f"checkpoint_{summary['steps']:09d}"]


def test_ema_update_is_a_moving_average():
    average, model = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    torch.nn.init.zeros_(average.weight), torch.nn.init.ones_(model.weight)
    ema_update(average, model, 0.9)
    assert torch.allclose(average.weight, torch.full((1, 2), 0.1))


def test_ema_run_serves_the_average_and_resumes_both_weights(ray_local, synth_bank, synth_shards, tmp_path):
    over = {"optim.ema": 0.9}
    first = train(
        _cfg(synth_bank, synth_shards, tmp_path, name="ema", workers=0, **{"optim.epochs": 1}, **over), progress=QUIET
    )
    latest = sorted(p for p in (tmp_path / "ema").glob("checkpoint_*") if p.is_dir())[-1]
    served = torch.load(latest / "model.pt", weights_only=True)
    trained = torch.load(latest / "train_state.pt", weights_only=True)["train_weights"]
    assert served.keys() == trained.keys() and any(not torch.equal(served[k], trained[k]) for k in served)
    second = train(
        _cfg(synth_bank, synth_shards, tmp_path, name="ema", workers=0, **{"optim.epochs": 2}, **over), progress=QUIET
    )
    assert second["steps"] == 2 * first["steps"]
    result = evaluate(run=tmp_path / "ema", split="val", max_queries=400, progress=QUIET)
    assert result["views"]["all"]["model"]["R@10"] == pytest.approx(second["best"]["value"])  # best/ = the average


def test_a_run_name_cannot_silently_change_model(ray_local, synth_bank, synth_shards, tmp_path):
    cfg = _cfg(synth_bank, synth_shards, tmp_path, name="fixed", workers=0, **{"optim.epochs": 1})
    train(cfg, progress=QUIET)
    with pytest.raises(ConfigError, match="different"):
        train(
            _cfg(synth_bank, synth_shards, tmp_path, name="fixed", workers=0, **{"tower.query": "lstm"}), progress=QUIET
        )


def test_train_config_round_trip_and_strictness(tmp_path):
    cfg = config.load(TrainConfig, None, ["tower.query=transformer", "loss.kind=ar_mix", "optim.lr=3e-4"])
    config.dump(cfg, tmp_path / "c.yaml")
    assert config.load(TrainConfig, tmp_path / "c.yaml") == cfg
    with pytest.raises(ConfigError, match="optim"):
        config.load(TrainConfig, None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="tower.query"):
        config.load(TrainConfig, None, ["tower.query=cnn"])
    with pytest.raises(ConfigError, match="0 <= ema < 1"):
        config.load(TrainConfig, None, ["optim.ema=1.0"])


def test_storage_uri_holds_the_run_and_resumes_it(ray_local, synth_bank, synth_shards, tmp_path):
    """A pyarrow-filesystem URI as storage: Ray Train writes checkpoints there, raytt uploads its own files."""
    store = tmp_path / "bucket"
    uri = f"file://{store}"
    first = train(_cfg(synth_bank, synth_shards, uri, name="remote", workers=1, **{"optim.epochs": 1}), progress=QUIET)
    second = train(_cfg(synth_bank, synth_shards, uri, name="remote", workers=1, **{"optim.epochs": 2}), progress=QUIET)
    run = store / "remote"
    assert second["steps"] == 2 * first["steps"], "the second run resumes from the checkpoint in the URI"
    assert {"config.yaml", "metrics.jsonl", "summary.json", "best"} <= {p.name for p in run.iterdir()}
    assert len([p for p in run.glob("checkpoint_*") if p.is_dir()]) == 2
    steps = [r["step"] for r in RunDir(run).all_rows() if r["kind"] == "train"]
    assert steps == sorted(set(steps)) and max(steps) == second["steps"]
    evaluate(run=f"{uri}/remote", split="val", max_queries=200, progress=QUIET)
    assert (run / "eval" / "val" / "report.json").is_file(), "the report is uploaded beside the run"


def test_storage_uri_refusals(tmp_path):
    with pytest.raises(ConfigError, match="workers: 0"):
        config.load(TrainConfig, None, ["storage=s3://bucket/runs", "workers=0"])
    with pytest.raises(RayttError, match="bogus://"):
        train(_cfg(tmp_path, tmp_path, "bogus://nowhere/runs", name="x", workers=1), progress=QUIET)


def test_bf16_autocast_trains_on_cpu(ray_local, synth_bank, synth_shards, tmp_path):
    """The CUDA path's bf16 option through its CPU fallback (torch's CPU autocast): losses stay finite and fall."""
    cfg = _cfg(synth_bank, synth_shards, tmp_path, name="bf16", workers=0, precision="bf16", **{"optim.epochs": 3})
    train(cfg, progress=QUIET)
    rows = _rows(cfg.run_dir)
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    recall = [r["val/R@10"] for r in rows if "val/R@10" in r]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert recall[-1] > recall[0]
    with pytest.raises(ConfigError, match="precision"):
        config.load(TrainConfig, None, ["precision=fp16"])


@pytest.mark.gpu
def test_gpu_workers_train_with_nccl_and_bf16(ray_local, synth_bank, synth_shards, tmp_path):
    """GPU twin of the bf16 test: CUDA workers, NCCL, bf16 autocast, GPU validation."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device; test_bf16_autocast_trains_on_cpu is the CPU twin")
    cfg = _cfg(
        synth_bank,
        synth_shards,
        tmp_path,
        name="gpu",
        workers=1,
        use_gpu="true",
        precision="bf16",
        **{"optim.epochs": 2},
    )
    summary = train(cfg, progress=QUIET)
    assert summary["epochs"] == 2 and summary["best"]["value"] > 0


def test_patience_stops_a_run_whose_validation_stopped_improving(ray_local, synth_bank, synth_shards, tmp_path):
    """Early stopping on full-bank validation: a parameter-free tower never improves after its first epoch."""
    cfg = _cfg(
        synth_bank,
        synth_shards,
        tmp_path,
        name="patient",
        workers=0,
        **{"tower.query": "last", "optim.epochs": 6, "optim.patience": 2},
    )
    summary = train(cfg, progress=QUIET)
    assert summary["epochs"] == 3 and summary["best"]["epoch"] == 1
    last = _rows(cfg.run_dir)[-1]
    assert last["val/excl/R@10"] >= last["val/R@10"], "the context-excluded view is reported beside the other"


def test_an_unreadable_latest_checkpoint_falls_back_to_the_one_before(ray_local, synth_bank, synth_shards, tmp_path):
    """A truncated model.pt: the re-run warns, naming both checkpoints, and resumes from the previous one."""
    over = {"optim.epochs": 1, "checkpoint_every": 20}
    first = train(_cfg(synth_bank, synth_shards, tmp_path, name="trunc", workers=0, **over), progress=QUIET)
    saved = sorted(p for p in (tmp_path / "trunc").glob("checkpoint_*") if p.is_dir())
    assert len(saved) >= 2
    bad, good = saved[-1], saved[-2]
    model = bad / "model.pt"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    lines = []
    second = train(
        _cfg(synth_bank, synth_shards, tmp_path, name="trunc", workers=0, **{**over, "optim.epochs": 2}),
        progress=lines.append,
    )
    warning = next(line for line in lines if "unreadable" in line)
    assert bad.name in warning and "model.pt" in warning and good.name in warning
    assert f"resuming from {good.name}" in "\n".join(lines)
    assert second["steps"] == 2 * first["steps"]
    start = RunDir(tmp_path / "trunc").starts()[-1]
    assert start["step"] == int(good.name.split("_")[1]), "the resumed attempt starts at the good checkpoint's step"


def test_no_readable_checkpoint_is_a_clear_error(ray_local, synth_bank, synth_shards, tmp_path):
    train(_cfg(synth_bank, synth_shards, tmp_path, name="broken", workers=0, **{"optim.epochs": 1}), progress=QUIET)
    for folder in (tmp_path / "broken").glob("checkpoint_*"):
        (folder / "train_state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="no checkpoint of this run can be read.*train_state.pt cannot be read"):
        train(_cfg(synth_bank, synth_shards, tmp_path, name="broken", workers=0, **{"optim.epochs": 2}), progress=QUIET)


def test_a_full_disk_ends_the_run_naming_the_checkpoint_and_keeps_the_earlier_ones(
    ray_local, synth_bank, synth_shards, tmp_path, monkeypatch
):
    """The third checkpoint write raises ENOSPC: the run stops with an error naming it; the first two stay loadable."""
    import errno

    from raytt import checkpoints

    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(f)
        if len([c for c in calls if str(c).endswith("model.pt")]) == 3 and str(f).endswith("train_state.pt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "save", save)
    cfg = _cfg(synth_bank, synth_shards, tmp_path, name="full", workers=0, checkpoint_every=10, **{"optim.epochs": 1})
    with pytest.raises(
        CheckpointError,
        match=r"full/checkpoint_000000030: cannot write the checkpoint of step 30 "
        r"\(No space left on device\)",
    ):
        train(cfg, progress=QUIET)
    kept = sorted(p.name for p in cfg.run_dir.glob("checkpoint_*"))
    assert kept == ["checkpoint_000000010", "checkpoint_000000020"], "no partial checkpoint, the earlier ones intact"
    for name in kept:
        checkpoints.read(cfg.run_dir / name)


def test_init_from_starts_a_run_from_another_runs_weights(ray_local, synth_bank, synth_shards, tmp_path):
    """Fine-tuning: at a vanishing learning rate the new run validates where the run it started from ended."""
    base = train(
        _cfg(synth_bank, synth_shards, tmp_path, name="base", workers=0, **{"optim.epochs": 1}), progress=QUIET
    )
    over = {"optim.epochs": 1, "optim.lr": 1e-12, "init_from": tmp_path / "base"}
    tuned = train(_cfg(synth_bank, synth_shards, tmp_path, name="tuned", workers=0, **over), progress=QUIET)
    assert tuned["best"]["value"] == pytest.approx(base["best"]["value"], abs=1e-3)
    assert "starting from the weights of" in (tmp_path / "tuned" / "train.log").read_text()
    embedder = json.loads((synth_bank / "manifest.json").read_text())["embedder_id"]
    assert read_meta(tmp_path / "base" / "best")["embedder_id"] == embedder, "the checkpoint names its embedder"
    fresh = train(
        _cfg(synth_bank, synth_shards, tmp_path, name="fresh", workers=0, **{"optim.epochs": 1, "optim.lr": 1e-12}),
        progress=QUIET,
    )
    assert fresh["best"]["value"] < base["best"]["value"] - 0.05, "an untrained tower is the comparison"


def test_init_from_refuses_a_missing_or_unfitting_checkpoint(ray_local, synth_bank, synth_shards, tmp_path):
    train(_cfg(synth_bank, synth_shards, tmp_path, name="gru", workers=0, **{"optim.epochs": 1}), progress=QUIET)
    with pytest.raises(RayttError, match="init_from .*no checkpoint there"):
        train(
            _cfg(synth_bank, synth_shards, tmp_path, name="a", workers=0, init_from=tmp_path / "nope"), progress=QUIET
        )
    over = {"init_from": tmp_path / "gru", "tower.query": "lstm"}
    with pytest.raises(RayttError, match="does not fit this run's.*tower settings that differ: query"):
        train(_cfg(synth_bank, synth_shards, tmp_path, name="b", workers=0, **over), progress=QUIET)
    assert not (tmp_path / "b").exists(), "refused before the run directory is made"


def test_init_from_refuses_weights_for_another_dim_or_embedder(synth_shards, tmp_path):
    from helpers import fake_run

    from raytt.checkpoints import check_init
    from raytt.towers import TowerConfig

    run = fake_run(tmp_path, synth_shards, dim=64, embedder_id="BAAI/bge-small-en-v1.5")
    assert check_init(run, TowerConfig(hidden=32), 64, "BAAI/bge-small-en-v1.5") == run / "best"
    with pytest.raises(RayttError, match="weights for 64-d vectors, this bank is 32-d"):
        check_init(run, TowerConfig(hidden=32), 32, "BAAI/bge-small-en-v1.5")
    with pytest.raises(
        RayttError, match="trained on vectors from 'BAAI/bge-small-en-v1.5', this bank's are from 'x/y'"
    ):
        check_init(run, TowerConfig(hidden=32), 64, "x/y")
