"""dreamprm.figures: every loss line visible, integer histogram counts, zoomed per-domain axes,
and every best-of-N accuracy-vs-N line visible with readable ticks."""

from __future__ import annotations

import json
import math
import random

import matplotlib.pyplot as plt
import pytest

from dreamprm.aggregation import AGGREGATIONS
from dreamprm.figures import curve_figure, loss_figure, plot_curve, plot_losses, plot_weights, weights_figure

DOMAINS = ("charts", "scenes", "shapes")


@pytest.fixture
def metrics(tmp_path):
    """A bi-level run whose instance weights are all still 1: lower loss == weighted loss."""
    rng = random.Random(0)
    rows = []
    for it in range(1, 61):
        low = abs(rng.gauss(0.5, 0.4)) + 0.05
        rows.append({"iteration": it, "seconds": 0.02, "lower_loss": low, "weighted_loss": low,
                     "weight_min": 1.0, "weight_mean": 1.0, "weight_max": 1.0,
                     "meta_loss": abs(rng.gauss(0.3, 0.2)) + 0.01, "skipped_lower": 0})
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"iteration": 61, "lower_')  # cut by a kill
    return path


def _instances(n=48, spread=0.012, means=(0.985, 0.997, 1.004)):
    rng = random.Random(1)
    weights, domain_of = {}, {}
    for i in range(n):
        d = DOMAINS[i % len(DOMAINS)]
        weights[f"id{i}"] = means[i % len(DOMAINS)] + rng.gauss(0, spread)
        domain_of[f"id{i}"] = d
    return weights, domain_of


def _drawn(fig):
    fig.tight_layout()
    fig.canvas.draw()
    return fig


def _labels(ax, axis):
    ticks = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    return [t for t in ticks if t.get_text() and lo <= (t.get_position()[0 if axis == "x" else 1]) <= hi]


def _no_overlap(fig, labels):
    boxes = [t.get_window_extent(fig.canvas.get_renderer()) for t in labels]
    return all(not a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def _integer_counts(ax):
    """Every visible count tick label is a whole number ("4", not "4.0" or "2.5")."""
    texts = [t.get_text() for t in _labels(ax, "y")]
    return len(texts) >= 3 and all(t.isdigit() for t in texts)


def test_equal_lower_and_weighted_losses_both_show(metrics, tmp_path):
    fig = _drawn(loss_figure(metrics))
    try:
        lower, meta = fig.axes
        assert [t.get_text() for t in lower.get_legend().get_texts()] == [
            "lower loss", "weighted lower loss\n(identical to the\nlower loss)"]
        assert [t.get_text() for t in meta.get_legend().get_texts()] == ["meta loss"]
        plain, weighted = (next(line for line in lower.get_lines() if line.get_label() == label)
                           for label in ("lower loss", "weighted lower loss\n(identical to the\nlower loss)"))
        # same values, but the weighted line is dashed, thinner and drawn on top of the wide plain one
        assert list(plain.get_ydata()) == list(weighted.get_ydata()) and len(plain.get_ydata()) == 60
        assert weighted.get_linestyle() == "--" and plain.get_linestyle() == "-"
        assert plain.get_linewidth() >= 2 * weighted.get_linewidth()
        assert lower.get_lines().index(weighted) > lower.get_lines().index(plain)
        assert plain.get_color() != weighted.get_color()
    finally:
        plt.close(fig)
    out = plot_losses(metrics, tmp_path / "figs" / "run_losses.png")
    assert out.exists() and out.stat().st_size > 10_000


def test_cold_start_and_empty_runs(tmp_path):
    path = tmp_path / "metrics.jsonl"
    raw = [1 / i for i in range(1, 101)]
    path.write_text("".join(json.dumps({"iteration": i, "lower_loss": v}) + "\n" for i, v in enumerate(raw, 1)))
    fig = _drawn(loss_figure(path))
    try:
        (ax,) = fig.axes  # no meta loss: one panel
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["lower loss"]
        faint, bold = ax.get_lines()
        assert list(faint.get_ydata()) == raw and faint.get_alpha() < 0.5  # every value, faint
        assert bold.get_ydata()[-1] == pytest.approx(sum(raw[-5:]) / 5)  # with its moving average over 5
        assert ax.get_ylabel() == "loss (bold: mean of 5)"
    finally:
        plt.close(fig)
    path.write_text("")  # a run killed before its first iteration
    fig = _drawn(loss_figure(path))
    try:
        assert [t.get_text() for t in fig.axes[0].texts] == ["no losses recorded yet"]
    finally:
        plt.close(fig)


def test_instance_weights_figure_reads(tmp_path):
    weights, domain_of = _instances()
    fig = _drawn(weights_figure(weights, domain_of, "Instance Table"))
    try:
        hist, domains = fig.axes
        assert _integer_counts(hist)
        assert _no_overlap(fig, _labels(hist, "x"))
        # the domain means (about 0.98 to 1.00) on a zoomed axis, each with its value and count
        left, right = domains.get_xlim()
        assert 0.95 < left < 0.985 and 1.0 < right < 1.05
        notes = [t.get_text() for t in domains.texts]
        assert len(notes) == 3 and all(n.endswith("(n=16)") for n in notes)
        means = {d: sum(w for k, w in weights.items() if domain_of[k] == d) / 16 for d in DOMAINS}
        assert [float(n.split()[0]) for n in notes] == [pytest.approx(means[d], abs=1e-4) for d in DOMAINS]
        assert [t.get_text() for t in domains.get_yticklabels()] == list(DOMAINS)
    finally:
        plt.close(fig)
    out = plot_weights(weights, domain_of, tmp_path / "w.png", "Instance Table")
    assert out.exists() and out.stat().st_size > 10_000


def test_instance_net_weights_figure_reads(tmp_path):
    rng = random.Random(2)
    weights = {f"n{i}": 1 / (1 + math.exp(-rng.gauss(0.1 * (i % 3), 1.0))) for i in range(2000)}
    domain_of = {k: DOMAINS[i % 3] for i, k in enumerate(weights)}
    fig = _drawn(weights_figure(weights, domain_of, "Instance Net"))
    try:
        hist, domains = fig.axes
        assert _integer_counts(hist) and _no_overlap(fig, _labels(hist, "x"))
        assert len(hist.patches) <= 50
        assert sum(p.get_height() for p in hist.patches) == 2000
        assert domains.get_xlim()[0] > 0.3  # means near 0.5 are not squeezed against 0
        assert [t.get_text().split("  ")[1] for t in domains.texts] == ["(n=667)", "(n=667)", "(n=666)"]
    finally:
        plt.close(fig)


def test_domain_table_weights_get_the_domain_panel_alone(tmp_path):
    weights = {"charts": 0.97, "scenes": 1.01, "shapes": 1.02}
    for fig in (weights_figure(weights, {d: d for d in weights}, "Domain Table"),  # detected
                weights_figure(weights, {}, "Domain Table", kind="domain", counts={"charts": 16, "scenes": 20})):
        _drawn(fig)
        try:
            (ax,) = fig.axes
            left, right = ax.get_xlim()
            assert 0.9 < left < 0.97 and 1.02 < right < 1.1
            assert [t.get_text() for t in ax.get_yticklabels()] == list(DOMAINS)
            notes = [t.get_text() for t in ax.texts]
            assert [n.split()[0] for n in notes] == ["0.970", "1.010", "1.020"]
            if "n=" in "".join(notes):
                assert notes == ["0.970  (n=16)", "1.010  (n=20)", "1.020"]
        finally:
            plt.close(fig)
    out = plot_weights(weights, {d: d for d in weights}, tmp_path / "d.png", "Domain Table")
    assert out.exists() and out.stat().st_size > 5_000


# -- best-of-N accuracy vs N ------------------------------------------------------------------
def _drawn_curve_figure(curve, names=AGGREGATIONS):
    fig = curve_figure(curve, names)
    fig.tight_layout()
    fig.canvas.draw()
    return fig


def test_curve_figure_every_line_visible_and_readable_ticks(tmp_path):
    same = [0.5, 0.55, 0.6]
    curve = {"n": [1, 2, 3], "mean": same, "log_mean": list(same), "log_odds": list(same),
             "min": [0.5, 0.52, 0.58], "max": [0.5, 0.6, 0.7], "random": [0.5] * 3, "oracle": [0.5, 0.8, 0.9],
             "self_consistency": [0.5, 0.5, 0.6], "self_consistency_exact": [True] * 3, "draws": 20, "seed": 0,
             "exact_limit": 256}
    fig = _drawn_curve_figure(curve)
    ax = fig.axes[0]
    prm = [l for l in ax.get_lines() if l.get_label().startswith("PRM ")]
    assert len(prm) == 5
    points = [frozenset(map(tuple, l.get_transform().transform(l.get_xydata()).round(1))) for l in prm]
    for i in range(5):  # no line is hidden under another: their drawn points differ everywhere
        for j in range(i):
            assert not points[i] & points[j], (prm[i].get_label(), prm[j].get_label())
    assert len({l.get_marker() for l in prm}) == 5  # and each its own marker
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "PRM log_mean (same as mean)" in labels and "PRM log_odds (same as mean)" in labels
    assert "random pick (= pass@1)" in labels and "oracle (pass@N)" in labels
    plt.close(fig)

    # 64 candidates: integer ticks whose labels do not overlap
    many = {k: (v * 22)[:64] if isinstance(v, list) else v for k, v in curve.items()}
    many["n"] = list(range(1, 65))
    fig = _drawn_curve_figure(many, ["mean"])
    ax = fig.axes[0]
    ticks = [t for t in ax.get_xticklabels() if t.get_text() and 0.5 <= t.get_position()[0] <= 64.5]
    assert 5 <= len(ticks) <= 16 and all(float(t.get_text()).is_integer() for t in ticks)
    boxes = [t.get_window_extent(renderer=fig.canvas.get_renderer()) for t in ticks]
    assert all(not a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert "exact" in ax.get_title()
    plt.close(fig)
    out = plot_curve(curve, tmp_path / "figs" / "curve.png")
    assert out == tmp_path / "figs" / "curve.png" and out.stat().st_size > 10_000


# -- evaluation during training -----------------------------------------------------------------
def _eval_rows(tmp_path, meta=True, every=10):
    """60 iterations, evaluated every ``every`` (and at 60): mean = log_mean = log_odds, max and
    min their own; pass@1 and oracle the same at every evaluation (same records)."""
    rows = []
    for it in range(1, 61):
        row = {"iteration": it, "lower_loss": 1.0 / it, "weighted_loss": 1.0 / it}
        if meta:
            row["meta_loss"] = 0.5
        if it % every == 0 or it == 60:
            k = it // every
            acc = 0.5 + 0.05 * (k % 3)
            row.update({"eval_accuracy_mean": acc, "eval_accuracy_log_mean": acc, "eval_accuracy_max": acc - 0.1,
                        "eval_accuracy_min": acc + 0.025, "eval_accuracy_log_odds": acc, "eval_pass@1": 0.45,
                        "eval_first_candidate": 0.4, "eval_oracle": 0.9, "eval_self_consistency": 0.55,
                        "eval_questions": 40, "eval_seconds": 1.5})
        rows.append(row)
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_evaluated_runs_get_an_accuracy_panel(tmp_path):
    fig = _drawn(loss_figure(_eval_rows(tmp_path)))
    try:
        lower, meta, acc = fig.axes
        assert acc.get_title() == "Evaluation during training: best-of-N accuracy on 40 questions (6 evaluations)"
        labels = [t.get_text() for t in acc.get_legend().get_texts()]
        assert labels == ["PRM mean", "PRM log_mean (same as mean)", "PRM max", "PRM min",
                          "PRM log_odds (same as mean)", "pass@1 (random pick) 45.0%", "oracle (any correct) 90.0%",
                          "best mean: iteration 20"]  # 0.6 at 20 and 50: the first is the one --save_best keeps
        lines = acc.get_lines()
        assert len(lines) == 8
        prm = lines[:5]
        assert [list(line.get_xdata()) for line in prm] == [[10, 20, 30, 40, 50, 60]] * 5
        assert [round(y, 6) for y in prm[0].get_ydata()] == [55.0, 60.0, 50.0, 55.0, 60.0, 50.0]
        assert len({line.get_marker() for line in prm}) == 5  # coinciding lines stay told apart
        assert list(lines[5].get_ydata()) == [45.0, 45.0]  # flat reference lines across the panel
        bottom, top = acc.get_ylim()
        assert bottom < 40 and 90 < top <= 102
        assert acc.get_xlabel() == "iteration" and meta.get_xlabel() == lower.get_xlabel() == ""
    finally:
        plt.close(fig)
    out = plot_losses(tmp_path / "metrics.jsonl", tmp_path / "figs" / "losses.png")
    assert out.stat().st_size > 10_000


def test_a_cold_start_evaluated_once_gets_two_panels(tmp_path):
    fig = _drawn(loss_figure(_eval_rows(tmp_path, meta=False, every=1000)))
    try:
        lower, acc = fig.axes
        assert acc.get_title().endswith("(1 evaluation)")
        assert len(acc.get_lines()) == 7  # one point per aggregation, two references, no best ring
        assert all(list(line.get_xdata()) == [60] for line in acc.get_lines()[:5])
    finally:
        plt.close(fig)
