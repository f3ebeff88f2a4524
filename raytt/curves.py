"""`training_curves.png`: train loss by step beside full-bank validation R@10 and in-batch accuracy by epoch.

Drawn from metrics.jsonl (each step once), refreshed by rank 0 at every epoch end and by `raytt eval`.
"""

from __future__ import annotations

from pathlib import Path

from raytt.rundir import read
from raytt.storage import atomic_write_bytes


def training_curves(metrics_jsonl: Path, png: Path) -> bool:
    """Draw the run's curves into `png` (replaced atomically); False when there is nothing to draw yet."""
    if not Path(metrics_jsonl).is_file():
        return False
    steps, epochs = read(metrics_jsonl, "train"), read(metrics_jsonl, "epoch")
    if not steps:
        return False
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot([r["step"] for r in steps], [r["train/loss"] for r in steps])
    a.set(xlabel="step", ylabel="train loss", title="loss")
    shown = [r for r in epochs if "val/R@10" in r]
    b.plot([r["step"] for r in shown], [r["val/R@10"] for r in shown], marker="o", label="val full-bank R@10")
    b.plot(
        [r["step"] for r in shown],
        [r.get("val/in_batch_acc") for r in shown],
        marker="s",
        label="val in-batch accuracy",
    )
    b.set(xlabel="step", ylim=(0, 1), title="validation")
    b.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(png, buffer.getvalue())
    return True
