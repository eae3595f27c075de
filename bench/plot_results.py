"""Draw a run folder's figure from its results.json: time and peak memory per mode, ours beside
the reference, with the targets.

Uses the newest row of every (mode, gradient checkpointing, options) on the chosen device, from
one measurement run (rows' ``run`` field; by default the run with the most rows), so that every
bar of the figure comes from the same machine. Rows without a ``run`` form a run of their own.

    python bench/plot_results.py bench/runs/<date>-<gpu> [--device H100] [--run NAME] [--out PNG] [--table]

writes ``bench/runs/<date>-<gpu>/results.png`` (or ``--out``); ``--table`` also prints the rows
drawn as a Markdown table (the layout of RESULTS.md's tables).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:  # as bench.plot_results (tests) or as a script, whose folder is on sys.path
    from .runfiles import save_figure
except ImportError:
    from runfiles import save_figure

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
        ax.margins(x=0.1)  # room for the value printed after the longest bar
        ax.set_xlabel(unit)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)), names, fontsize=9)
    axes[0].invert_yaxis()
    axes[0].set_title("blue: ours, gray: reference-equivalent, red: target", fontsize=9)
    return save_figure(fig, path, title)


def _number(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def summary_table(rows: list[dict]) -> str:
    """``rows`` (as ``newest_rows`` orders them) as a Markdown table: mode, options, median and min
    seconds, peak GiB, MFU and the step-probability difference to the reference path."""
    lines = ["| mode | options | median s | min s | peak GiB | MFU | prob. diff vs ref. |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        options = (["gc"] if r["gradient_checkpointing"] else []) + r.get("options", [])
        mfu = "–" if r.get("mfu") is None else f"{100 * r['mfu']:.0f} %"
        lines.append(f"| {r['mode']} | {' + '.join(options) or '–'} | {r['median_s']:.3f} | {r['min_s']:.3f} | "
                     f"{r['peak_gib']:.1f} | {mfu} | {_number(r.get('max_prob_diff_vs_reference'), '.1e')} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="a run folder holding results.json, e.g. bench/runs/2026-11-22-h100-2")
    ap.add_argument("--device", default="", help="rows whose device name contains this (default: any)")
    ap.add_argument("--run", default=None, help="rows of this run (default: the run with the most rows)")
    ap.add_argument("--out", type=Path, default=None, help="the figure (default: RUN_DIR/results.png)")
    ap.add_argument("--table", action="store_true", help="also print the rows drawn as a Markdown table")
    a = ap.parse_args()
    results = a.run_dir / "results.json"
    if not results.is_file():
        raise SystemExit(f"no results.json in {a.run_dir}")
    all_rows = json.loads(results.read_text())
    run = a.run if a.run is not None else largest_run(all_rows, a.device)
    rows = newest_rows(all_rows, a.device, run)
    if not rows:
        raise SystemExit(f"no rows for a device matching {a.device!r} (run {run!r}) in {results}")
    dates = sorted({r["date"] for r in rows})
    title = f"{rows[0]['device']}, torch {rows[0]['torch']}, {dates[0]}" + (f" – {dates[-1]}" if len(dates) > 1 else "")
    if run:
        title += f", run {run}"
    print(plot(rows, a.out or a.run_dir / "results.png", title))
    if a.table:
        print(summary_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
