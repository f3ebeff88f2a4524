"""Dual-path decoding: each step's SNAP/BLEND/NOVEL choice by lane, the fallback to NOVEL, and `raytt rollout`'s
telemetry beside the heuristic rollouts."""

import json

import numpy as np
import pytest
from helpers import fake_run, unit_rows

from raytt import cli, config
from raytt.decoding import BLEND, NOVEL, SNAP, DecodeConfig, Lane, choose, decode, lane_names
from raytt.errors import ConfigError, RayttError


def test_choose_snaps_blends_and_stays_novel_by_threshold():
    rng = np.random.default_rng(0)
    prediction, nearest = unit_rows(rng, 4, 8), unit_rows(rng, 4, 8)
    cosine = np.array([0.95, 0.88, 0.80, 0.99])
    found = np.array([True, True, True, False])
    vectors, decisions = choose(prediction, nearest, cosine, found, [Lane()] * 4)
    assert decisions.tolist() == [SNAP, BLEND, NOVEL, NOVEL]  # the last: retrieval failed, so NOVEL
    np.testing.assert_array_equal(vectors[0], nearest[0])
    np.testing.assert_array_equal(vectors[2], prediction[2])
    blend = 0.5 * nearest[1] + 0.5 * prediction[1]
    np.testing.assert_allclose(vectors[1], blend / np.linalg.norm(blend), atol=1e-6)


def test_a_stricter_lane_blends_where_the_default_snaps():
    rng = np.random.default_rng(1)
    prediction, nearest = unit_rows(rng, 2, 8), unit_rows(rng, 2, 8)
    _, decisions = choose(prediction, nearest, np.array([0.93, 0.93]), np.ones(2, bool), [Lane(), Lane(snap=0.94)])
    assert decisions.tolist() == [SNAP, BLEND]


def test_decode_appends_each_chosen_vector_to_the_context():
    rng = np.random.default_rng(2)
    bank = unit_rows(rng, 50, 8)
    seen = []

    def encode(context, lengths):
        seen.append(context.copy())
        return context[:, -1]  # the last vector: it finds itself in the bank when it is a bank vector

    def search(q, k):
        scores = q @ bank.T
        keys = np.argsort(-scores, 1)[:, :k]
        return np.take_along_axis(scores, keys, 1), keys

    steps = decode(encode, search, bank, bank[[[0, 1, 2]]], np.array([3]), [Lane(snap=-1, novel=-1)], 3)
    assert [s.decisions.tolist() for s in steps] == [[SNAP]] * 3
    first = int(steps[0].keys[0, 0])
    np.testing.assert_allclose(seen[1][0, -1], bank[first], atol=1e-6)  # the snapped vector joined the context


def test_lanes_come_from_a_bank_column_and_unknown_lanes_are_refused():
    cfg = DecodeConfig(lane_column="article_id", lane_pattern=r"^(\w+)/", lanes={"legal": Lane(snap=0.94)})
    assert lane_names(cfg, ["legal/a", "news/b", "plain"]) == ["legal", "news", "default"]
    with pytest.raises(ConfigError, match="unknown lane"):
        lane_names(DecodeConfig(lane_column="article_id", lanes={"legl": Lane()}), ["legal", "news"])


@pytest.mark.parametrize(
    "data, message",
    [
        ({"snap": 0.8, "novel": 0.9}, "novel <= snap"),
        ({"alpha": 1.5}, "alpha must be in"),
        ({"lanes": {"legal": {"snap": 0.94}}}, "lanes need decode.lane_column"),
        ({"lane_column": "a", "lane_pattern": "no-group"}, "needs one group"),
    ],
)
def test_bad_decode_settings_are_refused(data, message):
    with pytest.raises(ConfigError, match=message):
        config.from_dict(DecodeConfig, data)


def test_raytt_rollout_reports_every_method_per_step_and_lane(synth_shards, tmp_path, capsys):
    run = fake_run(tmp_path, synth_shards)
    cli.run(
        ["rollout", str(run), "--steps", "3", "--lane-column", "article_id", "--lane-pattern", r"(\d)$"]
        + ["--max-articles", "12"]
    )
    report = json.loads((run / "rollout" / "test" / "report.json").read_text())
    assert set(report["methods"]) == {"model", "exp", "last"} and report["articles"] == 12
    for method in report["methods"].values():
        assert [row["step"] for row in method["steps"]] == [1, 2, 3]
        for row in [*method["steps"], method["overall"]]:
            assert row["snap"] + row["blend"] + row["novel"] == pytest.approx(1.0)
            assert row["hit1"] <= row["hit10"]
        assert 1 < len(method["lanes"]) <= 10
    out = capsys.readouterr().out
    assert "%SNAP" in out and "drift" in out and (run / "rollout" / "test" / "rollout.png").is_file()


def test_rollout_refuses_an_unknown_lane_column_and_zero_steps(synth_shards, tmp_path):
    run = fake_run(tmp_path, synth_shards)
    with pytest.raises(RayttError, match="has no such column"):
        cli.run(["rollout", str(run), "--lane-column", "source", "--max-articles", "5"])
    with pytest.raises(RayttError, match="--steps must be >= 1"):
        cli.run(["rollout", str(run), "--steps", "0"])


def test_decode_never_retrieves_a_key_the_history_holds():
    rng = np.random.default_rng(3)
    bank = unit_rows(rng, 50, 8)

    def search(q, k):
        scores = q @ bank.T
        keys = np.argsort(-scores, 1)[:, :k]
        return np.take_along_axis(scores, keys, 1), keys

    always = [Lane(snap=-1, novel=-1)]
    steps = decode(lambda c, n: c[:, -1], search, bank, bank[[[0, 1, 2]]], np.array([3]), always, 3, [[0, 1, 2]])
    retrieved = [int(s.keys[0, 0]) for s in steps]
    assert 2 not in retrieved and len(set(retrieved)) == 3  # each snapped key joins the history


def test_a_rollout_search_scores_every_trial_and_writes_the_best_decode_config(synth_shards, tmp_path, ray_local):
    from raytt.rollout_tuning import RolloutSearch, tune_rollout

    run = fake_run(tmp_path, synth_shards)
    search = config.from_dict(
        RolloutSearch,
        {
            "rollout": str(run),
            "storage": str(tmp_path / "tune"),
            "steps": 2,
            "max_articles": 6,
            "search": "grid",
            "num_samples": 1,
            "space": {"snap": {"kind": "grid", "values": [0.5, 0.99]}, "novel": {"kind": "grid", "values": [0.2, 0.7]}},
        },
    )
    rows = tune_rollout(search, progress=lambda _: None)
    assert len(rows) == 4 and sum(r["valid"] for r in rows) == 3  # novel 0.7 > snap 0.5 scores the worst
    assert rows[0]["cos_truth"] == max(r["cos_truth"] for r in rows)
    best = config.load(DecodeConfig, tmp_path / "tune" / "rollout" / "best.yaml")
    assert (best.snap, best.novel) == (rows[0]["snap"], rows[0]["novel"])
    assert (tmp_path / "tune" / "rollout" / "results.csv").is_file()


def test_a_rollout_search_refuses_a_key_decoding_lacks():
    from raytt.rollout_tuning import RolloutSearch

    with pytest.raises(ConfigError, match="space.snapp: not a decode setting"):
        config.from_dict(RolloutSearch, {"rollout": "r", "space": {"snapp": {"values": [0.9]}}})
