"""Best-of-N selection: which candidate a method picks, and its expected accuracy vs N.

**Selection** (:func:`select`): the candidate with the highest aggregate; **ties go to the later
candidate**, as upstream's ``if score >= max_score`` does; a NaN (or None) aggregate is never
selected, except that when every candidate has one the first is (as upstream's loop does).
Equivalently, :func:`selection_order` ranks a question's candidates: numbers by (aggregate,
index) descending, then the NaN ones by ascending index; :func:`select` returns the first of
that order.

**Baselines**, on the same questions, with c correct candidates out of a question's k:

* :func:`pass_at_1`: the expected accuracy of one candidate drawn uniformly at random,
  estimated without bias as c/k per question (averaged over questions by the report). It is
  also the "random choice" baseline: picking a candidate at random *is* drawing one sample, so
  the two are one number (:data:`random_pick` is the same function; the report keeps the name
  ``pass@1``);
* :func:`first_candidate`: always taking the first candidate (the sample a generator returned
  first; not an unbiased pass@1, since candidate files are often ordered);
* :func:`oracle`: at least one candidate is correct (pass@k over all k candidates);
* self-consistency (:func:`majority_index`, :func:`self_consistency_index`): majority vote over
  ``extract_answer`` texts normalised by case-folding and collapsing whitespace. Candidates
  without an answer do not vote. A tie in votes goes to the answer whose first occurrence
  (lowest candidate index) is earliest; the selected candidate is the first one carrying the
  winning answer. When no candidate has an answer the first candidate is selected.

**Accuracy vs N** (:func:`accuracy_vs_n`): for N = 1 … the largest k, each question keeps a
uniformly random subset of min(N, k) of its candidates (in their original order), a method
selects one of them, and the curve is the *expected* accuracy of that choice, averaged over
questions:

* every PRM aggregation, exactly: with r_i the number of candidates ranked above candidate i in
  :func:`selection_order`, candidate i is chosen with probability C(k−1−r_i, N−1) / C(k, N)
  (:func:`expected_accuracy`);
* ``random``: a uniformly random candidate of the subset, c/k at every N (= pass@1);
* ``oracle``: pass@N = 1 − C(k−c, N) / C(k, N), the unbiased pass@N estimator (:func:`oracle_at`);
* ``self_consistency``: exact, by enumerating every subset, where a question has at most
  ``exact_limit`` subsets of size N (always at N = 1 and N = k); otherwise the mean over
  ``draws`` random subsets drawn with ``random.Random(seed)`` (``self_consistency_exact`` in the
  curve data says which N are exact).

So the N = 1 point of every method equals pass@1, and the N = k point of a PRM aggregation
equals its accuracy in the summary (``dreamprm.results.summarise``), exactly: per-question values
are exact ratios of integers, averaged with ``math.fsum``.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from functools import lru_cache
from itertools import combinations
from typing import Sequence

from .aggregation import AGGREGATIONS
from .steps import extract_answer

CURVE_BASELINES = ("random", "oracle", "self_consistency")
EXACT_LIMIT = 256  # self-consistency: subsets enumerated per question and N before sampling instead
CURVE_DEFINITION = (
    "expected accuracy when each question keeps a uniformly random subset of min(N, k) candidates: exact for "
    "the PRM aggregations (C(k-1-r, N-1)/C(k, N) for the candidate with r candidates ranked above it), random "
    "(c/k) and oracle (1 - C(k-c, N)/C(k, N)); self-consistency exact where a question has at most exact_limit "
    "subsets, else the mean over `draws` random subsets"
)


def mean(values) -> float:
    """The mean of ``values``, summed exactly (``math.fsum``)."""
    values = list(values)
    return math.fsum(values) / len(values)


# -- selection --------------------------------------------------------------------------------
def _no_number(s) -> bool:
    return s is None or math.isnan(s)


def select(scores: Sequence[float]) -> int:
    """Index of the highest score; ties go to the LATER candidate (upstream's ``>=``); a NaN or
    None score is never selected, and when every score is one the first candidate is."""
    if not scores:
        raise ValueError("select() needs at least one candidate")
    best = None
    for i, s in enumerate(scores):
        if _no_number(s):
            continue
        if best is None or s >= scores[best]:  # >=: a tie moves on to the later candidate
            best = i
    return 0 if best is None else best


def selection_order(scores: Sequence[float]) -> list[int]:
    """The candidates ranked as ``select`` prefers them, best first: the ones with a number by
    (score, index) descending (a tie goes to the later candidate), then the NaN/None ones by
    ascending index. ``select`` on any subset returns the subset's first in this order."""
    ranked = sorted((i for i, s in enumerate(scores) if not _no_number(s)), key=lambda i: (scores[i], i), reverse=True)
    return ranked + [i for i, s in enumerate(scores) if _no_number(s)]


# -- baselines ----------------------------------------------------------------------------------
def pass_at_1(true_false: Sequence[bool]) -> float:
    """Expected accuracy of one uniformly random candidate: c/k (unbiased pass@1)."""
    return sum(bool(x) for x in true_false) / len(true_false)


random_pick = pass_at_1  # a random pick is one random sample: the same number


def first_candidate(true_false: Sequence[bool]) -> float:
    """1.0 when the first candidate is correct."""
    return float(bool(true_false[0]))


def oracle(true_false: Sequence[bool]) -> float:
    """1.0 when any candidate is correct (pass@k)."""
    return float(any(true_false))


def normalise_answer(answer: str) -> str:
    """Case-folded, whitespace collapsed: the form self-consistency compares answers in."""
    return " ".join(answer.split()).casefold()


def normalised_votes(answers: Sequence[str | None]) -> list[str | None]:
    """Each answer normalised; None (no vote) for a missing or blank one."""
    return [normalise_answer(a) if a is not None and normalise_answer(a) else None for a in answers]


def _majority_of_normalised(norm: Sequence[str | None]) -> int:
    votes = Counter(a for a in norm if a is not None)
    if not votes:
        return 0
    first = {}
    for i, a in enumerate(norm):
        if a is not None and a not in first:
            first[a] = i
    winner = max(votes, key=lambda a: (votes[a], -first[a]))
    return first[winner]


def majority_index(answers: Sequence[str | None]) -> int:
    """Self-consistency selection over already extracted answers (None = no vote).

    The most frequent normalised answer wins; a tie goes to the answer that occurs first;
    the first candidate carrying it is returned; 0 when nobody votes.
    """
    return _majority_of_normalised(normalised_votes(answers))


def self_consistency_index(candidates: Sequence[str]) -> int:
    """Self-consistency selection over candidate texts (their ``Answer:`` lines)."""
    return majority_index([extract_answer(c) for c in candidates])


# -- accuracy vs N ------------------------------------------------------------------------------
@lru_cache(maxsize=4096)
def _picks(k: int, n: int) -> tuple[tuple[int, ...], int]:
    """For subsets of size n of k ranked candidates: how many of them pick the candidate of rank
    r (it is in, the r above it are not: C(k−1−r, n−1)), for every r, and how many there are."""
    return tuple(math.comb(k - 1 - r, n - 1) for r in range(k)), math.comb(k, n)


def expected_accuracy(order: Sequence[int], true_false: Sequence[bool], n: int) -> float:
    """Probability that the candidate a ranking picks from a uniformly random subset of
    min(n, k) of the k candidates is correct: candidate ``order[r]`` is picked when it is in the
    subset and none of the r ranked above it is, C(k−1−r, n−1) of the C(k, n) subsets."""
    k = len(order)
    picks, total = _picks(k, min(n, k))
    return sum(picks[r] for r, i in enumerate(order) if true_false[i]) / total


def oracle_at(true_false: Sequence[bool], n: int) -> float:
    """pass@n: probability that a uniformly random subset of min(n, k) candidates holds a correct
    one, 1 − C(k−c, n)/C(k, n)."""
    k, c = len(true_false), sum(bool(x) for x in true_false)
    n = min(n, k)
    total = math.comb(k, n)
    return (total - math.comb(k - c, n)) / total


def _self_consistency_at(true_false, vote, n: int, exact_limit: int, draws: int, rng) -> tuple[float, bool]:
    """Expected accuracy of the majority vote over a random subset of min(n, k) candidates, and
    whether it is exact (every subset enumerated) rather than a mean over ``draws`` subsets."""
    k = len(true_false)
    if n == 1:
        return pass_at_1(true_false), True
    if n >= k:
        return float(true_false[_majority_of_normalised(vote)]), True
    if math.comb(k, n) <= exact_limit:
        hits = sum(true_false[idx[_majority_of_normalised([vote[i] for i in idx])]]
                   for idx in combinations(range(k), n))
        return hits / math.comb(k, n), True
    hits = 0
    for _ in range(draws):
        idx = sorted(rng.sample(range(k), n))
        hits += true_false[idx[_majority_of_normalised([vote[i] for i in idx])]]
    return hits / draws, False


def accuracy_vs_n(
    questions: Sequence[dict],
    candidates: Sequence[Sequence[str]],
    draws: int = 20,
    seed: int = 0,
    exact_limit: int = EXACT_LIMIT,
) -> dict:
    """Expected accuracy of every aggregation and of random/oracle/self-consistency vs the number
    N of candidates per question (see the module docstring): exact, except self-consistency where
    a question has more than ``exact_limit`` subsets of size N (mean over ``draws`` random ones).

    ``questions``: ``dreamprm.results.question_result`` dicts (``true_false`` and ``scores`` are
    read); ``candidates``: each question's candidate texts (for the votes)."""
    votes = [normalised_votes([extract_answer(c) for c in cands]) for cands in candidates]
    orders = [{name: selection_order(q["scores"][name]) for name in AGGREGATIONS} for q in questions]
    max_n = max(len(q["true_false"]) for q in questions)
    curve = {"n": list(range(1, max_n + 1))}
    curve.update({k: [] for k in (*AGGREGATIONS, *CURVE_BASELINES)})
    curve["self_consistency_exact"] = []
    rng = random.Random(seed)
    for n in curve["n"]:
        for name in AGGREGATIONS:
            curve[name].append(mean(expected_accuracy(o[name], q["true_false"], n) for q, o in zip(questions, orders)))
        curve["random"].append(mean(pass_at_1(q["true_false"]) for q in questions))
        curve["oracle"].append(mean(oracle_at(q["true_false"], n) for q in questions))
        values, exact = [], True
        for q, vote in zip(questions, votes):
            value, exact_here = _self_consistency_at(q["true_false"], vote, n, exact_limit, draws, rng)
            values.append(value)
            exact = exact and exact_here
        curve["self_consistency"].append(mean(values))
        curve["self_consistency_exact"].append(exact)
    curve.update({"draws": draws, "seed": seed, "exact_limit": exact_limit, "definition": CURVE_DEFINITION})
    return curve
