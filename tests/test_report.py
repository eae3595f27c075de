"""python -m dreamprm.report: test.py reports into one table. The table's numbers are the reports'
own (read back from the CSV, compared exactly), one Markdown row per run, the baselines once per
test set, the figures are PNGs of the documented size, the scaling figure only with scaling data,
and every bad input is one error line with exit status 2."""

from __future__ import annotations

import csv
import json
import runpy
import shutil
from pathlib import Path

import pytest
from PIL import Image

from dreamprm import scaling
from dreamprm.figures import report_figure_inches, scaling_figure_inches
from dreamprm.jsonio import write_json
from dreamprm.report import collect_runs, main, write_report
from dreamprm.results import build_report, question_result

ROOT = Path(__file__).resolve().parents[1]
DPI = 120  # dreamprm.figures.save_figure


@pytest.fixture(scope="module")
def runs_dir(tiny_dir, tmp_path_factory):
    """Two real test.py runs on data/test.json (upstream and clean step splitters, one with a
    label.txt) and a hand-written report on another test set."""
    root = tmp_path_factory.mktemp("runs")
    test_main = runpy.run_path(str(ROOT / "test.py"))["main"]
    for name, extra in (("upstream", []), ("clean", ["--step_splitter", "clean", "--aggregation_function", "max"])):
        assert test_main(["--reward_model", "tiny", "--device", "cpu", "--precision", "fp32", "--test_json_file",
                          str(ROOT / "data" / "test.json"), "--output_file", str(root / name / "results.json"),
                          *extra]) == 0
    (root / "clean" / "label.txt").write_text("Tiny PRM, clean steps\n")
    questions = [question_result(f"other{i}", tf, steps) for i, (tf, steps) in enumerate(
        [([True, False], [[0.9], [0.2]]), ([False, True, True], [[0.7, 0.6], [0.5], [0.65]]),
         ([False, False, True], [[0.3], [0.1], [0.2]])])]
    cands = [["Answer: 1", "Answer: 2"], ["Answer: 3", "Answer: 4", "Answer: 4"], ["Answer: 5"] * 3]
    write_json(root / "other" / "bestofn.json", build_report(questions, cands))
    write_json(root / "other" / "notes.json", {"not": "a report"})  # other JSONs in a run folder are ignored
    return root


def _runs(root):
    return [root / "upstream", root / "clean", root / "other"]


def _summary(path):
    return json.loads(Path(path).read_text())["summary"]


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def _pixels(inches):
    return round(inches[0] * DPI), round(inches[1] * DPI)


@pytest.mark.parametrize("aggregation", ["mean", "max"])
def test_table_numbers_are_the_reports_numbers(runs_dir, tmp_path, capsys, aggregation):
    out = tmp_path / "table" / "results.md"
    assert main([*map(str, _runs(runs_dir)), "--output", str(out), "--aggregation", aggregation,
                 "--title", "Tiny demo"]) == 0
    assert "3 run(s), 2 test set(s)" in capsys.readouterr().out
    rows = _csv(out.with_suffix(".csv"))
    sources = {"upstream": runs_dir / "upstream" / "results.json",
               "Tiny PRM, clean steps": runs_dir / "clean" / "results.json",
               "other": runs_dir / "other" / "bestofn.json"}
    prm = [r for r in rows if r["kind"] == "prm"]
    assert [r["method"] for r in prm] == ["upstream", "Tiny PRM, clean steps", "other"]
    for r in prm:
        s = _summary(sources[r["method"]])
        assert r["source"] == str(sources[r["method"]]) and r["aggregation"] == aggregation
        assert float(r["accuracy"]) == s["accuracy"][aggregation]
        assert float(r["pass@1"]) == s["pass@1"] and float(r["oracle"]) == s["oracle"]
        assert float(r["gain"]) == s["accuracy"][aggregation] - s["pass@1"]
        assert int(r["questions"]) == s["n_questions"]
    assert prm[0]["test_set"] == prm[1]["test_set"] != prm[2]["test_set"]  # same questions, then others

    baselines = [r for r in rows if r["kind"] == "baseline"]  # once per test set
    assert [(r["method"], r["test_set"]) for r in baselines] == [
        ("first candidate", prm[0]["test_set"]), ("self-consistency", prm[0]["test_set"]),
        ("first candidate", prm[2]["test_set"]), ("self-consistency", prm[2]["test_set"])]
    for r in baselines:
        s = _summary(r["source"])
        key = "first_candidate" if r["method"] == "first candidate" else "self_consistency"
        assert float(r["accuracy"]) == s[key] and float(r["pass@1"]) == s["pass@1"]

    md = out.read_text()
    assert md.startswith("# Tiny demo\n")
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(rows)  # the header, then one row per run and per baseline
    for r in prm:
        s = _summary(sources[r["method"]])
        mine = [line for line in table if line.startswith(f"| {r['method']} |")]
        acc, p1 = s["accuracy"][aggregation], s["pass@1"]
        assert mine == [f"| {r['method']} | {100 * acc:.1f} | {100 * (acc - p1):+.1f} | {100 * p1:.1f} | "
                        f"{100 * s['oracle']:.1f} | {s['n_questions']} | `{r['test_set']}` |"]
    assert f"accuracy (PRM {aggregation})" in md and "*gain over pass@1*: accuracy − pass@1" in md
    assert "2 different test sets" in md


def test_figures_and_the_scaling_figure_only_with_scaling_data(runs_dir, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(runs_dir, root)
    out = tmp_path / "results.md"
    written = write_report(collect_runs(_runs(root)), out)
    n_rows = len(_csv(out.with_suffix(".csv")))
    assert set(written) == {"md", "csv", "png"}
    assert _png_size(tmp_path / "results.png") == _pixels(report_figure_inches(n_rows))
    assert not (tmp_path / "results_scaling.png").exists()
    assert "Accuracy vs N" not in out.read_text()

    assert scaling.main([str(root / "upstream" / "results.json"), "--draws", "5",
                         "--test_json_file", str(ROOT / "data" / "test.json")]) == 0
    assert scaling.main([str(root / "other" / "bestofn.json"), "--draws", "5"]) == 0
    runs = collect_runs(_runs(root))
    assert [r["scaling_path"] is not None for r in runs] == [True, False, True]
    written = write_report(runs, out)
    panels = scaling_figure_inches(2)  # one panel per test set
    assert _png_size(written["scaling_png"]) == _pixels(panels) == _png_size(tmp_path / "results_scaling.png")
    md = out.read_text()
    assert "## Accuracy vs N" in md and "| upstream | " in md.split("## Accuracy vs N")[1]

    (root / "upstream" / "scaling.json").unlink()  # no scaling data any more: no scaling figure
    (root / "other" / "scaling.json").unlink()
    assert "scaling_png" not in write_report(collect_runs(_runs(root)), out)
    assert not (tmp_path / "results_scaling.png").exists()


def test_names_from_folders_labels_and_files(runs_dir, tmp_path):
    runs = collect_runs([runs_dir / "upstream", runs_dir / "clean" / "results.json", runs_dir / "upstream"])
    assert [r["method"] for r in runs] == ["upstream", "results", "upstream (2)"]
    shutil.copytree(runs_dir / "upstream", tmp_path / "two")
    shutil.copy(runs_dir / "other" / "bestofn.json", tmp_path / "two" / "other.json")
    assert [r["method"] for r in collect_runs([tmp_path / "two"])] == ["two/other", "two/results"]


def test_bad_inputs_are_one_line_errors(runs_dir, tmp_path, capsys):
    def error(argv, fragment):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1 and fragment in err, err

    out = tmp_path / "out" / "results.md"
    (tmp_path / "empty").mkdir()
    error([str(tmp_path / "empty"), "--output", str(out)], "no test.py results JSON in this folder")
    error([str(runs_dir / "other" / "notes.json"), "--output", str(out)], "not a test.py report")
    error([str(tmp_path / "missing"), "--output", str(out)], "no such file or folder")
    (tmp_path / "file").write_text("x")
    error([str(runs_dir / "upstream"), "--output", str(tmp_path / "file" / "results.md")], "cannot write")
    error([str(runs_dir / "upstream"), "--output", str(tmp_path)], "is a folder")
    assert not out.exists()
