"""The figures: training (loss curves, the learned weights) and best-of-N (accuracy vs N).

* :func:`plot_losses`: the lower-level losses (plain and weighted) in one panel, the meta loss
  in its own panel below. The weighted loss is drawn dashed over a wide translucent plain
  loss, so both stay visible when they coincide (every weight 1), and the legend says so.
  Raw per-iteration values are faint; the bold line is their moving average. A run evaluated
  during training (``eval_*`` keys in its rows) gets a last panel: the best-of-N accuracy of
  every aggregation at each evaluation (own marker and line style each, as in
  :func:`plot_curve`), the best mean-aggregation evaluation ringed, and pass@1 and the oracle
  as reference lines.
* :func:`plot_weights`: for per-instance weights (Instance Table, Instance Net) a histogram
  with integer count ticks beside a dot plot of each domain's mean weight (95% interval, value
  and instance count written beside it) on an axis zoomed to the means; for a handful of
  per-domain weights (Domain Table) only the per-domain panel, as bars from 1.0 (the average
  weight) to each weight.
* :func:`plot_curve`: ``test.py``'s best-of-N accuracy vs N (``dreamprm.selection.accuracy_vs_n``):
  one line per PRM aggregation, each with its own marker and line style and shifted sideways
  by a fraction of one N, so lines that coincide stay visible; random pick, oracle and
  self-consistency as reference lines.
* :func:`report_figure` and :func:`scaling_figure`: ``python -m dreamprm.report``'s comparison of
  runs (one bar per method, oracle and pass@1 as lines) and their accuracy-vs-N curves over random
  subsets (``dreamprm.scaling``: mean, ± std band, min–max whiskers).
"""

from __future__ import annotations

import json
import math
import textwrap
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, PercentFormatter  # noqa: E402

from .aggregation import AGGREGATIONS  # noqa: E402

# (metrics key, legend label, colour); the weighted loss is dashed over the plain one
LOSSES = (("lower_loss", "lower loss", "tab:blue"), ("weighted_loss", "weighted lower loss", "tab:orange"))
META = ("meta_loss", "meta loss", "tab:green")
INSTANCE, DOMAIN = "instance", "domain"


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


def read_metrics(metrics_path) -> list[dict]:
    """The rows of a ``metrics.jsonl``; a line cut short by a kill is skipped."""
    rows = []
    path = Path(metrics_path)
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "iteration" in row:
            rows.append(row)
    return rows


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["iteration"], float(r[key])) for r in rows
           if isinstance(r.get(key), (int, float)) and math.isfinite(float(r[key]))]
    return ([p[0] for p in pts], [p[1] for p in pts]) if pts else ([], [])


def _plot_series(ax, xs, ys, window, label, color, **style) -> None:
    if window > 1:
        ax.plot(xs, ys, color=color, alpha=0.2, linewidth=0.8)
    ax.plot(xs, _moving_average(ys, window), color=color, label=label, **style)


def _loss_axis(ax, values: list[float], window: int) -> None:
    if values and min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")
    ax.set_ylabel("loss" if window == 1 else f"loss (bold: mean of {window})")
    ax.grid(alpha=0.3)


def _window(n: int) -> int:
    """Moving-average width: about a twentieth of the run (1, no smoothing, below 40 points)."""
    return max(1, round(n / 20)) if n >= 40 else 1


def _legend_outside(ax) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)


def plot_losses(metrics_path: Path, out: Path) -> Path:
    """Write the loss figure of a run's ``metrics.jsonl`` (see :func:`loss_figure`) to ``out``."""
    return save_figure(loss_figure(metrics_path), out)


def loss_figure(metrics_path: Path):
    """Loss curves of a run's ``metrics.jsonl``: lower level on top, meta loss (bi-level runs) below,
    and the evaluation accuracies (runs evaluated during training) at the bottom."""
    rows = read_metrics(metrics_path)
    series = {key: _series(rows, key) for key, _, _ in (*LOSSES, META)}
    has_meta = bool(series[META[0]][0])
    evals = [r for r in rows if any(isinstance(r.get(f"eval_accuracy_{a}"), (int, float)) for a in AGGREGATIONS)]
    heights = [4] + [2.4] * has_meta + [3.2] * bool(evals)
    fig, axes = plt.subplots(len(heights), 1, figsize=(10, sum(heights)), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    top = axes[0][0]
    (lx, ly), (wx, wy) = series["lower_loss"], series["weighted_loss"]
    window = _window(len(ly or wy))
    same = bool(ly) and (lx, ly) == (wx, wy)
    if ly:  # wide and translucent under the dashed weighted loss, so that both show where they agree
        style = dict(linewidth=4.5, alpha=0.45, solid_capstyle="round") if wy else dict(linewidth=1.8)
        _plot_series(top, lx, ly, window, LOSSES[0][1], LOSSES[0][2], **style)
    if wy:
        label = LOSSES[1][1] + ("\n(identical to the\nlower loss)" if same else "")
        _plot_series(top, wx, wy, window, label, LOSSES[1][2], linewidth=1.6, linestyle=(0, (4, 2)))
    if ly or wy:
        _legend_outside(top)
    else:
        top.text(0.5, 0.5, "no losses recorded yet", ha="center", va="center", transform=top.transAxes)
        top.set_xticks([])
        top.set_yticks([])
    _loss_axis(top, ly + wy, window)
    top.set_title(f"Lower level: PRM training loss ({len(rows)} iterations)")
    bottom = top
    if has_meta:
        bottom = axes[1][0]
        mx, my = series[META[0]]
        _plot_series(bottom, mx, my, _window(len(mx)), META[1], META[2], linewidth=1.6, marker="o",
                     markersize=3, markevery=max(1, len(mx) // 40))
        _loss_axis(bottom, my, _window(len(mx)))
        bottom.set_title(f"Upper level: meta loss ({len(mx)} meta steps)")
        _legend_outside(bottom)
    if evals:
        bottom = axes[-1][0]
        _accuracy_panel(bottom, evals)
    bottom.set_xlabel("iteration")
    if ly or wy or evals:
        bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


# (metrics key, legend label, style) of the evaluation panel's reference lines
EVAL_REFERENCES = (("eval_pass@1", "pass@1 (random pick)", dict(linestyle=(0, (1, 2)), color="0.45", linewidth=1.6)),
                   ("eval_oracle", "oracle (any correct)", dict(linestyle=(0, (4, 2)), color="black", linewidth=1.4)))


def _accuracy_panel(ax, rows: list[dict]) -> None:
    """Best-of-N accuracy at each evaluation: one line per aggregation, pass@1 and oracle for
    reference (flat lines when, as usual, every evaluation used the same records)."""
    values = []
    drawn = {}
    for name in AGGREGATIONS:  # drawn in this order, so the legend and the lines keep it
        xs, ys = _series(rows, f"eval_accuracy_{name}")
        if not xs:
            continue
        same = next((other for other, pts in drawn.items() if pts == (xs, ys)), None)
        drawn[name] = (xs, ys)
        marker, style, color = _AGG_STYLES[name]
        ax.plot(xs, [100 * y for y in ys], marker=marker, linestyle=style, color=color, markersize=6,
                markerfacecolor="none", markeredgewidth=1.4, linewidth=1.4,
                label=f"PRM {name}" + (f" (same as {same})" if same else ""))
        values += ys
    for key, label, style in EVAL_REFERENCES:
        xs, ys = _series(rows, key)
        if not xs:
            continue
        if len(set(ys)) == 1:  # the same records every time: one flat line across the panel
            ax.axhline(100 * ys[0], label=f"{label} {100 * ys[0]:.1f}%", **style)
        else:
            ax.plot(xs, [100 * y for y in ys], label=label, **style)
        values += ys
    if not values:
        return
    bx, by = _series(rows, "eval_accuracy_mean")
    if len(bx) > 1:  # the evaluation --save_best keeps (the first of the highest)
        best = by.index(max(by))
        ax.plot([bx[best]], [100 * by[best]], marker="o", markersize=14, markerfacecolor="none",
                markeredgecolor="tab:blue", markeredgewidth=1.2, linestyle="none",
                label=f"best mean: iteration {bx[best]}")
    lo, hi = 100 * min(values), 100 * max(values)
    pad = max(3.0, 0.08 * (hi - lo))
    top = min(102.0, hi + pad)
    ax.set_ylim(lo - pad if lo - pad > 0 else -0.04 * top, top)  # a little room below 0 keeps markers visible
    ticks = MaxNLocator(6, integer=True).tick_values(*ax.get_ylim())  # whole percents, none below 0
    ax.yaxis.set_major_locator(FixedLocator([t for t in ticks if 0 <= t <= 100]))
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax.set_ylabel("best-of-N accuracy")
    ax.grid(alpha=0.3)
    n = rows[-1].get("eval_questions")
    on = f" on {n} questions" if isinstance(n, int) else ""
    count = len(bx) or len(rows)
    ax.set_title(f"Evaluation during training: best-of-N accuracy{on} "
                 f"({count} evaluation{'' if count == 1 else 's'})")
    _legend_outside(ax)


# ----------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------
def _mean_and_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95% interval (0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, 1.96 * math.sqrt(var / n)


def _zoomed_limits(lo: float, hi: float, ref: float | None = None, room: tuple[float, float] = (0.12, 0.5)):
    """Limits around [lo, hi] (and ``ref`` when it is close by), never forced to 0, with
    ``room`` (fractions of the span) left and right for the value labels."""
    if ref is not None and min(abs(ref - lo), abs(ref - hi)) <= 2 * max(hi - lo, 1e-9):
        lo, hi = min(lo, ref), max(hi, ref)
    if hi <= lo:  # one value: centred in a narrow window
        half = max(abs(hi), 1.0) * 0.01
        return lo - half, hi + half
    span = hi - lo
    return lo - room[0] * span, hi + room[1] * span


def _fmt(x: float, spread: float) -> str:
    """``x`` with enough decimals to tell apart values ``spread`` apart (2 to 6)."""
    digits = min(6, max(2, -math.floor(math.log10(spread / 20)))) if spread > 0 else 3
    return f"{x:.{digits}f}"


def _domain_panel(ax, names: list[str], rows: list[tuple[float, float, int]], overall: float, counts_label: str) -> None:
    """One row per domain: mean (dot), its 95% interval (bar), value and count written beside it."""
    ys = range(len(names))
    means = [m for m, _, _ in rows]
    errs = [e for _, e, _ in rows]
    lo = min(m - e for m, e in zip(means, errs))
    hi = max(m + e for m, e in zip(means, errs))
    left, right = _zoomed_limits(lo, hi, overall)
    ax.errorbar(means, list(ys), xerr=errs, fmt="o", color="tab:blue", ecolor="tab:blue", elinewidth=2,
                capsize=4, markersize=7, zorder=3, label="mean weight (95% interval)")
    ax.axvline(overall, color="gray", linestyle=":", linewidth=1.2, label=f"mean of all weights ({overall:.4g})")
    spread = max(means) - min(means)
    for y, (m, e, n) in zip(ys, rows):
        ax.annotate(f"{_fmt(m, spread)}  ({counts_label}={n})", (m + e, y), xytext=(6, 0), textcoords="offset points",
                    va="center", fontsize=9)
    ax.set_xlim(left, right)
    ax.set_yticks(list(ys), names)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel("mean weight (axis zoomed to the means)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)


def _domain_weights_panel(ax, names: list[str], values: list[float], counts: Mapping[str, int] | None) -> None:
    """Domain Table: a bar from 1.0 (the average weight) to each domain's weight, value beside it."""
    ys = list(range(len(names)))
    left, right = _zoomed_limits(min(values), max(values), 1.0, room=(0.45, 0.45))
    colors = ["tab:green" if v >= 1.0 else "tab:red" for v in values]
    ax.barh(ys, [v - 1.0 for v in values], left=1.0, height=0.55, color=colors, alpha=0.75)
    ax.axvline(1.0, color="black", linewidth=1)
    spread = max(values) - min(values)
    for y, name, v in zip(ys, names, values):
        text = _fmt(v, spread) + (f"  (n={counts[name]})" if counts and name in counts else "")
        above = v >= 1.0  # the label sits at the bar's far end
        ax.annotate(text, (v, y), xytext=(6 if above else -6, 0), textcoords="offset points", va="center",
                    ha="left" if above else "right", fontsize=9)
    ax.set_xlim(left, right)
    ax.set_yticks(ys, names)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel("domain weight (1.0 = average; axis zoomed)")


def plot_weights(weights: dict[str, float], domain_of: dict[str, str], out: Path, title: str,
                 kind: str | None = None, counts: Mapping[str, int] | None = None) -> Path:
    """Write the weight figure (see :func:`weights_figure`) to ``out``."""
    return save_figure(weights_figure(weights, domain_of, title, kind, counts), out)


def weights_figure(weights: dict[str, float], domain_of: dict[str, str], title: str,
                   kind: str | None = None, counts: Mapping[str, int] | None = None):
    """The learned weights: ``weights`` maps a key (an instance id, or a domain) to its weight.

    ``kind`` is ``"instance"`` (histogram + per-domain means, instances grouped by ``domain_of``)
    or ``"domain"`` (one weight per domain: the per-domain panel alone). None picks ``"domain"``
    when every key is its own domain in ``domain_of`` (what the trainer passes for the Domain
    Table), else ``"instance"``. ``counts`` (optional) is the number of training instances per
    domain, written beside each domain; by default an instance plot counts its weights.
    """
    if kind is None:
        own = bool(weights) and all(domain_of.get(k) == k for k in weights)
        kind = DOMAIN if own else INSTANCE
    if kind not in (INSTANCE, DOMAIN):
        raise ValueError(f"kind must be 'instance' or 'domain', got {kind!r}")
    values = [float(v) for v in weights.values()]
    if kind == DOMAIN or not values:
        names = sorted(weights)
        fig, ax = plt.subplots(figsize=(7.5, max(2.6, 0.5 * len(names) + 1.6)))
        if names:
            _domain_weights_panel(ax, names, [float(weights[n]) for n in names], counts)
        ax.set_title(f"{title}: {len(names)} domain weights")
        return fig

    by_domain: dict[str, list[float]] = defaultdict(list)
    for key, w in weights.items():
        by_domain[domain_of.get(key, "default")].append(float(w))
    names = sorted(by_domain)
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12, max(4.2, 0.5 * len(names) + 2)), gridspec_kw={"width_ratios": [1, 1.15]})
    lo, hi = min(values), max(values)
    mean = sum(values) / len(values)
    if hi > lo:
        left.hist(values, bins=min(50, max(5, round(math.sqrt(len(values)) * 1.5))), color="tab:blue",
                  edgecolor="white", linewidth=0.5)
        spread = f"min {lo:.3g}, max {hi:.3g}"
    else:  # every weight equal (the start of a run): one narrow bar
        half = 0.01 * max(abs(lo), 1.0)
        left.hist(values, bins=1, range=(lo - half / 10, lo + half / 10), color="tab:blue")
        left.set_xlim(lo - half, lo + half)
        spread = f"all {lo:.4g}"
    left.axvline(mean, color="black", linestyle="--", linewidth=1.2, label=f"mean {mean:.4g}")
    left.yaxis.set_major_locator(MaxNLocator(integer=True))
    left.xaxis.set_major_locator(MaxNLocator(nbins=6))
    left.ticklabel_format(axis="x", useOffset=False, style="plain")
    left.set_xlabel("weight")
    left.set_ylabel("instances")
    left.set_title(f"{title}: {len(values)} weights ({spread})")
    left.legend(loc="upper left", fontsize=8)
    left.grid(axis="y", alpha=0.3)
    stats = []
    for d in names:
        m, e = _mean_and_interval(by_domain[d])
        stats.append((m, e, int(counts[d]) if counts and d in counts else len(by_domain[d])))
    _domain_panel(right, names, stats, mean, "n")
    right.set_title("mean weight per domain")
    return fig


# ----------------------------------------------------------------------------------------------
# best-of-N accuracy vs N
# ----------------------------------------------------------------------------------------------
# (marker, line style, colour) per aggregation: each line stays visible where others coincide
_AGG_STYLES = {
    "mean": ("o", "-", "tab:blue"),
    "log_mean": ("s", (0, (5, 2)), "tab:orange"),
    "max": ("^", "-.", "tab:green"),
    "min": ("v", ":", "tab:red"),
    "log_odds": ("D", (0, (6, 2, 1, 2, 1, 2)), "tab:purple"),
}
_BASE_STYLES = {
    "random": dict(linestyle=(0, (1, 2)), color="0.45", linewidth=1.6, label="random pick (= pass@1)"),
    "oracle": dict(linestyle=(0, (4, 2)), color="black", linewidth=1.4, label="oracle (pass@N)"),
    "self_consistency": dict(linestyle="-", color="tab:brown", linewidth=1.2, marker="x", markersize=6,
                             label="self-consistency"),
}


def curve_figure(curve: dict, aggregations: Sequence[str] = AGGREGATIONS):
    """The accuracy-vs-N figure (a matplotlib Figure) of ``accuracy_vs_n``'s ``curve``. The PRM
    aggregations get distinct markers and line styles and are shifted apart horizontally by a
    fraction of one N, so a line that coincides with another (often: mean, log_mean, log_odds)
    still shows; a curve equal to an earlier one says so in the legend."""
    xs = list(curve["n"])
    max_n = xs[-1] if xs else 1
    fig, ax = plt.subplots(figsize=(9, 4.8))
    names = [a for a in aggregations if a in curve]
    width = 0.36 if len(names) > 1 else 0.0  # total horizontal spread of the shifted lines, in N
    for j, name in enumerate(names):
        marker, style, color = _AGG_STYLES.get(name, ("o", "-", None))
        shift = (j / (len(names) - 1) - 0.5) * width if len(names) > 1 else 0.0
        ys = [100 * v for v in curve[name]]
        same = next((other for other in names[:j] if curve[other] == curve[name]), None)
        label = f"PRM {name}" + (f" (same as {same})" if same else "")
        ax.plot([x + shift for x in xs], ys, marker=marker, linestyle=style, color=color, label=label,
                markersize=6, markerfacecolor="none", markeredgewidth=1.4, linewidth=1.4,
                markevery=max(1, len(xs) // 24))
    for name, style in _BASE_STYLES.items():
        if name in curve:
            ax.plot(xs, [100 * v for v in curve[name]], **style)
    ax.set_xlabel("N (candidates per question, a uniformly random subset)")
    ax.set_ylabel("accuracy (expected)")
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    if max_n <= 16:
        ax.xaxis.set_major_locator(FixedLocator(xs))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=12, integer=True))
    ax.set_xlim(0.5, max_n + 0.5)
    ax.grid(alpha=0.3)
    exact = curve.get("self_consistency_exact", [])
    if exact and all(exact):
        sc = "self-consistency: exact too (every subset enumerated)"
    else:
        sc = (f"self-consistency: mean of {curve.get('draws')} random subsets (seed {curve.get('seed')}) where a "
              f"question has over {curve.get('exact_limit')} subsets of N, exact elsewhere")
    note = "exact expectations for the PRM aggregations, random pick and oracle; " + sc
    ax.set_title("Best-of-N accuracy vs N\n" + "\n".join(textwrap.wrap(note, 95)), fontsize=9.5)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, title_fontsize=7,
              title="PRM lines are shifted\nsideways to stay visible" if width else None)
    return fig


def plot_curve(curve: dict, path, aggregations: Sequence[str] = AGGREGATIONS) -> Path:
    """Write ``curve_figure`` to ``path`` (PNG; the folder is created)."""
    return save_figure(curve_figure(curve, aggregations), path)


# ----------------------------------------------------------------------------------------------
# the comparison of runs (python -m dreamprm.report)
# ----------------------------------------------------------------------------------------------
REPORT_WIDTH = 9.0  # inches; the height grows with the rows (report_figure_inches)


def report_figure_inches(n_rows: int) -> tuple[float, float]:
    """The size of :func:`report_figure` for ``n_rows`` bars: 9 inches wide, 3/8 per bar plus
    room for the title, axis and legend (3 at least); whole pixels at 120 dpi."""
    return REPORT_WIDTH, max(3.0, 2.0 + 0.375 * n_rows)


def _zoomed_percent(lo: float, hi: float) -> tuple[float, float]:
    """Axis limits in % around [lo, hi], on multiples of 5, within [0, 102] (a line at 100%
    stays clear of the frame)."""
    left = max(0.0, 5 * math.floor((lo - 4) / 5))
    right = min(102.0, 5 * math.ceil((hi + 4) / 5))
    return left, max(right, left + 5)


def report_figure(rows: Sequence[Mapping], path, title: str | None = None) -> Path:
    """Write the comparison figure of ``dreamprm.report``'s table rows to ``path`` (PNG).

    One horizontal bar per row (``method``, ``accuracy``; baselines, ``kind == "baseline"``, in
    grey), its value and gain over pass@1 written on the right; the ``oracle`` as a solid and
    ``pass@1`` as a dashed vertical line across the rows of each test set (``test_set``: rows of
    one test set are expected together, as the report orders them)."""
    rows = list(rows)
    fig, ax = plt.subplots(figsize=report_figure_inches(len(rows)))
    ys = list(range(len(rows)))
    acc = [100 * r["accuracy"] for r in rows]
    several = len({r.get("test_set") for r in rows}) > 1
    colors = ["0.62" if r.get("kind") == "baseline" else "tab:blue" for r in rows]
    ax.barh(ys, acc, height=0.62, color=colors, zorder=2)
    values = acc + [100 * r["oracle"] for r in rows] + [100 * r["pass@1"] for r in rows]
    left, right = _zoomed_percent(min(values), max(values))
    ax.set_xlim(left, right)
    start = 0
    for end in range(1, len(rows) + 1):  # one pair of reference lines per run of rows on one test set
        if end < len(rows) and rows[end].get("test_set") == rows[start].get("test_set"):
            continue
        top, bottom = start - 0.45, end - 1 + 0.45
        first = start == 0
        ax.vlines(100 * rows[start]["oracle"], top, bottom, colors="black", linewidth=1.5, zorder=3,
                  label="oracle (any candidate correct)" if first else None)
        ax.vlines(100 * rows[start]["pass@1"], top, bottom, colors="tab:red", linestyles=(0, (4, 2)), linewidth=1.5,
                  zorder=3, label="pass@1 (no selection)" if first else None)
        start = end
    labels = [str(r["method"]) + (f"\n[{r['test_set']}]" if several else "") for r in rows]
    ax.set_yticks(ys, labels, fontsize=9)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    values_axis = ax.twinx()  # the values in a column of their own, clear of the bars and lines
    values_axis.set_ylim(ax.get_ylim())
    values_axis.set_yticks(ys, [f"{a:.1f}%  ({100 * (r['accuracy'] - r['pass@1']):+.1f})" for r, a in zip(rows, acc)],
                           fontsize=9)
    values_axis.tick_params(axis="y", length=0)
    ax.xaxis.set_major_locator(MaxNLocator(8, steps=[1, 2, 2.5, 5, 10]))
    ax.xaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax.set_xlabel("best-of-N accuracy (axis zoomed; right: accuracy and, in brackets, gain over pass@1 in points)")
    ax.grid(axis="x", alpha=0.3, zorder=0)
    ax.set_title(title or "Best-of-N accuracy", fontsize=11, pad=22)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8.5, frameon=False)
    return save_figure(fig, path)


_SCALING_BASE_STYLES = {
    "oracle": dict(color="black", linestyle=(0, (4, 2))),
    "random": dict(color="0.45", linestyle=(0, (1, 2))),
    "self_consistency": dict(color="tab:brown", linestyle="-"),
}


def scaling_figure_inches(n_panels: int) -> tuple[float, float]:
    """The size of :func:`scaling_figure` with ``n_panels`` test sets: 10 inches wide, 4.5 per
    panel plus 0.75 for the title; whole pixels at 120 dpi."""
    return 10.0, 0.75 + 4.5 * max(1, n_panels)


def _scaling_panel(ax, curves: list[Mapping]) -> None:
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^v<>ph"
    width = 0.12 if len(curves) > 1 else 0.0  # total sideways spread, in log2 units
    prm, drawn = 0, []
    for j, c in enumerate(curves):
        shift = (j / (len(curves) - 1) - 0.5) * width if len(curves) > 1 else 0.0
        xs = [n * 2 ** shift for n in c["n"]]
        mean = [100 * v for v in c["mean"]]
        std = [100 * v for v in c["std"]]
        lo = [100 * (m - v) for m, v in zip(c["mean"], c["min"])]
        hi = [100 * (v - m) for m, v in zip(c["mean"], c["max"])]
        base = _SCALING_BASE_STYLES.get(c.get("baseline") or "")
        if base is not None:
            style = dict(base, marker="x", markersize=6, linewidth=1.4)
        else:
            style = dict(color=palette[prm % len(palette)], linestyle="-", marker=markers[prm % len(markers)],
                         markersize=6, linewidth=1.8, markerfacecolor="white", markeredgewidth=1.5)
            prm += 1
        key = (list(c["n"]), list(c["mean"]), list(c["std"]), list(c["min"]), list(c["max"]))
        same = next((label for label, other in drawn if other == key), None)
        drawn.append((c["label"], key))
        ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=style["color"], alpha=0.12 if base is None else 0.05, linewidth=0)
        ax.errorbar(xs, mean, yerr=[lo, hi], fmt="none", ecolor=style["color"], elinewidth=0.9, capsize=3, alpha=0.7)
        ax.plot(xs, mean, label=c["label"] + (f"\n(same as {same})" if same else ""), **style)
    all_n = sorted({n for c in curves for n in c["n"]})
    ax.set_xscale("log", base=2)
    ax.set_xlim(all_n[0] / 2 ** 0.35, all_n[-1] * 2 ** 0.35)
    ax.xaxis.set_major_locator(FixedLocator(all_n))
    ax.xaxis.set_minor_locator(FixedLocator([]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax.set_xlabel("N (candidates per question, a random subset; log scale)")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5, frameon=False)


def scaling_figure(curves: Sequence[Mapping], path, title: str | None = None) -> Path:
    """Write the accuracy-vs-N figure of ``dreamprm.report`` to ``path`` (PNG, size
    :func:`scaling_figure_inches`).

    ``curves``: one mapping per line, with ``label``, ``n`` and the ``mean``, ``std``, ``min``
    and ``max`` over the draws (fractions); optionally ``baseline`` (the name of a
    ``dreamprm.scaling`` baseline: drawn in that baseline's reference style) and ``group`` (the
    test set: one panel per group, titled with it). Each line is the mean, with a band of ± one
    std and whiskers from min to max; lines are shifted apart a little along the (log₂) N axis so
    that the whiskers stay visible, and a line equal to an earlier one says so in the legend."""
    curves = [c for c in curves if c["n"]]
    groups = list(dict.fromkeys(c.get("group") for c in curves)) or [None]
    fig, axes = plt.subplots(len(groups), 1, figsize=scaling_figure_inches(len(groups)), squeeze=False)
    for ax, group in zip(axes[:, 0], groups):
        mine = [c for c in curves if c.get("group") == group]
        if mine:
            _scaling_panel(ax, mine)
        if group is not None and len(groups) > 1:
            ax.set_title(f"test set {group}", fontsize=10)
    fig.suptitle((title or "Best-of-N accuracy vs N") + "\nline: mean over the draws; band: ± 1 std; whiskers: "
                 "min to max", fontsize=10)
    return save_figure(fig, path)
