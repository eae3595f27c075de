"""python -m dreamprm.scaling: accuracy vs N over random subsets of a report's candidates. At N = k
it is the report's own accuracy (every draw keeps every candidate); at N = 1 it is one random
candidate; a seed gives the same numbers every time, equal to an independent computation here."""

from __future__ import annotations

import json
import math
import random

import pytest

from dreamprm.aggregation import AGGREGATIONS
from dreamprm.jsonio import write_json
from dreamprm.results import build_report, question_result
from dreamprm.scaling import default_ns, main, scaling_curves

NAN = float("nan")

# (true_false, step scores per candidate, answers): ties, a NaN step, different k per question
QUESTIONS = [
    ([True, False, True, False], [[0.9, 0.1], [0.6, 0.6], [0.2], [0.5, 0.5]], ["A", "B", "A", "B"]),
    ([False, False, True], [[0.5], [0.7, 0.7], [0.6, NAN]], ["C", "C", "D"]),
    ([True, True, False, False, True, False], [[0.3, 0.3], [0.31], [0.9, 0.05], [0.1, 0.2], [0.31], [0.05]],
     ["1", "1", "2", "3", "1", "2"]),
    ([False, True], [[0.4], [0.4]], ["x", "y"]),
    ([False, False, False, True, True], [[0.6, 0.6], [0.9, 0.1], [0.2], [0.55, 0.7], [0.1]], ["7", "8", "7", "9", "9"]),
]


def _candidates():
    return [[f"[Reasoning]\nStep 1: think.\nAnswer: {a}" for a in answers] for _, _, answers in QUESTIONS]


@pytest.fixture
def report_path(tmp_path):
    """A hand-made report (dreamprm.results' own functions) and the test file of its candidates."""
    questions = [question_result(f"q{i}", tf, steps) for i, (tf, steps, _) in enumerate(QUESTIONS)]
    cands = _candidates()
    report = build_report(questions, cands, {"score_dtype": "float32"})
    test = [{"id": f"q{i}", "question": "?", "image_path": "img.png", "candidates": c, "true_false": tf}
            for i, ((tf, _, _), c) in enumerate(zip(QUESTIONS, cands))]
    write_json(tmp_path / "test.json", test)
    return write_json(tmp_path / "run" / "results.json", report)


def _load(path):
    return json.loads(path.read_text())


def test_n_equal_k_is_the_reports_accuracy_for_every_aggregation(report_path, tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main([str(report_path), "--n", "1,2,6,9", "--draws", "7", "--seed", "3", "--output", str(out),
                 "--test_json_file", str(tmp_path / "test.json")]) == 0
    scaling, summary = _load(out), _load(report_path)["summary"]
    assert scaling["n"] == [1, 2, 6, 9] and scaling["draws"] == 7 and scaling["seed"] == 3
    assert scaling["source"] == str(report_path)
    methods = scaling["methods"]
    assert set(methods) == {*AGGREGATIONS, "random", "oracle", "self_consistency"}
    assert len(set(summary["accuracy"].values())) > 1  # the aggregations disagree on these candidates
    report_value = {**summary["accuracy"], "random": summary["pass@1"], "oracle": summary["oracle"],
                    "self_consistency": summary["self_consistency"]}
    for j in (2, 3):  # N = k (the largest k is 6) and N > k, capped at k: every draw keeps every candidate
        for name, stats in methods.items():
            assert stats["mean"][j] == report_value[name], name  # exactly
            assert stats["std"][j] == 0.0 and stats["min"][j] == stats["max"][j] == report_value[name]
    for name in AGGREGATIONS:  # the exact expectation ends there too
        assert scaling["expected"][name][-1] == summary["accuracy"][name]
    table = capsys.readouterr().out
    assert "mean ± std" in table and "self_consistency" in table and f"scaling: {out}" in table


def _pick(scores, subset):
    """The selection rule, written out again: highest score, a tie to the later candidate, NaN never
    (the first candidate when all are NaN)."""
    best = None
    for i in subset:
        s = scores[i]
        if s is None or math.isnan(s):
            continue
        if best is None or s >= scores[best]:
            best = i
    return subset[0] if best is None else best


def _independent(report, n, draws, seed, name):
    """The draw means of ``name`` at N = ``n``, computed from the documented procedure."""
    master = random.Random(seed)
    streams = [random.Random(master.getrandbits(64)) for _ in range(draws)]
    values = []
    for stream in streams:
        hits = []
        for q in report["questions"]:
            k = len(q["true_false"])
            subset = sorted(stream.sample(range(k), k)[:n])
            hits.append(float(q["true_false"][_pick(q["scores"][name], subset)]))
        values.append(math.fsum(hits) / len(hits))
    return values


def test_a_seed_reproduces_and_matches_an_independent_computation(report_path, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for out in (a, b):
        assert main([str(report_path), "--draws", "25", "--seed", "11", "--output", str(out)]) == 0
    assert a.read_text() == b.read_text()
    scaling, report = _load(a), _load(report_path)
    assert scaling["n"] == default_ns(6) == [1, 2, 4, 6]
    for name in ("mean", "max", "min"):
        for j, n in enumerate(scaling["n"][:3]):
            values = _independent(report, n, 25, 11, name)
            stats = scaling["methods"][name]
            if min(values) == max(values):
                assert stats["mean"][j] == values[0]
            else:
                assert stats["mean"][j] == math.fsum(values) / len(values)
            assert (stats["min"][j], stats["max"][j]) == (min(values), max(values))
    other = tmp_path / "c.json"
    assert main([str(report_path), "--draws", "25", "--seed", "12", "--output", str(other)]) == 0
    assert _load(other)["methods"]["mean"]["mean"][:3] != scaling["methods"]["mean"]["mean"][:3]


def test_n1_is_one_random_candidate_and_approaches_pass_at_1(report_path):
    report = _load(report_path)
    scaling = scaling_curves(report, ns=[1, 2], draws=3000, seed=0)
    pass1 = report["summary"]["pass@1"]
    at1 = {name: stats["mean"][0] for name, stats in scaling["methods"].items()}
    assert len(set(at1.values())) == 1  # one candidate: every method picks it
    assert abs(at1["mean"] - pass1) < 0.015
    assert scaling["expected"]["mean"][0] == pass1
    for name in ("mean", "oracle"):  # the draws scatter around the exact expectation
        assert abs(scaling["methods"][name]["mean"][1] - scaling["expected"][name][1]) < 0.015


def test_self_consistency_needs_the_candidate_texts(report_path, tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main([str(report_path), "--output", str(out)]) == 0
    scaling = _load(out)
    assert "self_consistency" not in scaling["methods"] and scaling["self_consistency_candidates"] is None
    assert any("self_consistency left out" in note for note in scaling["notes"])
    assert "note: self_consistency left out" in capsys.readouterr().out

    recorded = _load(report_path)  # a report that names its test file (relative to its folder) is enough
    recorded["summary"]["test_json_file"] = "../test.json"
    write_json(report_path, recorded)
    assert main([str(report_path), "--output", str(out)]) == 0
    assert "self_consistency" in _load(out)["methods"]


def test_default_output_and_one_line_errors(report_path, tmp_path, capsys):
    assert main([str(report_path), "--draws", "2"]) == 0
    assert (report_path.parent / "scaling.json").is_file()
    capsys.readouterr()

    def error(argv, fragment):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1 and fragment in err, err

    error([str(tmp_path / "missing.json")], "no such file")
    error([str(tmp_path / "test.json")], "not a test.py report")
    error([str(report_path), "--output", str(report_path)], "would overwrite")
    error([str(report_path), "--output", str(tmp_path / "test.json" / "s.json")], "cannot write")
    wrong = [{"id": "zz", "candidates": ["Answer: 1"], "true_false": [True]}]
    write_json(tmp_path / "wrong.json", wrong)
    error([str(report_path), "--test_json_file", str(tmp_path / "wrong.json")], "holds no record for question 0")
    with pytest.raises(SystemExit) as exc:  # argparse's usage line
        main([str(report_path), "--n", "0,2"])
    assert exc.value.code == 2


def test_default_ns():
    assert default_ns(1) == [1]
    assert default_ns(8) == [1, 2, 4, 8]
    assert default_ns(12) == [1, 2, 4, 8, 12]
