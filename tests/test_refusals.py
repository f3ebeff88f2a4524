"""The bad-input matrix: each case feeds `raytt` one bad input, as a user would type it, and asserts the
one-line refusal (exit 2, `raytt: error: ...` naming the file or field) and that nothing was written.

The README's reliability section lists these cases by id; a test keeps the two in step.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import QUIET, SMALL, fake_run

from raytt import config
from raytt.cli import main
from raytt.synthetic import generate
from raytt.text.beir import BeirSet, write_beir
from raytt.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
OTHER_EMBEDDER = "BAAI/bge-small-en-v1.5"  # 384-d like MiniLM: same width, another space


@dataclass
class Workspace:
    """A scratch folder (the test's cwd) with the session's bank and shards at hand, copied when a case edits them."""

    root: Path
    bank: Path
    shards: Path

    def copy(self, which: str) -> Path:
        dest = self.root / which
        shutil.copytree(getattr(self, which), dest)
        return dest

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def train(self, *sets: str, shards: Path | None = None, bank: Path | None = None) -> list[str]:
        """`raytt train` on the session data, small and into this workspace, plus `--set` overrides."""
        base = [
            f"data.bank={bank or self.bank}",
            f"data.shards={shards or self.shards}",
            f"storage={self.root / 'runs'}",
            "data.batch_size=64",
            "val_queries=200",
            "name=r",
        ]
        return ["train", *[x for s in (*base, *sets) for x in ("--set", s)]]


def _export(ws: Workspace) -> Path:
    """An export of a seeded untrained tower over the session's shards (context_len 4)."""
    from raytt.export import export

    return export(fake_run(ws.root, ws.shards), ws.root / "export", progress=QUIET)


def _leaked_val(ws: Workspace) -> Path:
    """Shards whose val file also holds 50 train rows; the manifest is untouched."""
    shards = ws.copy("shards")
    manifest = json.loads((shards / "manifest.json").read_text())
    val = shards / manifest["splits"]["val"]["files"][0]
    train = pq.read_table(shards / manifest["splits"]["train"]["files"][0]).slice(0, 50)
    pq.write_table(pa.concat_tables([pq.read_table(val), train.cast(pq.read_table(val).schema)]), val)
    return shards


def _fewer_rows(ws: Workspace) -> Path:
    shards = ws.copy("shards")
    test = shards / json.loads((shards / "manifest.json").read_text())["splits"]["test"]["files"][0]
    table = pq.read_table(test)
    pq.write_table(table.slice(0, table.num_rows - 3), test)
    return shards


def _manifest_overlap(ws: Workspace) -> Path:
    shards = ws.copy("shards")
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["splits"]["test"]["articles"].append(manifest["splits"]["train"]["articles"][0])
    (shards / "manifest.json").write_text(json.dumps(manifest))
    return shards


def _changed_vector(ws: Workspace) -> Path:
    bank = ws.copy("bank")
    part = sorted((bank / "vectors").glob("*.parquet"))[0]
    table = pq.read_table(part)
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
    vectors[0] = vectors[1]
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    pq.write_table(table.set_column(table.schema.get_field_index("vector"), table.schema.field("vector"), column), part)
    return bank


def _truncated_parquet(ws: Workspace) -> Path:
    bank = ws.copy("bank")
    part = sorted((bank / "vectors").glob("*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:1000])
    return bank


def _other_bank(ws: Workspace) -> Path:
    generate(SMALL.__class__(**{**SMALL.__dict__, "seed": 1}), ws.root / "other", progress=QUIET)
    return ws.root / "other"


def _run_with(ws: Workspace, **tower) -> Path:
    """The run directory `ws.train()` writes to, as an earlier run of that name left it (optionally another tower)."""
    sets = ws.train()[2::2] + [f"tower.{k}={v}" for k, v in tower.items()]
    config.dump(config.load(TrainConfig, None, sets), ws.write("runs/r/config.yaml", ""))
    return ws.root / "runs" / "r"


def _broken_manifest(ws: Workspace) -> Path:
    bank = ws.copy("bank")
    (bank / "manifest.json").write_text("{")
    return bank


def _changed_run(ws: Workspace) -> list[str]:
    _run_with(ws, query="lstm")
    return ws.train()


def _unreadable_checkpoints(ws: Workspace) -> list[str]:
    _run_with(ws)
    for step in (10, 20):
        ws.write(f"runs/r/checkpoint_{step:09d}/model.pt", "truncated")
        ws.write(f"runs/r/checkpoint_{step:09d}/train_state.pt", "truncated")
        ws.write(f"runs/r/checkpoint_{step:09d}/meta.json", json.dumps({"step": step}))
    return ws.train()


def _search(ws: Workspace, **over) -> Path:
    base = ws.write(
        "base.yaml",
        yaml.safe_dump({"data": {"bank": str(ws.bank), "shards": str(ws.shards)}, "storage": str(ws.root / "runs")}),
    )
    data = {
        "name": "s",
        "storage": str(ws.root / "tune"),
        "train": str(base),
        "space": {"optim.lr": {"kind": "choice", "values": [0.01]}},
        **over,
    }
    return ws.write("search.yaml", yaml.safe_dump(data))


def _other_encoder_npz(ws: Workspace) -> Path:
    rng = np.random.default_rng(0)
    ctx = rng.standard_normal((200, 3, SMALL.dim)).astype(np.float32)
    np.savez(ws.root / "loose.npz", context_sequences=ctx, target_vectors=ctx[:, 0])
    return ws.root / "loose.npz"


def _beir(ws: Workspace, qrels: dict | None = None, groups: dict | None = None) -> Path:
    """A two-query BEIR folder (q1 train, q2 test), with other test qrels or groups when a case needs them."""
    data = BeirSet(
        passages={"p1": ("", "first passage"), "p2": ("", "second passage")},
        queries={"q1": "one", "q2": "two"},
        groups=groups or {},
        qrels={"train": {"q1": {"p1": 1}}, "test": {"q2": {"p2": 1}}, **(qrels or {})},
    )
    return write_beir(ws.root / "set", data)


Case = tuple[str, Callable[[Workspace], list[str]], str]
CASES: list[Case] = [
    (
        "bank-missing",
        lambda ws: ["build", "--bank", "nowhere", "--out", "s"],
        "nowhere/manifest.json: no bank manifest",
    ),
    ("inspect-nowhere", lambda ws: ["inspect", "nowhere"], "nowhere/manifest.json: no bank manifest"),
    ("bank-manifest-not-json", lambda ws: ["inspect", str(_broken_manifest(ws))], "not valid JSON"),
    (
        "bank-vectors-changed",
        lambda ws: ["build", "--bank", str(_changed_vector(ws)), "--out", "s"],
        "does not match manifest.json",
    ),
    ("bank-parquet-truncated", lambda ws: ["inspect", str(_truncated_parquet(ws))], "unreadable or corrupt Parquet"),
    ("synth-bad-type", lambda ws: ["synth", "--out", "b", "--dim", "big"], "dim must be an integer"),
    ("config-unknown-key", lambda ws: ["synth", "--out", "b", "--set", "colour=red"], "unknown key(s) ['colour']"),
    (
        "config-not-yaml",
        lambda ws: ["train", "--config", str(ws.write("bad.yaml", "optim: [1, 2\n"))],
        "bad.yaml: not valid YAML",
    ),
    ("config-bad-choice", lambda ws: ws.train("tower.query=cnn"), "tower.query must be one of"),
    ("config-out-of-range", lambda ws: ws.train("optim.ema=1.0"), "0 <= ema < 1"),
    ("schedule-gap", lambda ws: ws.train("mining.schedule=0-1:none;3-5:8@0.5-0.9"), "gap, epochs 2-2 are not covered"),
    (
        "mining-factory-unbuildable",
        lambda ws: ws.train("mining.index=factory", "mining.factory=IVF8,PQ7"),
        "mining.factory 'IVF8,PQ7': FAISS cannot build it for dim 64",
    ),
    (
        "train-no-data",
        lambda ws: ["train", "--set", f"storage={ws.root / 'runs'}"],
        "data.bank and data.shards not set",
    ),
    (
        "train-tracker-unknown",
        lambda ws: ws.train("tracking=wandb"),
        "tracking: unknown tracker(s) ['wandb']",
    ),
    (
        "build-too-little-data",
        lambda ws: ["build", "--bank", str(ws.bank), "--out", "s", "--min-train-pairs", "1000000"],
        "too little data",
    ),
    (
        "build-bad-split",
        lambda ws: ["build", "--bank", str(ws.bank), "--out", "s", "--split", "0.5,0.5,0.5"],
        "split must be three shares",
    ),
    (
        "build-output-exists",
        lambda ws: ["build", "--bank", str(ws.bank), "--out", str(ws.copy("shards"))],
        "already exists (pass --overwrite",
    ),
    ("shards-missing", lambda ws: ws.train(shards=ws.root / "nowhere"), "no shards manifest here"),
    ("shards-of-another-bank", lambda ws: ws.train(bank=_other_bank(ws)), "shards were built with embedder"),
    ("shards-manifest-overlap", lambda ws: ["inspect", str(_manifest_overlap(ws))], "are in both train and test"),
    ("shards-leaked-rows-inspect", lambda ws: ["inspect", str(_leaked_val(ws))], "article ids read from the rows"),
    ("shards-leaked-rows-train", lambda ws: ws.train(shards=_leaked_val(ws)), "article ids read from the rows"),
    (
        "shards-leaked-rows-eval",
        lambda ws: ["eval", "--shards", str(_leaked_val(ws)), "--out", "e"],
        "article ids read from the rows",
    ),
    ("shards-rows-changed", lambda ws: ["inspect", str(_fewer_rows(ws))], "files hold"),
    ("train-fewer-than-one-step", lambda ws: ws.train("data.batch_size=100000"), "fewer than one step"),
    (
        "train-gpu-missing",
        lambda ws: ws.train("use_gpu=true"),
        "no node can hold one training worker(s) (1 CPU, 1 GPU)",
    ),
    (
        "train-custom-resource-missing",
        lambda ws: ws.train("workers=1", "mining.schedule=0-5:8@0.5-0.9", "mining.resources.miner=1"),
        "has the custom resource(s) ['miner'] one miner(s) needs",
    ),
    ("train-resources-cpu", lambda ws: ws.train("worker_resources.CPU=2"), "'CPU' has its own setting"),
    (
        "train-dry-run-cannot-fit",
        lambda ws: [*ws.train("use_gpu=true"), "--dry-run"],
        "no node can hold one training worker(s) (1 CPU, 1 GPU)",
    ),
    ("train-storage-uri", lambda ws: ws.train("storage=bogus://nowhere/runs", "workers=1"), "bogus://"),
    ("train-run-changed", _changed_run, "exists with different ['tower']"),
    ("train-no-readable-checkpoint", _unreadable_checkpoints, "no checkpoint of this run can be read"),
    (
        "train-init-other-embedder",
        lambda ws: ws.train(f"init_from={fake_run(ws.root, ws.shards, embedder_id=OTHER_EMBEDDER)}"),
        f"/run/best: the tower was trained on vectors from '{OTHER_EMBEDDER}'",
    ),
    (
        "tune-metric-not-full-bank",
        lambda ws: ["tune", "--config", str(_search(ws, metric="train/loss"))],
        "full-bank validation metric",
    ),
    (
        "tune-unknown-space-key",
        lambda ws: ["tune", "--config", str(_search(ws, space={"optim.lrr": {"kind": "choice", "values": [0.1]}}))],
        "space.optim.lrr",
    ),
    (
        "eval-bad-split",
        lambda ws: ["eval", "--shards", str(ws.shards), "--out", "e", "--split", "dev"],
        "--split must be one of",
    ),
    ("eval-not-a-run", lambda ws: ["eval", "--run", "nowhere"], "not a run directory"),
    ("eval-nothing-to-evaluate", lambda ws: ["eval"], "give --run RUN, or --shards DIR --out DIR"),
    (
        "eval-no-checkpoints",
        lambda ws: ["eval", "--run", str(_run_with(ws)), "--checkpoint", "latest"],
        "no checkpoints yet",
    ),
    (
        "eval-other-embedder",
        lambda ws: ["eval", "--run", str(fake_run(ws.root, ws.shards, embedder_id=OTHER_EMBEDDER))],
        f"the tower was trained on vectors from '{OTHER_EMBEDDER}', this bank's are from 'raytt-synth/1",
    ),
    ("compare-no-report", lambda ws: ["compare", "nowhere"], "no report.json"),
    (
        "import-other-encoder",
        lambda ws: ["import-npz", str(_other_encoder_npz(ws)), "--bank", str(ws.bank), "--out", "s"],
        "vectors do not match bank",
    ),
    (
        "ingest-no-documents",
        lambda ws: ["ingest", "--input", str(ws.write("docs/a.pdf", "x").parent), "--out", "b"],
        "no documents here",
    ),
    (
        "text-qrels-unknown-passage",
        lambda ws: ["text-build", str(_beir(ws, {"test": {"q2": {"p9": 1}}})), "--out", "built"],
        "test.tsv:2: passage 'p9' is not in corpus.jsonl",
    ),
    (
        "text-build-group-leak",
        lambda ws: ["text-build", str(_beir(ws, groups={"q1": "g", "q2": "g"})), "--out", "built"],
        "group 'g' is judged in both train and test",
    ),
    (
        "text-train-not-built",
        lambda ws: ["text-train", "--set", "data.built=nowhere", "--set", f"storage={ws.root / 'runs'}"],
        "nowhere: not a built text set",
    ),
    (
        "text-eval-run-on-beir",
        lambda ws: ["text-eval", str(_beir(ws)), "--out", "ev", "--run", "runs/r"],
        "text-eval --run needs a set built by raytt text-build",
    ),
    ("export-not-a-run", lambda ws: ["export", "nowhere", "--out", "e"], "nowhere: not a run directory"),
    (
        "search-incomplete-export",
        lambda ws: ["search", str(ws.write("e/config.json", "{}").parent), "--context-keys", "1,2"],
        "not a complete export: missing model.safetensors",
    ),
    (
        "search-context-too-long",
        lambda ws: ["search", str(_export(ws)), "--context-keys", "1,2,3,4,5"],
        "context 0 has 5 chunks: the tower reads 1 to 4",
    ),
    (
        "rollout-unknown-lane",
        lambda ws: (
            ["rollout", str(fake_run(ws.root, ws.shards)), "--lane-column", "article_id"]
            + ["--set", "lanes.legal.snap=0.94"]
        ),
        "unknown lane(s) ['legal']",
    ),
    ("serve-open-address", lambda ws: ["serve", "nowhere", "--host", "0.0.0.0"], "reachable beyond this machine"),
]
ON_SESSION_RAY: list[Case] = [
    (
        "train-cpus-exceed-cluster",
        lambda ws: ws.train("workers=3"),
        "in all 4 CPU, 0 GPU), but this Ray cluster has at most 3 CPU",
    ),
    (
        "train-miners-exceed-cluster",
        lambda ws: ws.train("workers=1", "mining.schedule=0-5:8@0.5-0.9", "mining.actors=3"),
        "3 miner(s) x 1 CPU",
    ),
]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _refused(ws: Workspace, case: Case, capsys) -> None:
    name, make_args, message = case
    args = make_args(ws)
    before = _snapshot(ws.root)
    capsys.readouterr()
    with pytest.raises(SystemExit) as ended:
        main(args)
    err = capsys.readouterr().err
    assert ended.value.code == 2, f"{name}: exit status {ended.value.code}\n{err}"
    assert err.startswith("raytt: error: ") and message in err, f"{name}: expected {message!r} in:\n{err}"
    assert "Traceback" not in err and err.count("\n") == 1, f"{name}: not one clear line:\n{err}"
    assert _snapshot(ws.root) == before, f"{name}: the refusal wrote files"


@pytest.fixture
def ws(synth_bank, synth_shards, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return Workspace(tmp_path, synth_bank, synth_shards)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_one_line_and_writes_nothing(ws, case, capsys):
    _refused(ws, case, capsys)


@pytest.mark.parametrize("case", ON_SESSION_RAY, ids=[c[0] for c in ON_SESSION_RAY])
def test_requests_the_cluster_cannot_meet_are_refused_at_once(ray_local, ws, case, capsys):
    _refused(ws, case, capsys)


def test_the_readme_lists_every_case():
    readme = (ROOT / "README.md").read_text()
    missing = [name for name, _, _ in CASES + ON_SESSION_RAY if f"`{name}`" not in readme]
    assert not missing, f"README's reliability table lacks {missing}"
