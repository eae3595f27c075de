"""The paper-style table of several ``test.py`` runs: ``python -m dreamprm.report RUN... --output results.md``.

Usage::

    python -m dreamprm.report RUN_DIR [RUN_DIR ...] --output results.md [--aggregation mean] [--title TEXT]

**Runs** (:func:`collect_runs`). A RUN_DIR is a folder holding a ``test.py`` results JSON (any
``*.json`` directly in it whose top level has ``summary`` and ``questions``), or that JSON
itself. The method is named after the folder (the file's stem for a file given directly, and
``folder/stem`` when a folder holds several reports); a ``label.txt`` in the folder overrides the
folder's name. A ``dreamprm.scaling`` output beside a report (any JSON there with ``n`` and
``methods`` whose ``source`` names the report's file) adds its accuracy-vs-N curve.

**Outputs** (:func:`write_report`), beside ``--output``:

* ``results.md``: one row per run (its accuracy with the chosen aggregation, the gain over
  pass@1 in points, pass@1, oracle, the number of questions, the test set) and, once per test
  set, the baselines *first candidate* and *self-consistency* as rows of their own, before that
  test set's runs; numbers in % with one decimal; a line defining every column; with scaling
  data, a second table of the accuracy at each N (mean ± std over the draws);
* ``results.csv``: the same rows at full precision (fractions, not %; ``gain`` = accuracy −
  pass@1), so the numbers read back equal the reports' own;
* ``results.png``: a bar per row, the oracle and pass@1 as vertical lines
  (``dreamprm.figures.report_figure``); ``results_scaling.png`` when any run has scaling data
  (``dreamprm.figures.scaling_figure``).

Runs may use different test sets: the ``test set`` column is a short hash of each report's
question ids and their candidates' correctness, and the table says when there is more than one.
Errors (a RUN_DIR without a report, a JSON that is not one, an output that cannot be written) are
one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Sequence

from .aggregation import AGGREGATIONS
from .figures import report_figure, scaling_figure
from .jsonio import atomic_write_text
from .scaling import report_problem

CSV_COLUMNS = ("method", "kind", "test_set", "aggregation", "accuracy", "gain", "pass@1", "oracle", "questions",
               "source")
BASELINE_ROWS = (("first_candidate", "first candidate"), ("self_consistency", "self-consistency"))
SCALING_BASELINES = (("oracle", "oracle (any correct)"), ("random", "random pick"),
                     ("self_consistency", "self-consistency"))


class ReportError(Exception):
    """A problem with a run or the output, as one line."""


# -- reading the runs ---------------------------------------------------------------------------
def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReportError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ReportError(f"{path}: not JSON ({str(exc).splitlines()[0]})") from None


def _is_scaling(data) -> bool:
    return isinstance(data, dict) and isinstance(data.get("n"), list) and isinstance(data.get("methods"), dict)


def test_set_id(report: dict) -> str:
    """A short hash (8 hex digits of SHA-256) of the report's question ids and each question's
    ``true_false``: equal for runs on the same questions and candidates."""
    key = [[str(q.get("id")), [bool(x) for x in q["true_false"]]] for q in report["questions"]]
    return hashlib.sha256(json.dumps(key, separators=(",", ":")).encode()).hexdigest()[:8]


def _label(folder: Path) -> str | None:
    path = folder / "label.txt"
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ReportError(f"{path}: cannot read the label ({exc})") from None
        if text:
            return text.splitlines()[0].strip()
    return None


def _run(path: Path, name: str, data: dict, scalings: dict[str, tuple[Path, dict]]) -> dict:
    scaling = scalings.get(path.name)
    return {"method": name, "path": str(path), "summary": data["summary"], "partial": bool(data.get("partial")),
            "questions": len(data["questions"]), "test_set": test_set_id(data),
            "scaling": scaling[1] if scaling else None, "scaling_path": str(scaling[0]) if scaling else None}


def _scalings_in(folder: Path) -> dict[str, tuple[Path, dict]]:
    """The ``dreamprm.scaling`` outputs in ``folder``, by the file name of the report they read."""
    found = {}
    for path in sorted(folder.glob("*.json")):
        try:
            data = _load_json(path)
        except ReportError:
            continue
        if _is_scaling(data) and isinstance(data.get("source"), str):
            found.setdefault(Path(data["source"]).name, (path, data))
    return found


def collect_runs(paths: Sequence) -> list[dict]:
    """One dict per ``test.py`` report found in ``paths`` (folders or report files; see the module
    docstring): ``method``, ``path``, ``summary``, ``partial``, ``questions`` (the count),
    ``test_set``, and ``scaling`` / ``scaling_path`` (None without scaling data). Raises
    ``ReportError`` for a path that holds no report or a file that is not one."""
    runs = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            reports = []
            for file in sorted(path.glob("*.json")):
                try:
                    data = _load_json(file)
                except ReportError:
                    continue
                if report_problem(data) is None:
                    reports.append((file, data))
            if not reports:
                raise ReportError(f"{path}: no test.py results JSON in this folder (a *.json with 'summary' and "
                                  "'questions' at the top level)")
            base = _label(path) or path.resolve().name
            scalings = _scalings_in(path)
            for file, data in reports:
                runs.append(_run(file, base if len(reports) == 1 else f"{base}/{file.stem}", data, scalings))
        elif path.is_file():
            data = _load_json(path)
            problem = report_problem(data)
            if problem:
                raise ReportError(f"{path}: {problem}")
            runs.append(_run(path, path.stem, data, _scalings_in(path.parent)))
        else:
            raise ReportError(f"{path}: no such file or folder")
    seen: dict[str, int] = {}
    for run in runs:  # two folders of one name: keep the methods apart
        seen[run["method"]] = seen.get(run["method"], 0) + 1
        if seen[run["method"]] > 1:
            run["method"] = f"{run['method']} ({seen[run['method']]})"
    return runs


# -- the table ------------------------------------------------------------------------------------
def _row(method, kind, run, aggregation, accuracy) -> dict:
    s = run["summary"]
    return {"method": method, "kind": kind, "test_set": run["test_set"], "aggregation": aggregation,
            "accuracy": accuracy, "gain": accuracy - s["pass@1"], "pass@1": s["pass@1"], "oracle": s["oracle"],
            "questions": s["n_questions"], "source": run["path"]}


def table_rows(runs: Sequence[dict], aggregation: str = "mean") -> list[dict]:
    """The table's rows, as fractions: per test set (in order of first appearance) its baselines,
    then its runs with ``aggregation``'s accuracy. ``ReportError`` when a run lacks it."""
    rows = []
    for ts in dict.fromkeys(run["test_set"] for run in runs):
        on = [run for run in runs if run["test_set"] == ts]
        for key, label in BASELINE_ROWS:
            for value in dict.fromkeys(run["summary"][key] for run in on):  # one row unless the candidates differ
                first = next(run for run in on if run["summary"][key] == value)
                rows.append(_row(label, "baseline", first, "", value))
        for run in on:
            accuracy = run["summary"].get("accuracy", {}).get(aggregation)
            if not isinstance(accuracy, (int, float)):
                raise ReportError(f"{run['path']}: the report has no accuracy for the aggregation {aggregation!r}")
            rows.append(_row(run["method"], "prm", run, aggregation, accuracy))
    return rows


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def scaling_series(runs: Sequence[dict], aggregation: str = "mean") -> list[dict]:
    """The accuracy-vs-N lines of the runs with scaling data, grouped by test set (``group``: its
    hash and question count): each run's ``aggregation``, then the baselines (from the test set's
    first run with scaling data)."""
    series = []
    with_data = [run for run in runs if run["scaling"] is not None]
    for ts in dict.fromkeys(run["test_set"] for run in with_data):
        on = [run for run in with_data if run["test_set"] == ts]
        group = f"{ts} ({on[0]['questions']} questions)"
        for run in on:
            if aggregation in run["scaling"]["methods"]:
                series.append({"label": run["method"], "group": group, **_curve(run["scaling"], aggregation)})
        for key, label in SCALING_BASELINES:
            if key in on[0]["scaling"]["methods"]:
                series.append({"label": label, "baseline": key, "group": group, **_curve(on[0]["scaling"], key)})
    return series


def _curve(scaling: dict, name: str) -> dict:
    m = scaling["methods"][name]
    return {"n": list(scaling["n"]), **{k: list(m[k]) for k in ("mean", "std", "min", "max")},
            "draws": scaling.get("draws")}


def format_markdown(runs: Sequence[dict], rows: Sequence[dict], aggregation: str, title: str,
                    series: Sequence[dict] = ()) -> str:
    """``results.md``: the title, the table, the column definitions, notes, the scaling table."""
    test_sets = list(dict.fromkeys(r["test_set"] for r in rows))
    lines = [f"# {title}", "",
             f"| method | accuracy (PRM {aggregation}) | gain over pass@1 | pass@1 | oracle | questions | test set |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        method = r["method"] if r["kind"] == "prm" else f"*{r['method']}* (baseline)"
        lines.append(f"| {_md_cell(method)} | {_pct(r['accuracy'])} | {100 * r['gain']:+.1f} | {_pct(r['pass@1'])} "
                     f"| {_pct(r['oracle'])} | {r['questions']} | `{r['test_set']}` |")
    lines += ["", f"*accuracy*: % of questions whose selected candidate is correct (the PRM's `{aggregation}` "
              "aggregation; the baselines' own rule); *gain over pass@1*: accuracy − pass@1, in percentage points; "
              "*pass@1*: no selection, the expected accuracy of one random candidate (c/k correct per question, "
              "averaged); *oracle*: % of questions with at least one correct candidate; *first candidate*: always "
              "the first candidate; *self-consistency*: majority vote over the candidates' answers; *test set*: "
              "8 hex digits of SHA-256 of the question ids and the candidates' correctness (same hash: same "
              "questions and candidates)."]
    if len(test_sets) > 1:
        lines += ["", f"**Note:** these runs use {len(test_sets)} different test sets; compare rows only within "
                  "one test set."]
    for run in runs:
        if run["partial"]:
            lines += ["", f"**Note:** `{run['path']}` is a partial run (stopped early): "
                      f"{run['questions']} questions."]
    lines += ["", "Sources:", ""]
    for run in runs:
        how = run["summary"].get("scoring") or {}
        extra = (f" (scores in {how['score_dtype']}, {how.get('step_splitter')} splitter)"
                 if "score_dtype" in how else "")
        lines.append(f"- {_md_cell(run['method'])}: `{run['path']}`{extra}"
                     + (f"; scaling: `{run['scaling_path']}`" if run["scaling_path"] else ""))
    if series:
        ns = sorted({n for s in series for n in s["n"]})
        several = len({s["group"] for s in series}) > 1
        lines += ["", "## Accuracy vs N", "",
                  "| method | " + " | ".join(f"N = {n}" for n in ns) + (" | test set |" if several else " |"),
                  "|---|" + "---:|" * len(ns) + ("---|" if several else "")]
        for s in series:
            at = {n: (m, sd) for n, m, sd in zip(s["n"], s["mean"], s["std"])}
            cells = [f"{_pct(at[n][0])} ± {_pct(at[n][1])}" if n in at else "" for n in ns]
            label = s["label"] if "baseline" not in s else f"*{s['label']}* (baseline)"
            lines.append(f"| {_md_cell(label)} | " + " | ".join(cells)
                         + (f" | `{s['group'].split()[0]}` |" if several else " |"))
        draws = sorted({s["draws"] for s in series if s.get("draws")})
        lines += ["", "Mean ± std over " + (f"{' / '.join(map(str, draws))} draws" if draws else "the draws")
                  + " of a uniformly random subset of min(N, k) candidates per question (`python -m "
                  "dreamprm.scaling`), in %."]
    return "\n".join(lines) + "\n"


def format_csv(rows: Sequence[dict]) -> str:
    """``results.csv``: the rows with every number at full precision (``repr`` of the floats)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([repr(r[c]) if isinstance(r[c], float) else r[c] for c in CSV_COLUMNS])
    return buf.getvalue()


def output_paths(output) -> dict[str, Path]:
    """The files written for ``--output``: ``md``, ``csv``, ``png`` and ``scaling_png``."""
    md = Path(output)
    return {"md": md, "csv": md.with_suffix(".csv"), "png": md.with_suffix(".png"),
            "scaling_png": md.with_name(md.stem + "_scaling.png")}


def _check_output(md: Path) -> None:
    """``ReportError`` when the report cannot be written at ``md``, before any work."""
    if md.is_dir():
        raise ReportError(f"{md}: is a folder; give --output a file name, e.g. {md / 'results.md'}")
    try:
        md.parent.mkdir(parents=True, exist_ok=True)
        probe = md.parent / f".{md.name}.probe"
        probe.open("x").close()
        probe.unlink()
    except FileExistsError:
        pass
    except OSError as exc:
        raise ReportError(f"{md}: cannot write the report there ({exc.strerror or exc})") from None


def write_report(runs: Sequence[dict], output, aggregation: str = "mean", title: str | None = None) -> dict[str, Path]:
    """Write ``results.md``, ``results.csv``, ``results.png`` and (with scaling data)
    ``results_scaling.png`` for ``output`` = the Markdown path; returns the paths written."""
    if not runs:
        raise ReportError("no runs to report")
    paths = output_paths(output)
    _check_output(paths["md"])
    title = title or "Best-of-N accuracy"
    rows = table_rows(runs, aggregation)
    series = scaling_series(runs, aggregation)
    written = {}
    try:
        atomic_write_text(paths["md"], format_markdown(runs, rows, aggregation, title, series))
        written["md"] = paths["md"]
        atomic_write_text(paths["csv"], format_csv(rows))
        written["csv"] = paths["csv"]
        written["png"] = report_figure(rows, paths["png"], title)
        if series:
            written["scaling_png"] = scaling_figure(series, paths["scaling_png"], f"{title}: accuracy vs N")
        else:  # an earlier report's curves would no longer match the table
            paths["scaling_png"].unlink(missing_ok=True)
    except OSError as exc:
        raise ReportError(f"{paths['md'].parent}: cannot write the report ({exc.strerror or exc})") from None
    return written


# -- the command --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dreamprm.report",
                                description="Collect test.py results into a Markdown/CSV table and figures.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="a folder holding a test.py results JSON, or the JSON")
    p.add_argument("--output", required=True, help="the Markdown table (results.csv/.png are written beside it)")
    p.add_argument("--aggregation", default="mean", choices=AGGREGATIONS,
                   help="the PRM aggregation whose accuracy the table shows (default mean, upstream's)")
    p.add_argument("--title", default=None, help="title of the table and figures")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_output(Path(args.output))
        runs = collect_runs(args.runs)
        written = write_report(runs, args.output, args.aggregation, args.title)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(runs)} run(s), {len({r['test_set'] for r in runs})} test set(s)")
    for kind, path in written.items():
        print(f"{kind + ':':<12} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
