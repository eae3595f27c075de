"""Accuracy as the number of candidates N grows, on one ``test.py`` report's candidates.

Usage::

    python -m dreamprm.scaling RESULTS.json [--n 1,2,4,8] [--draws 20] [--seed 0]
        [--test_json_file TEST.json] [--output SCALING.json]

For each N and each of ``draws`` random draws, every question keeps a uniformly random subset of
min(N, k) of its k candidates (in their original order); each PRM aggregation picks one of them
with ``dreamprm.selection.select`` on the report's stored aggregate scores (``null`` = NaN, never
selected) and the accuracy is averaged over questions. The baselines use the same subsets:
``random`` (the expected accuracy of a uniform pick, c/k of the subset), ``oracle`` (any correct
candidate in the subset) and ``self_consistency`` (the majority vote of
``dreamprm.selection.majority_index`` over the subset's ``Answer:`` texts).

**Draws.** ``random.Random(seed)`` gives one 64-bit seed per draw, and draw d's own stream
``random.Random(that seed)`` shuffles each question's candidate indices in turn
(``stream.sample(range(k), k)``); the subset at N is the first min(N, k) of that shuffle. So
every subset is uniform, a draw's subsets are nested (a draw at N = 4 holds its N = 2 subset),
and changing ``--n`` or adding draws leaves the existing draws as they were. The default N are
1, 2, 4, 8, … below the largest k, then the largest k itself, so the curve ends on the report's
own numbers: at N ≥ k a question keeps all its candidates, every draw is the report's selection,
and the mean is exactly the report's accuracy (std 0).

**Self-consistency** needs the candidate texts, which the report does not hold: they are read
from the test file named in the report (when it records one) or given with ``--test_json_file``
(matched to the report's questions by id and correctness, in order); without either it is left
out, with a note in the output.

Output (strict JSON, ``dreamprm.jsonio.write_json``; default ``scaling.json`` beside the report)::

    {"n": [...], "draws": D, "seed": S, "source": RESULTS,
     "methods": {name: {"mean": [...], "std": [...], "min": [...], "max": [...]}},
     "expected": {name: [...]}, ...}

``std`` is the population standard deviation over the draws; ``expected`` holds the exact
expectations over all subsets (``dreamprm.selection``) for the PRM aggregations, random and
oracle, which the draw means scatter around.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path
from typing import Sequence

from .aggregation import AGGREGATIONS
from .jsonio import iter_file_records, write_json
from .selection import expected_accuracy, majority_index, mean, oracle, oracle_at, pass_at_1, select, selection_order
from .steps import extract_answer

BASELINES = ("random", "oracle", "self_consistency")
DEFINITION = (
    "accuracy when each question keeps a uniformly random subset of min(N, k) of its candidates, averaged over "
    "questions; mean/std (population)/min/max over the draws. PRM aggregations select within the subset on the "
    "stored scores; random: c/k of the subset; oracle: any correct candidate in the subset; self_consistency: "
    "majority vote over the subset's Answer: texts"
)
# where a report may name the test file it scored (test.py does not record one yet)
_TEST_FILE_KEYS = ("test_json_file", "test_file")


class ScalingError(Exception):
    """A problem with the inputs or the output, as one line naming the file."""


# -- reading ------------------------------------------------------------------------------------
def report_problem(data) -> str | None:
    """Why ``data`` is not a ``test.py`` report (``{"summary", "questions"}`` with each question's
    ``true_false`` and ``scores``), or None."""
    if not isinstance(data, dict) or not isinstance(data.get("summary"), dict) or not isinstance(
            data.get("questions"), list):
        return "not a test.py report (no 'summary' object and 'questions' list at the top level)"
    if not data["questions"]:
        return "a test.py report without questions"
    for i, q in enumerate(data["questions"]):
        tf = q.get("true_false") if isinstance(q, dict) else None
        scores = q.get("scores") if isinstance(q, dict) else None
        if not isinstance(tf, list) or not tf or not isinstance(scores, dict):
            return f"question {i}: no 'true_false' list or 'scores' object (not a test.py report?)"
        for name, values in scores.items():
            if not isinstance(values, list) or len(values) != len(tf):
                return f"question {i}: scores[{name!r}] does not hold one score per candidate"
    return None


def read_report(path) -> dict:
    """A ``test.py`` report from ``path``; ``ScalingError`` (one line) when it cannot be read or is
    not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScalingError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ScalingError(f"{path}: is a folder, not a test.py results JSON") from None
    except OSError as exc:
        raise ScalingError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScalingError(f"{path}: not JSON ({str(exc).splitlines()[0]})") from None
    problem = report_problem(data)
    if problem:
        raise ScalingError(f"{path}: {problem}")
    return data


def recorded_test_file(results: dict) -> str | None:
    """The test file the report says it scored, when it records one."""
    summary = results.get("summary", {})
    for where in (results, summary, summary.get("scoring") or {}):
        for key in _TEST_FILE_KEYS:
            if isinstance(where, dict) and isinstance(where.get(key), str):
                return where[key]
    return None


def read_candidates(results: dict, test_file) -> list[list[str]]:
    """Each report question's candidate texts, from the test file it was scored on.

    Records are matched to the questions in order by id and ``true_false`` (records ``test.py``
    skipped with ``--skip_bad_records``, or did not reach in a partial run, are passed over);
    ``ScalingError`` when a question has no such record."""
    test_file = Path(test_file)
    records = [rec for _, rec in iter_file_records(test_file, ScalingError)]
    out, at = [], 0
    for qi, q in enumerate(results["questions"]):
        qid, tf = q.get("id"), [bool(x) for x in q["true_false"]]
        while at < len(records):
            rec = records[at]
            at += 1
            if not isinstance(rec, dict) or not isinstance(rec.get("candidates"), list):
                continue
            rid = rec.get("id", qid if isinstance(qid, int) else None)  # test.py ids a record without one by index
            if str(rid) == str(qid) and [bool(x) for x in rec.get("true_false", ())] == tf \
                    and len(rec["candidates"]) == len(tf):
                out.append([c if isinstance(c, str) else "" for c in rec["candidates"]])
                break
        else:
            raise ScalingError(f"{test_file}: holds no record for question {qi} (id {qid!r}) of the report with "
                               "the same candidates in the same order; is it the test file the report scored?")
    return out


# -- the curves ---------------------------------------------------------------------------------
def default_ns(max_k: int) -> list[int]:
    """1, 2, 4, 8, … below ``max_k``, then ``max_k``."""
    ns, n = [], 1
    while n < max_k:
        ns.append(n)
        n *= 2
    return ns + [max_k]


def draw_shuffles(ks: Sequence[int], draws: int, seed: int) -> list[list[list[int]]]:
    """For each draw, each question's candidate indices in a random order (see the module
    docstring): ``random.Random(seed)`` seeds one stream per draw, which shuffles the questions
    in turn."""
    master = random.Random(seed)
    streams = [random.Random(master.getrandbits(64)) for _ in range(draws)]
    return [[stream.sample(range(k), k) for k in ks] for stream in streams]


def _stats(values: Sequence[float]) -> tuple[float, float, float, float]:
    """Mean, population std, min, max; when every draw agrees, exactly that value and std 0."""
    lo, hi = min(values), max(values)
    if lo == hi:
        return lo, 0.0, lo, hi
    m = mean(values)
    return m, math.sqrt(math.fsum((v - m) ** 2 for v in values) / len(values)), lo, hi


def _number(s) -> float:
    return math.nan if s is None else float(s)


def scaling_curves(results: dict, ns: Sequence[int] | None = None, draws: int = 20, seed: int = 0,
                   candidates: Sequence[Sequence[str]] | None = None) -> dict:
    """Accuracy vs N of every aggregation in the report and of the baselines, over ``draws``
    random subsets per N (module docstring). ``results``: a ``test.py`` report; ``ns``: default
    :func:`default_ns`; ``candidates``: each question's candidate texts, for self-consistency
    (left out without them). Returns the output dict without ``source``."""
    if draws < 1:
        raise ValueError("draws must be at least 1")
    questions = results["questions"]
    tfs = [[bool(x) for x in q["true_false"]] for q in questions]
    ks = [len(tf) for tf in tfs]
    ns = default_ns(max(ks)) if ns is None else sorted(set(int(n) for n in ns))
    if not ns or ns[0] < 1:
        raise ValueError("every N must be at least 1")
    names = [a for a in AGGREGATIONS if a in questions[0]["scores"]]
    names += [a for a in questions[0]["scores"] if a not in names]
    scores = [{a: [_number(s) for s in q["scores"][a]] for a in names} for q in questions]
    answers = [[extract_answer(c) for c in cands] for cands in candidates] if candidates is not None else None
    methods = names + [b for b in BASELINES if b != "self_consistency" or answers is not None]

    shuffles = draw_shuffles(ks, draws, seed)
    per = {m: [[0.0] * draws for _ in ns] for m in methods}  # per[method][N index][draw]
    for d, shuffle in enumerate(shuffles):
        for j, n in enumerate(ns):
            hits = {m: [] for m in methods}
            for qi, (tf, order) in enumerate(zip(tfs, shuffle)):
                sub = sorted(order[:n])
                sub_tf = [tf[i] for i in sub]
                for a in names:
                    hits[a].append(float(sub_tf[select([scores[qi][a][i] for i in sub])]))
                hits["random"].append(pass_at_1(sub_tf))
                hits["oracle"].append(oracle(sub_tf))
                if answers is not None:
                    hits["self_consistency"].append(float(sub_tf[majority_index([answers[qi][i] for i in sub])]))
            for m in methods:
                per[m][j][d] = mean(hits[m])

    out_methods = {}
    for m in methods:
        stats = [_stats(values) for values in per[m]]
        out_methods[m] = {key: [s[i] for s in stats] for i, key in enumerate(("mean", "std", "min", "max"))}
    expected = {a: [mean(expected_accuracy(selection_order(sc[a]), tf, n) for sc, tf in zip(scores, tfs))
                    for n in ns] for a in names}
    expected["random"] = [mean(pass_at_1(tf) for tf in tfs)] * len(ns)
    expected["oracle"] = [mean(oracle_at(tf, n) for tf in tfs) for n in ns]
    notes = []
    if answers is None:
        notes.append("self_consistency left out: the report does not hold the candidate texts and no test file "
                     "was given (--test_json_file)")
    if results.get("partial"):
        notes.append("the report is partial (a run stopped early): only the questions it scored are used")
    return {"n": list(ns), "draws": draws, "seed": seed, "methods": out_methods, "expected": expected,
            "questions": len(questions), "max_k": max(ks), "aggregations": names,
            "definition": DEFINITION, "notes": notes}


def format_table(scaling: dict) -> str:
    """Mean ± std (in %) of every method at each N, one row per N."""
    names = list(scaling["methods"])
    cells = [[str(n)] + [f"{100 * scaling['methods'][m]['mean'][j]:.1f} ± {100 * scaling['methods'][m]['std'][j]:.1f}"
                         for m in names] for j, n in enumerate(scaling["n"])]
    header = ["N"] + names
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]
    line = lambda row: "  ".join(c.rjust(w) for c, w in zip(row, widths))  # noqa: E731
    rows = [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in cells]
    return "\n".join(rows)


# -- the command --------------------------------------------------------------------------------
def _ns_flag(text: str) -> list[int]:
    try:
        ns = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of whole numbers, got {text!r}") from None
    if not ns or min(ns) < 1:
        raise argparse.ArgumentTypeError(f"every N must be at least 1, got {text!r}")
    return ns


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dreamprm.scaling",
                                description="Best-of-N accuracy vs the number of candidates N, over random subsets "
                                            "of a test.py report's candidates.")
    p.add_argument("results", help="a test.py results JSON")
    p.add_argument("--n", type=_ns_flag, default=None,
                   help="comma-separated N values (default: 1,2,4,8,... below the largest k, then the largest k)")
    p.add_argument("--draws", type=_positive, default=20, help="random subsets per N (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of random.Random (default 0)")
    p.add_argument("--test_json_file", default=None,
                   help="the test file the report scored, for self-consistency's candidate texts (default: the "
                        "file the report records, if any; else self-consistency is left out)")
    p.add_argument("--output", default=None, help="output JSON (default: scaling.json beside RESULTS)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    source = Path(args.results)
    output = Path(args.output) if args.output else source.parent / "scaling.json"
    try:
        if output.resolve() == source.resolve():
            raise ScalingError(f"{output}: the output would overwrite the results it reads")
        if output.is_dir():
            raise ScalingError(f"{output}: is a folder; give --output a file name, e.g. {output / 'scaling.json'}")
        results = read_report(source)
        test_file = args.test_json_file or recorded_test_file(results)
        if test_file is not None and args.test_json_file is None and not Path(test_file).is_absolute() \
                and not Path(test_file).exists() and (source.parent / test_file).exists():
            test_file = str(source.parent / test_file)
        candidates = read_candidates(results, test_file) if test_file is not None else None
        scaling = scaling_curves(results, args.n, args.draws, args.seed, candidates)
        scaling = {"n": scaling.pop("n"), "draws": scaling.pop("draws"), "seed": scaling.pop("seed"),
                   "source": str(source), **scaling,
                   "self_consistency_candidates": str(test_file) if test_file is not None else None}
        write_json(output, scaling, ScalingError)
    except ScalingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{source}: {scaling['questions']} questions, up to {scaling['max_k']} candidates each; "
          f"{scaling['draws']} draws per N (seed {scaling['seed']}); accuracy in %, mean ± std over the draws")
    print(format_table(scaling))
    for note in scaling["notes"]:
        print(f"note: {note}")
    print(f"scaling: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
