"""Plot bench/results.json: time and peak memory per mode, ours beside the reference, with the targets.

Uses the newest row of every (mode, gradient checkpointing, options) on the chosen device, from
one measurement run (rows' ``run`` field; by default the run with the most rows), so that every
bar of the figure comes from the same machine. Rows without a ``run`` form a run of their own.

    python bench/plot_results.py [--results bench/results.json] [--device H100] [--run NAME] [--out bench/results.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (mode, gradient checkpointing) -> (seconds, GiB) targets from the performance issue
TARGETS = {("sft", False): (0.10, None), ("table", False): (0.20, 20.0), ("table", True): (None, 14.0)}


def label(row: dict) -> str:
    parts = [row["mode"].replace("reference_", "ref. ")]
    if row["gradient_checkpointing"]:
        parts.append("gc")
    parts += row.get("options", [])
    return "+".join(parts)


def largest_run(rows: list[dict], device: str) -> str | None:
    """The ``run`` with the most successful rows on ``device`` (the later one on a tie)."""
    counts: dict = {}
    for row in rows:
        if "error" not in row and device.lower() in row.get("device", "").lower():
            counts[row.get("run")] = counts.get(row.get("run"), 0) + 1
    return max(reversed(list(counts)), key=counts.get) if counts else None


def newest_rows(rows: list[dict], device: str, run: str | None = None) -> list[dict]:
    """The newest row per (mode, gc, options) on ``device`` in ``run``, in a stable mode order."""
    keep: dict[tuple, dict] = {}
    for row in rows:
        if "error" in row or device.lower() not in row.get("device", "").lower() or row.get("run") != run:
            continue
        keep[(row["mode"], row["gradient_checkpointing"], tuple(row.get("options", [])))] = row  # later wins
    order = ["sft", "table", "net", "bon8"]

    def key(row):
        base = row["mode"].removeprefix("reference_")
        return (order.index(base) if base in order else 9, row["gradient_checkpointing"], len(row.get("options", [])),
                row["mode"].startswith("reference_"))

    return sorted(keep.values(), key=key)


def plot(rows: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref_bon8 = next((r["median_s"] for r in rows if r["mode"] == "reference_bon8"), None)
    targets = dict(TARGETS)
    if ref_bon8 is not None:  # best-of-8: at least 6x faster than one full forward per candidate
        targets[("bon8", False)] = (ref_bon8 / 6, None)
    names = [label(r) for r in rows]
    colors = ["tab:gray" if r["mode"].startswith("reference_") else "tab:blue" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.42 * len(rows) + 1.8), sharey=True)
    for ax, field, unit in ((axes[0], "median_s", "median seconds per iteration / question"),
                            (axes[1], "peak_gib", "peak GPU memory (GiB)")):
        ax.barh(range(len(rows)), [r[field] for r in rows], color=colors)
        for i, r in enumerate(rows):
            ax.text(r[field], i, f" {r[field]:.3g}", va="center", fontsize=8)
            target = targets.get((r["mode"], r["gradient_checkpointing"]), (None, None))[field == "peak_gib"]
            if target is not None:
                ax.plot([target, target], [i - 0.4, i + 0.4], color="tab:red", linewidth=2)
        ax.set_xlabel(unit)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)), names, fontsize=9)
    axes[0].invert_yaxis()
    axes[0].set_title("blue: ours, gray: reference-equivalent, red: target", fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=str(HERE / "results.json"))
    ap.add_argument("--device", default="H100", help="rows whose device name contains this")
    ap.add_argument("--run", default=None, help="rows of this run (default: the run with the most rows)")
    ap.add_argument("--out", default=str(HERE / "results.png"))
    a = ap.parse_args()
    all_rows = json.loads(Path(a.results).read_text())
    run = a.run if a.run is not None else largest_run(all_rows, a.device)
    rows = newest_rows(all_rows, a.device, run)
    if not rows:
        raise SystemExit(f"no rows for a device matching {a.device!r} (run {run!r}) in {a.results}")
    dates = sorted({r["date"] for r in rows})
    title = f"{rows[0]['device']}, torch {rows[0]['torch']}, {dates[0]}" + (f" – {dates[-1]}" if len(dates) > 1 else "")
    if run:
        title += f", run {run}"
    print(plot(rows, Path(a.out), title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
