"""Training figures from the run's own files: loss curves and the learned weights."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(fig, out) -> Path:
    """Lay out, write ``out`` (its folder created) at 120 dpi, and free the figure."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_losses(metrics_path: Path, out: Path) -> Path:
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4))
    window = max(1, len(rows) // 50)
    for key, label in (("lower_loss", "lower loss"), ("weighted_loss", "weighted lower loss"), ("meta_loss", "meta loss")):
        pts = [(r["iteration"], r[key]) for r in rows if key in r]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, _moving_average(list(ys), window), label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"loss (moving average over {window})")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Training losses")
    return save_figure(fig, out)


def plot_weights(weights: dict[str, float], domain_of: dict[str, str], out: Path, title: str) -> Path:
    """Histogram of the learned weights and the mean weight per domain."""
    by_domain = defaultdict(list)
    for key, w in weights.items():
        by_domain[domain_of.get(key, "default")].append(w)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.hist(list(weights.values()), bins=min(50, max(5, len(weights) // 4)))
    left.set_xlabel("weight")
    left.set_ylabel("count")
    left.set_title(f"{title}: {len(weights)} weights")
    names = sorted(by_domain)
    right.bar(names, [sum(by_domain[d]) / len(by_domain[d]) for d in names])
    right.set_ylabel("mean weight")
    right.set_title("mean weight per domain")
    right.tick_params(axis="x", rotation=45)
    return save_figure(fig, out)
