"""work_dir/loss.png: the training loss (and lr) per step from metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from tunesmith.train.metrics import read_metrics


def plot_loss(metrics_path: str | Path, out: str | Path) -> Path | None:
    """Write the loss curve; returns None when there is nothing to plot."""
    records = [r for r in read_metrics(metrics_path) if isinstance(r.get("loss"), (int, float))]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(steps, [r["loss"] for r in records], color="tab:blue", label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if all("lr" in r for r in records):
        lr_ax = ax.twinx()
        lr_ax.plot(steps, [r["lr"] for r in records], color="tab:orange", alpha=0.6, label="lr")
        lr_ax.set_ylabel("lr")
    ax.set_title("training loss")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
