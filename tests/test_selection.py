"""dreamprm.selection: the tie rule, the baselines, and the exact accuracy-vs-N curve."""

import math
import random
from fractions import Fraction
from itertools import combinations

import pytest
from upstream_oracles import upstream_select

from dreamprm.aggregation import AGGREGATIONS
from dreamprm.results import summarise
from dreamprm.selection import (accuracy_vs_n, first_candidate, majority_index, oracle, pass_at_1, random_pick, select,
                                selection_order, self_consistency_index)
from dreamprm.steps import extract_answer


def test_select_ties_go_to_the_later_candidate_as_upstream():
    assert select([0.3, 0.7, 0.7]) == 2
    assert select([0.5, 0.5, 0.5]) == 2
    assert select([0.1, 0.9, 0.2, 0.9]) == 3
    assert select([0.9, 0.1]) == 0
    assert select([float("nan"), 0.1]) == 1
    assert select([float("nan"), float("nan")]) == 0
    assert select([0.4, float("nan")]) == 0
    assert select([-math.inf, -math.inf]) == 1
    assert select([None, 0.0]) == 1
    for scores in ([0.3, 0.7, 0.7], [1.0, 1.0, 0.5, 1.0], [0.0, 0.0], [0.25, 0.5, 0.5, 0.125], [0.6]):
        assert select(scores) == upstream_select(scores)
    with pytest.raises(ValueError):
        select([])


# -- baselines ----------------------------------------------------------------------------
def test_simple_baselines():
    # pass@1: the expected accuracy of one random candidate (c/k), whatever the order
    assert pass_at_1([False, True, True]) == 2 / 3
    assert pass_at_1([True, False]) == 0.5
    assert first_candidate([False, True, True]) == 0.0 and first_candidate([True, False]) == 1.0
    assert random_pick([True, False, False, True]) == 0.5
    assert random_pick([False, False, True]) == 1 / 3
    assert oracle([False, False, True]) == 1.0
    assert oracle([False, False]) == 0.0


def test_majority_vote():
    # clear majority, normalised case and whitespace; winner's first carrier is selected
    assert majority_index(["A", " b", "B ", "b"]) == 1
    assert majority_index(["Red  car", "red car", "blue"]) == 0
    # 2-2 tie: the answer that occurs first wins
    assert majority_index(["x", "y", "y", "x"]) == 0
    assert majority_index(["y", "x", "x", "y", "z"]) == 0
    assert majority_index(["z", "x", "y", "y", "x"]) == 1
    # no-answer candidates do not vote
    assert majority_index([None, None, "q", "r", "r"]) == 3
    assert majority_index([None, "q"]) == 1
    # nobody votes: the first candidate
    assert majority_index([None, None]) == 0
    # through extract_answer on free text
    cands = [
        "[Reasoning]\nIt is 3.\nAnswer: 3",
        "[Reasoning]\nno final answer here",
        "[Reasoning]\n1. a\n2. b\nAnswer: 4.",
        "[Reasoning]\nAnswer:  4",
    ]
    assert self_consistency_index(cands) == 2


# -- pass@1 and the accuracy-vs-N curve: one definition, exact -------------------------------
def _random_question(rng, k):
    """Scores with ties (a coarse grid), NaN, None and -inf, some candidates without an answer."""
    pool = [0.1, 0.5, 0.5, 0.9, 0.9, -math.inf, float("nan"), None]
    scores = {name: [rng.choice(pool) for _ in range(k)] for name in AGGREGATIONS}
    tf = [rng.random() < 0.5 for _ in range(k)]
    answers = [rng.choice(["A", "a ", "B", "C", None]) for _ in range(k)]
    cands = [f"[Reasoning]\nx\nAnswer: {a}" if a is not None else "[Reasoning]\nno answer" for a in answers]
    q = {"id": "r", "true_false": tf, "scores": scores, "selected": {n: select(s) for n, s in scores.items()}}
    return q, cands


def test_selection_order_is_select_on_every_subset():
    rng = random.Random(7)
    checked = 0
    for _ in range(300):
        k = rng.randint(1, 7)
        scores = _random_question(rng, k)[0]["scores"]["mean"]
        order = selection_order(scores)
        assert sorted(order) == list(range(k))
        for _ in range(10):
            subset = sorted(rng.sample(range(k), rng.randint(1, k)))  # original order kept
            picked = subset[select([scores[i] for i in subset])]
            assert picked == next(i for i in order if i in subset), (scores, subset)
            checked += 1
    assert checked == 3000
    assert selection_order([0.3, float("nan"), 0.7, 0.7, None, -math.inf]) == [3, 2, 0, 5, 1, 4]


def test_curve_is_the_exact_expectation_and_meets_the_summary():
    """Every point equals the average over ALL subsets of size min(N, k) of what select() /
    majority vote / any() gives; N = 1 is pass@1 and N = k the summary, both to the last bit."""
    rng = random.Random(3)
    made = [_random_question(rng, k) for k in (1, 2, 3, 5, 6, 7, 7)]
    questions, cands = [m[0] for m in made], [m[1] for m in made]
    curve = accuracy_vs_n(questions, cands)
    assert curve["n"] == list(range(1, 8)) and all(curve["self_consistency_exact"])
    for n in curve["n"]:
        want = dict.fromkeys((*AGGREGATIONS, "random", "oracle", "self_consistency"), Fraction(0))
        for q, c in made:
            tf, k = q["true_false"], len(q["true_false"])
            subsets = list(combinations(range(k), min(n, k)))
            for name in AGGREGATIONS:
                want[name] += Fraction(sum(tf[s[select([q["scores"][name][i] for i in s])]] for s in subsets),
                                       len(subsets))
            want["random"] += Fraction(sum(tf), k)
            want["oracle"] += Fraction(sum(any(tf[i] for i in s) for s in subsets), len(subsets))
            want["self_consistency"] += Fraction(
                sum(tf[s[majority_index([extract_answer(c[i]) for i in s])]] for s in subsets), len(subsets))
        for name, value in want.items():
            assert curve[name][n - 1] == pytest.approx(float(value / len(made)), abs=1e-12), (name, n)
    s = summarise(questions, cands)
    for name in (*AGGREGATIONS, "random", "oracle", "self_consistency"):
        assert curve[name][0] == s["pass@1"], name  # exactly, not approximately
    for name in AGGREGATIONS:
        assert curve[name][-1] == s["accuracy"][name], name
    assert curve["oracle"][-1] == s["oracle"] and curve["self_consistency"][-1] == s["self_consistency"]
    assert s["pass@1"] == pytest.approx(sum(sum(q["true_false"]) / len(q["true_false"]) for q in questions) / 7)


def test_self_consistency_samples_only_beyond_the_exact_limit():
    rng = random.Random(5)
    made = [_random_question(rng, 9) for _ in range(4)]
    questions, cands = [m[0] for m in made], [m[1] for m in made]
    exact = accuracy_vs_n(questions, cands)
    sampled = accuracy_vs_n(questions, cands, draws=50, seed=1, exact_limit=36)  # C(9, N) > 36 for N = 3..6
    assert sampled["self_consistency_exact"] == [True, True, False, False, False, False, True, True, True]
    assert all(exact["self_consistency_exact"])
    for n in (1, 2, 7, 8, 9):
        assert sampled["self_consistency"][n - 1] == exact["self_consistency"][n - 1]
    for n in (3, 4, 5, 6):
        assert abs(sampled["self_consistency"][n - 1] - exact["self_consistency"][n - 1]) < 0.25
    assert accuracy_vs_n(questions, cands, draws=50, seed=1, exact_limit=36) == sampled  # seeded
    for name in AGGREGATIONS:  # the PRM lines never sample
        assert sampled[name] == exact[name]
