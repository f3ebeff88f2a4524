"""metrics.jsonl: rows carry their attempt, and readers see each step once after a restart."""

from raytt import rundir


def _attempt(path, attempt, start, steps, epoch_at=None):
    rundir.append(path, {"step": start}, "start", attempt)
    for step in steps:
        rundir.append(path, {"step": step, "train/loss": float(attempt)}, "train", attempt)
        if step == epoch_at:
            rundir.append(path, {"step": step, "val/R@10": 0.5}, "epoch", attempt)


def test_a_restart_replays_steps_and_readers_keep_the_latest_attempt(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _attempt(path, 1, 0, range(10, 140, 10), epoch_at=100)  # killed after step 130, checkpoint at 100
    _attempt(path, 2, 100, range(110, 210, 10), epoch_at=200)
    written = [r["step"] for r in rundir.read_all(path) if r["kind"] == "train"]
    assert written.count(110) == 2
    rows = rundir.read(path, "train")
    assert [r["step"] for r in rows] == list(range(10, 210, 10))
    assert {r["attempt"] for r in rows if r["step"] <= 100} == {1} and {
        r["attempt"] for r in rows if r["step"] > 100
    } == {2}
    assert [(r["step"], r["attempt"]) for r in rundir.read(path, "epoch")] == [(100, 1), (200, 2)]
    assert rundir.next_attempt(path) == 3
    assert all("time" in r for r in rows)


def test_rows_an_attempt_abandoned_are_dropped(tmp_path):
    """Attempt 1 logged step 130; attempt 2 resumed from 100 and stopped early at 120: step 130 is gone."""
    path = tmp_path / "metrics.jsonl"
    _attempt(path, 1, 0, range(10, 140, 10))
    _attempt(path, 2, 100, [110, 120])
    assert [r["step"] for r in rundir.read(path)][-3:] == [100, 110, 120]


def test_a_row_cut_short_by_a_crash_is_skipped_and_the_next_row_starts_a_new_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rundir.append(path, {"step": 1}, "train", 1)
    with open(path, "a") as f:
        f.write('{"step": 2, "tra')
    rundir.append(path, {"step": 2}, "train", 2)
    assert [(r["step"], r["attempt"]) for r in rundir.read(path)] == [(1, 1), (2, 2)]


def test_rows_of_older_runs_without_attempts_still_read(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 5, "train/loss": 1.0}\n{"step": 5, "val/R@10": 0.1}\n')
    assert [rundir.kind_of(r) for r in rundir.read(path)] == ["train", "epoch"]
    assert rundir.next_attempt(path) == 1 and rundir.read(tmp_path / "absent.jsonl") == []
