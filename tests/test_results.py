"""dreamprm.results: per-question results, the summary, the strict-JSON report and its table."""

import json
import math

import pytest
import torch

from dreamprm.aggregation import AGGREGATIONS
from dreamprm.results import BASELINE_NAMES, DEFINITIONS, build_report, format_table, question_result, summarise
from dreamprm.selection import accuracy_vs_n


def test_summary_on_hand_made_questions():
    q1 = question_result("a", [False, True, True], [[0.9, 0.1], [0.6, 0.6], [0.6]])
    q2 = question_result(7, [True, False], [[0.2], [0.3]])
    assert q1["scores"]["mean"] == pytest.approx([0.5, 0.6, 0.6])
    assert q1["selected"] == {"mean": 2, "log_mean": 2, "max": 0, "min": 2, "log_odds": 2}  # 1 vs 2: ties -> later
    assert q2["selected"] == dict.fromkeys(AGGREGATIONS, 1)
    cands = [
        ["Answer: 5", "Answer: 6", "Answer: 6"],  # majority 6 -> candidate 1 (correct)
        ["Answer: 1", "Answer: 2"],  # tie -> first -> candidate 0 (correct)
    ]
    s = summarise([q1, q2], cands)
    assert s["n_questions"] == 2
    assert s["accuracy"] == {"mean": 0.5, "log_mean": 0.5, "max": 0.0, "min": 0.5, "log_odds": 0.5}  # q1: 2 is right too
    assert s["pass@1"] == pytest.approx((2 / 3 + 1 / 2) / 2)  # c/k per question, averaged
    assert s["first_candidate"] == 0.5
    assert s["oracle"] == 1.0
    assert s["self_consistency"] == 1.0

    curve = accuracy_vs_n([q1, q2], cands, draws=5, seed=3)
    assert curve["n"] == [1, 2, 3]
    # at N = all candidates the subset is the full set: same numbers as the summary, exactly
    for name in AGGREGATIONS:
        assert curve[name][-1] == s["accuracy"][name]
    assert curve["oracle"][-1] == 1.0 and curve["self_consistency"][-1] == 1.0
    # with one candidate every method is a random pick: pass@1, exactly
    for name in (*AGGREGATIONS, "random", "oracle", "self_consistency"):
        assert curve[name][0] == s["pass@1"], name
    assert curve["random"] == [s["pass@1"]] * 3
    # q1 at N = 2 (q2 keeps both): max picks candidate 0 (wrong) from {0,1} and {0,2}, 2 from {1,2}
    assert curve["max"][1] == pytest.approx((1 / 3 + 0.0) / 2)
    assert curve["self_consistency_exact"] == [True, True, True]


def test_question_result_marks_what_cannot_be_selected():
    # candidate 0 has no step (clean splitter on an empty text), 1 lost steps to max_length,
    # 2 could not be scored at all, 3 has a NaN step, 4 is ordinary
    q = question_result("x", [1, 0, 0, 0, 1], [[], [0.4], [], [0.9, math.nan], [0.3]], n_steps=[0, 3, 2, 2, 1])
    assert q["true_false"] == [True, False, False, False, True]
    assert (q["truncated"], q["unscorable"], q["nonfinite"]) == ([1], [2], [3])
    for name in AGGREGATIONS:
        assert q["scores"][name][0] == -math.inf
        assert math.isnan(q["scores"][name][2]) and math.isnan(q["scores"][name][3])
        assert q["selected"][name] == 1  # 0.4 beats 0.3; -inf and NaN never win
    # mean in the scoring dtype: bf16 rounds 0.3 to 0.30078125
    assert question_result("y", [True], [[0.3]], torch.bfloat16)["scores"]["mean"] == [0.30078125]
    assert question_result("y", [True], [[0.3]], torch.bfloat16)["scores"]["log_mean"] == [pytest.approx(0.3, abs=1e-9)]


def test_report_is_strict_json_and_marks_a_partial_run():
    q = question_result("x", [True, False], [[0.9], [math.nan]])
    report = build_report([q], [["Answer: 1", "Answer: 2"]], {"score_dtype": "float32"},
                          partial={"questions_scored": 1, "questions_total": 4, "stopped_by": "SIGINT"})
    assert list(report) == ["partial", "questions_scored", "questions_total", "stopped_by", "summary", "questions"]
    assert report["partial"] is True and report["stopped_by"] == "SIGINT"
    assert report["summary"]["scoring"] == {"score_dtype": "float32"}
    assert report["summary"]["definitions"] == {k: DEFINITIONS[k] for k in BASELINE_NAMES}
    assert report["questions"][0]["step_scores"] == [[0.9], [None]]
    assert report["questions"][0]["scores"]["mean"] == [0.9, None]
    json.dumps(report, allow_nan=False)  # strict: would raise on a bare NaN
    assert build_report([q], [["Answer: 1", "Answer: 2"]])["partial"] is False


def test_table():
    q = question_result("x", [False, True], [[0.2], [0.7]])
    table = format_table(summarise([q], [["Answer: 1", "Answer: 2"]]), ["mean"])
    assert table.splitlines() == [
        "method                accuracy",
        "--------------------  --------",
        "PRM mean               100.00%",
        "pass@1 (random pick)    50.00%",
        "first candidate          0.00%",
        "oracle (any correct)   100.00%",
        "self_consistency         0.00%",
        "questions                    1",
    ]
