"""How the training iteration's time scales with the input: a sweep over image tiles and steps per record.

bench.py times one shape (7 tiles, 8 steps: 2,578 tokens per training instance). Its H100 profiles say
that iteration is bound by the host (kernel launches), not by the GPU's work, so its time should barely
move when the input grows; once the launches are gone (CUDA graphs) it should grow with the tokens.
This sweep turns that into numbers: every mode at every (tiles, steps) point, our path beside the
reference-equivalent one, and per mode the least-squares slope of seconds per iteration against
tokens per instance.

    python bench/scaling.py [--device cuda|cpu] [--out RUN] [--work DIR] [--iters 6] [--warmup 2]
        [--modes table,sft,reference_table,reference_sft] [--tiles 1,3,6,12] [--steps 4,8,16]
        [--options noac] [--run NAME] [--note TEXT] [--time_limit S]
    python bench/scaling.py --plot RUN      # redraw RUN/scaling.png (and the table) from RUN/scaling.json

``--tiles`` counts crop tiles: InternVL adds a thumbnail when there is more than one, so 1, 3, 6, 12
give 1, 4, 7, 13 tiles (``bench.image_size`` picks images that tile exactly so, and the trainer gets
``--max_patch_num`` equal to the crop tiles). Rows record the tiles and steps the processor and the
prompt actually produced; (6, 8) is bench.py's shape. ``--options`` (``gc``, ``noac``, ``compile``, ``graphs``,
joined by ``,`` or ``+``) applies to every mode. The data of a point is written once under ``--work``
(the images once per tile count) and every mode runs on it, one Trainer each, in this process.

Each point's row goes to ``RUN/scaling.json`` as soon as it is measured, so a run cut short keeps what
it measured; a point that fails gets an ``error`` row and the sweep goes on. SIGTERM, SIGINT or
``--time_limit`` (no run starts after S seconds) end the sweep early, still drawing what it measured.
At the end: ``RUN/scaling.png`` (seconds per iteration and peak GiB against tokens per instance), a
Markdown table of median seconds (point x mode) and one slope line per mode. ``RUN`` defaults to
bench.py's run folder (``bench/runs/<date>-<gpu>``); a cpu smoke run (bundled tiny model, fp32, one
thread: the numbers only show that the paths run) never writes there.

Iterations: 6 timed after 2 warm-ups by default, fewer than bench.py's 10 + 3, so that the default sweep
fits one device call of 10 minutes. Estimate for an H100: 48 trainer runs (4 modes x 12 points), each
loading the model and starting its data workers (~3-5 s); 8 iterations of about 0.55 s (table), 0.6 s
(reference_table), 0.2 s (sft and its reference), more at 13 tiles: ~150 s of iterations, 150-240 s of
loading, ~50 s to start (imports, building the model once, writing the images): 6-7.5 minutes. With
10 + 3 it would be 7.5-9 minutes, too close to the limit. The trainer's export and checkpoint after its
last iteration are skipped (several GB each at full size; bench.py still writes them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import signal
import statistics
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if __name__ == "__main__":  # bench.py, runfiles.py by bare name (`bench` is bench.py, not the package); arguments.py
    sys.path[:0] = [str(HERE), str(ROOT)]

try:  # as bench.scaling (tests) or as a script, whose folder is on sys.path
    from .runfiles import RUNS, append_rows, save_figure
except ImportError:
    from runfiles import RUNS, append_rows, save_figure

DEFAULT_MODES = "table,sft,reference_table,reference_sft"
STEP_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
CPU_DEVICE = "cpu (smoke run, tiny model)"


def int_list(text: str, flag: str) -> list[int]:
    """``"1,3,6"`` -> [1, 3, 6]: positive, distinct, in the order given."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{flag} takes positive integers separated by commas, got {text!r}") from None
    if not values or min(values) < 1 or len(set(values)) != len(values):
        raise SystemExit(f"{flag} takes distinct positive integers separated by commas, got {text!r}")
    return values


def sweep_specs(modes: str, options: str) -> dict:
    """``{spec: bench.parse_mode(spec)}`` for every training mode with ``options`` appended,
    e.g. ("table,reference_sft", "noac") -> specs ``table+noac`` and ``reference_sft+noac``."""
    from bench import parse_mode

    extra = [o for o in re.split(r"[,+]", options) if o]
    specs = {}
    for mode in (m for m in modes.split(",") if m):
        spec = "+".join([mode, *extra])
        specs[spec] = parse_mode(spec)  # SystemExit, naming the spec, on an unknown mode or option
        if specs[spec][1] == "bon8":
            raise SystemExit(f"{spec}: the sweep times training modes (sft, table, net and their reference_ twins)")
    if not specs:
        raise SystemExit("--modes names no mode")
    return specs


def curve_label(row: dict) -> str:
    """A row's mode with its options, e.g. ``reference_table+noac``: one line of the figure."""
    return "+".join([row["mode"], *row.get("options", [])])


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
    """Least-squares (slope, intercept) of ys against xs; None without two distinct xs."""
    n = len(xs)
    if n < 2:
        return None
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx
    return slope, mean_y - slope * mean_x


def slope_lines(rows: list[dict]) -> list[str]:
    """Per curve: seconds per iteration per 1,000 tokens of a training instance (least squares over
    its points), and the time at the fewest and the most tokens, so flat and growing read as numbers."""
    ok = [r for r in rows if "error" not in r]
    lines = []
    for label in dict.fromkeys(curve_label(r) for r in ok):
        points = sorted((r["seq_len"], r["median_s"]) for r in ok if curve_label(r) == label)
        fit = fit_line([tokens / 1000 for tokens, _ in points], [secs for _, secs in points])
        if fit is None:
            lines.append(f"slope {label}: needs points at two token counts ({len(points)} measured)")
            continue
        (few, t_few), (most, t_most) = points[0], points[-1]
        lines.append(f"slope {label}: {fit[0]:+.4f} s per 1k tokens (intercept {fit[1]:.3f} s, {len(points)} points); "
                     f"{few} -> {most} tokens (x{most / few:.2f}): {t_few:.3f} -> {t_most:.3f} s "
                     f"(x{t_most / t_few:.2f})")
    return lines


def summary_table(rows: list[dict]) -> str:
    """Median seconds per iteration as a Markdown table: a line per (tiles, steps) point, a column
    per curve; ``error`` where the point failed."""
    labels = list(dict.fromkeys(curve_label(r) for r in rows))
    points: dict[tuple, dict] = {}
    for r in rows:
        points.setdefault((r["crop_tiles"], r["steps"]), {})[curve_label(r)] = r
    lines = ["| tiles | steps | tokens | " + " | ".join(labels) + " |", "|---" * (3 + len(labels)) + "|"]
    for (crop, steps), cells in sorted(points.items()):
        measured = [r for r in cells.values() if "error" not in r]
        tiles = measured[0]["tiles"] if measured else f"{crop} + 1?"
        tokens = measured[0]["seq_len"] if measured else "–"
        values = [f"{cells[label]['median_s']:.3f}" if "median_s" in cells.get(label, {})
                  else "error" if label in cells else "–" for label in labels]
        lines.append(f"| {tiles} | {steps} | {tokens} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def newest_rows(rows: list[dict]) -> list[dict]:
    """The newest row of every (curve, device, crop tiles, steps), in the file's order."""
    keep: dict[tuple, dict] = {}
    for row in rows:
        keep[(curve_label(row), row.get("device"), row.get("crop_tiles"), row.get("steps"))] = row  # later wins
    return list(keep.values())


def plot(rows: list[dict], path: Path, title: str) -> Path:
    """Seconds per iteration (left) and peak GiB (right) against tokens per instance: a line per
    curve and steps value through its tile counts; colour per mode, dashed for the reference,
    marker per steps value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    ok = [r for r in rows if "error" not in r]
    labels = list(dict.fromkeys(curve_label(r) for r in ok))
    colours = {key: f"C{i}" for i, key in enumerate(dict.fromkeys(lab.removeprefix("reference_") for lab in labels))}
    steps_values = sorted({r["steps"] for r in ok})
    markers = {s: STEP_MARKERS[i % len(STEP_MARKERS)] for i, s in enumerate(steps_values)}
    tiles_values = sorted({r["tiles"] for r in ok})

    def style(label):
        return {"color": colours[label.removeprefix("reference_")],
                "linestyle": "--" if label.startswith("reference_") else "-"}

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.4))
    for ax, field, unit in ((axes[0], "median_s", "median seconds per iteration"),
                            (axes[1], "peak_gib", "peak GPU memory (GiB)")):
        for label in labels:
            for steps in steps_values:
                points = sorted((r["seq_len"], r[field]) for r in ok if curve_label(r) == label and r["steps"] == steps)
                if points:
                    ax.plot([t / 1000 for t, _ in points], [v for _, v in points], marker=markers[steps], markersize=6,
                            linewidth=1.6, alpha=0.9, **style(label))
        ax.set_xlabel("tokens per training instance (thousands)")
        ax.set_ylabel(unit)
        ax.set_ylim(bottom=0)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
    if ok and not any(r["peak_gib"] for r in ok):
        axes[1].text(0.5, 0.5, "not measured (cpu)", transform=axes[1].transAxes, ha="center", color="gray")
    handles = [Line2D([], [], linewidth=2, label=label.replace("reference_", "ref. "), **style(label))
               for label in labels]
    handles += [Line2D([], [], color="gray", marker=markers[s], linestyle="none", label=f"{s} steps")
                for s in steps_values]
    axes[0].legend(handles=handles, fontsize=8, loc="upper left", ncol=2)
    axes[0].set_title(f"solid: ours, dashed: reference-equivalent; along a line: {', '.join(map(str, tiles_values))} "
                      "tiles", fontsize=9)
    return save_figure(fig, path, title)


def figure_title(rows: list[dict]) -> str:
    ok = [r for r in rows if "error" not in r] or rows
    dates = sorted({r["date"] for r in ok})
    iters = sorted({r["timed_iters"] for r in ok if "timed_iters" in r})
    title = f"{ok[0]['device']}, torch {ok[0].get('torch', '?')}, {dates[0]}" + (f" – {dates[-1]}" if len(dates) > 1
                                                                                 else "")
    if iters:
        title += f", median of {'/'.join(map(str, iters))} timed iterations"
    return title


def report(rows: list[dict], out: Path) -> Path:
    """Figure, table and slope lines of ``rows`` (printed); returns the figure's path."""
    png = plot(rows, out / "scaling.png", figure_title(rows))
    print(png)
    print(summary_table(rows))
    for line in slope_lines(rows):
        print(line)
    return png


def model_folder(work: Path, device: str) -> Path:
    """bench.py's model: on cuda the full-size random-init one under ``work`` (built once), on cpu
    the bundled tiny one."""
    from bench import build_model, quiet_progress

    quiet_progress()
    if device == "cpu":
        from dreamprm.tiny import ensure_tiny

        return ensure_tiny()
    path = work / "model"
    if not (path / "config.json").exists():
        build_model(path)
    return path


class SweepStopped(BaseException):
    """SIGTERM (the device call's ``timeout``), SIGINT or ``--time_limit``: stop the sweep, keep its
    rows, still draw them. A BaseException, so that no ``except Exception`` on the way swallows it."""


def stop_sweep(signum, frame):
    raise SweepStopped(signal.Signals(signum).name)


def run_sweep(a, specs: dict, tiles: list[int], steps: list[int], out: Path, work: Path,
              deadline: float | None = None) -> tuple[list[dict], bool]:
    """Every mode at every point, a row appended to ``out/scaling.json`` as each is measured; no
    run starts after ``deadline`` (``time.monotonic()``). Returns the rows and whether the sweep ran
    to its end (not stopped by a signal or the deadline)."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    from bench import build_data, measure_training, release
    from dreamprm.trainer import TrainingInterrupted

    if a.device == "cpu":  # a smoke run's numbers are not results; one thread keeps a shared small machine usable
        torch.set_num_threads(1)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = model_folder(work, a.device)
    tok = AutoTokenizer.from_pretrained(model_dir)
    device_name = torch.cuda.get_device_name() if a.device == "cuda" else CPU_DEVICE
    labels = {k: v for k, v in (("run", a.run), ("note", a.note)) if v is not None}
    rows = []
    total = len(tiles) * len(steps) * len(specs)
    try:
        for crop in tiles:
            data = work / "scaling-data" / f"tiles{crop}"
            for k, n_steps in enumerate(steps):
                build_data(data, tok, crop_tiles=crop, steps=n_steps, write_images=k == 0)  # images once per tiling
                for spec, (mode, base, reference, options) in specs.items():
                    if deadline is not None and time.monotonic() > deadline:
                        raise SweepStopped(f"--time_limit {a.time_limit:g} s")
                    print(f"== {len(rows) + 1}/{total}: {spec}, {crop} crop tiles, {n_steps} steps", flush=True)
                    started = time.perf_counter()
                    run_dir = work / f"scaling_{spec}"
                    row = {"date": dt.date.today().isoformat(), "device": device_name, "torch": torch.__version__,
                           "transformers": transformers.__version__, "mode": mode, "options": sorted(options),
                           "crop_tiles": crop}
                    stopped = None
                    try:
                        m = measure_training(a.device, model_dir, data, run_dir, base, reference, options, a.iters,
                                             a.warmup, max_patch_num=crop, final_checkpoint=False)
                    except Exception as exc:  # e.g. out of memory at the largest point: record it and go on
                        shutil.rmtree(run_dir, ignore_errors=True)
                        if isinstance(exc, TrainingInterrupted):  # the trainer caught the signal: stop here too
                            stopped = signal.Signals(exc.signum).name
                            error = f"interrupted by {stopped}"
                        else:
                            traceback.print_exc()
                            error = f"{type(exc).__name__}: {exc}"[:300]
                        row |= {"steps": n_steps, "error": error, **labels}
                    else:
                        med = statistics.median(m["secs"])
                        row |= {"tiles": m["tiles"], "steps": m["steps"], "seq_len": m["seq_len"],
                                "median_s": round(med, 4), "min_s": round(min(m["secs"]), 4),
                                "timed_iters": len(m["secs"]), "peak_gib": round(m["peak_gib"], 2),
                                "tokens_per_s": round(m["seq_len"] / med, 1),
                                "wall_s": round(time.perf_counter() - started, 1), **labels}
                    release(a.device)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                    append_rows(out / "scaling.json", [row])  # row by row: a run cut short keeps what it measured
                    if stopped:
                        raise SweepStopped(stopped)
    except SweepStopped as stop:
        print(f"sweep stopped by {stop} after {len(rows)} of {total} rows", file=sys.stderr, flush=True)
        return rows, False
    return rows, True


def default_out(device: str) -> Path:
    from bench import default_run_dir

    return default_run_dir(device)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cpu: a smoke run on the bundled tiny model, fp32 (numbers meaningless)")
    ap.add_argument("--out", default=None, help="run folder for scaling.json and scaling.png "
                                                "(default bench.py's: bench/runs/<date>-<gpu>; on cpu a temporary one)")
    ap.add_argument("--work", default=None, help="scratch folder: model, data, training outputs (default bench.py's)")
    ap.add_argument("--iters", type=int, default=6, help="timed iterations per point (default %(default)s)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed iterations before them (default %(default)s)")
    ap.add_argument("--modes", default=DEFAULT_MODES, help="training modes, comma-separated (default %(default)s)")
    ap.add_argument("--tiles", default="1,3,6,12", help="crop tiles per image (default %(default)s)")
    ap.add_argument("--steps", default="4,8,16", help="steps per record (default %(default)s)")
    ap.add_argument("--options", default="", help="options for every mode: gc, noac, compile, graphs, bettydarts "
                                                  "(e.g. noac,compile)")
    ap.add_argument("--run", default=None, help="the rows' run name (one machine and process order)")
    ap.add_argument("--note", default=None, help="a note stored in every row")
    ap.add_argument("--time_limit", type=float, default=None, metavar="S",
                    help="start no run after S seconds: the sweep stops there and draws what it measured "
                         "(for a device call with a hard limit)")
    ap.add_argument("--plot", type=Path, default=None, metavar="RUN",
                    help="only redraw RUN/scaling.png, and print the table and slopes, from RUN/scaling.json")
    a = ap.parse_args()
    if a.plot is not None:
        source = a.plot / "scaling.json"
        if not source.is_file():
            raise SystemExit(f"no scaling.json in {a.plot}")
        rows = newest_rows(json.loads(source.read_text()))
        if not any("error" not in r for r in rows):
            raise SystemExit(f"no measured rows in {source}")
        report(rows, a.plot)
        return 0
    if a.iters < 1 or a.warmup < 0:
        raise SystemExit("--iters must be at least 1 and --warmup at least 0")
    tiles, steps = int_list(a.tiles, "--tiles"), int_list(a.steps, "--steps")
    specs = sweep_specs(a.modes, a.options)
    out = Path(a.out) if a.out else default_out(a.device)
    if a.device == "cpu" and out.resolve().is_relative_to(RUNS.resolve()):
        raise SystemExit(f"{out} is a results folder; a cpu smoke run's numbers are not results (pass another --out)")
    from bench import WORK

    out.mkdir(parents=True, exist_ok=True)
    print(f"# {dt.datetime.now().isoformat(timespec='seconds')} python bench/scaling.py {' '.join(sys.argv[1:])}",
          flush=True)
    started = time.perf_counter()
    deadline = None if a.time_limit is None else time.monotonic() + a.time_limit
    previous = {s: signal.signal(s, stop_sweep) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        rows, complete = run_sweep(a, specs, tiles, steps, out, Path(a.work) if a.work else WORK, deadline)
        print(f"{len(rows)} rows appended to {out / 'scaling.json'}; sweep took {time.perf_counter() - started:.0f} s",
              flush=True)
        if any("error" not in r for r in rows):
            report(rows, out)
    except SweepStopped as stop:  # a second signal while drawing: leave at once
        print(f"stopped by {stop}", file=sys.stderr)
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    failed = [f"{curve_label(r)} at {r['crop_tiles']} crop tiles, {r['steps']} steps" for r in rows if "error" in r]
    if failed:
        print(f"points that failed: {'; '.join(failed)}", file=sys.stderr)
    return 0 if complete and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
