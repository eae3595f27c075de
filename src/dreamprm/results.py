"""Best-of-N results: per question, the summary over questions, the report and its table.

**Per question** (:func:`question_result`): every candidate's step scores, aggregated
(``dreamprm.aggregation``, the function the meta loss trains with, so the report shows the values
the meta loss sees): ``mean`` in the scoring dtype (upstream's score), ``log_mean`` (geometric
mean), ``max``, ``min`` and ``log_odds`` (DreamPRM's sigmoid of the mean step log-odds) in
float64; all in [0, 1]. Then the candidate each aggregation selects (``dreamprm.selection``).

* A candidate with no step (empty text under the ``clean`` splitter) aggregates to −inf, so it is
  never selected unless no other candidate has a number; it is written as ``null`` in the JSON.
* A candidate longer than the scorer's ``max_length`` is scored over the steps that fit
  (*truncated*); one whose first step does not fit is *unscorable* and aggregates to NaN
  (``null``). So does a candidate with a non-finite step score (only scored with
  ``allow_nonfinite``). The question lists all three kinds; NaN is never selected.

**Summary** (:func:`summarise`): the accuracy of every aggregation's selection and of the
baselines (:data:`DEFINITIONS`; computed by ``dreamprm.selection``), as fractions averaged over
questions, and the counts of truncated, unscorable and non-finite candidates.

**Report** (:func:`build_report`): ``{"partial", "summary", "questions"}``, strict JSON (every
non-finite number as ``null``), written with ``dreamprm.jsonio.write_json``; a run stopped early
adds ``questions_scored``, ``questions_total`` and ``stopped_by``. :func:`format_table` is the
console table of the summary.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .aggregation import AGGREGATIONS, aggregate_lists
from .jsonio import strict_json
from .selection import CURVE_DEFINITION, first_candidate, mean, oracle, pass_at_1, select, self_consistency_index

BASELINE_NAMES = ("pass@1", "first_candidate", "oracle", "self_consistency")
DEFINITIONS = {
    "pass@1": "expected accuracy of one uniformly random candidate: c/k per question (c correct of k), "
              "averaged over questions; the same number as a random pick",
    "first_candidate": "accuracy of always taking each question's first candidate",
    "oracle": "a question counts when at least one of its candidates is correct (pass@k)",
    "self_consistency": "majority vote over the normalised 'Answer:' texts; ties to the earliest answer",
    "accuracy_vs_n": CURVE_DEFINITION,
}
TABLE_LABELS = {"pass@1": "pass@1 (random pick)", "first_candidate": "first candidate",
                "oracle": "oracle (any correct)", "self_consistency": "self_consistency"}


def aggregate(step_scores: Sequence[Sequence[float]], name: str, dtype=None) -> list[float]:
    """One aggregate per candidate (``dreamprm.aggregation``, the meta loss's own function):
    ``mean`` in the scoring ``dtype`` when one is given (upstream's score), the others in float64."""
    return aggregate_lists(step_scores, name, dtype if (name == "mean" and dtype is not None) else torch.float64)


def question_result(qid, true_false: Sequence[bool], step_scores: Sequence[Sequence[float]], dtype=None,
                    n_steps: Sequence[int] | None = None) -> dict:
    """Aggregates and selections of one question; ``dtype``: the scoring dtype (for ``mean``);
    ``n_steps``: each candidate's step count before truncation (default: as scored).

    ``truncated``/``unscorable`` list the candidates scored over a prefix of their steps / over
    none (``max_length``); ``nonfinite`` those with a NaN or infinite step score. The last two
    get NaN aggregates, so they are never selected."""
    step_scores = [[float(p) for p in ps] for ps in step_scores]
    n_steps = [len(ps) for ps in step_scores] if n_steps is None else [int(n) for n in n_steps]
    truncated = [i for i, (ps, n) in enumerate(zip(step_scores, n_steps)) if 0 < len(ps) < n]
    unscorable = [i for i, (ps, n) in enumerate(zip(step_scores, n_steps)) if n > 0 and not ps]
    nonfinite = [i for i, ps in enumerate(step_scores) if not all(math.isfinite(p) for p in ps)]
    scores = {name: aggregate(step_scores, name, dtype) for name in AGGREGATIONS}
    for i in unscorable + nonfinite:
        for name in AGGREGATIONS:
            scores[name][i] = math.nan
    return {
        "id": qid,
        "true_false": [bool(x) for x in true_false],
        "step_scores": step_scores,
        "n_steps": n_steps,
        "truncated": truncated,
        "unscorable": unscorable,
        "nonfinite": nonfinite,
        "scores": scores,
        "selected": {name: select(scores[name]) for name in AGGREGATIONS},
    }


def summarise(questions: Sequence[dict], candidates: Sequence[Sequence[str]]) -> dict:
    """The summary block: accuracies of every aggregation and the baselines, as fractions, and
    how many candidates were truncated, unscorable or had non-finite scores."""
    n = len(questions)
    if n == 0:
        raise ValueError("no questions to summarise")
    acc = {name: mean(float(q["true_false"][q["selected"][name]]) for q in questions) for name in AGGREGATIONS}
    return {
        "n_questions": n,
        "n_candidates": sum(len(q["true_false"]) for q in questions),
        "accuracy": acc,
        "pass@1": mean(pass_at_1(q["true_false"]) for q in questions),
        "first_candidate": mean(first_candidate(q["true_false"]) for q in questions),
        "oracle": mean(oracle(q["true_false"]) for q in questions),
        "self_consistency": mean(float(q["true_false"][self_consistency_index(c)])
                                 for q, c in zip(questions, candidates)),
        "truncated_candidates": sum(len(q.get("truncated", ())) for q in questions),
        "unscorable_candidates": sum(len(q.get("unscorable", ())) for q in questions),
        "nonfinite_candidates": sum(len(q.get("nonfinite", ())) for q in questions),
        "definitions": dict((k, DEFINITIONS[k]) for k in BASELINE_NAMES),
    }


def build_report(questions: Sequence[dict], candidates: Sequence[Sequence[str]], scoring: dict | None = None,
                 partial: dict | None = None) -> dict:
    """``{"partial": ..., "summary": ..., "questions": ...}``, ready for strict JSON (non-finite
    numbers as None). ``scoring`` (``Scorer.describe()``) says how the scores were made;
    ``partial`` (questions_scored, questions_total, stopped_by) marks a run stopped early."""
    summary = summarise(questions, candidates)
    if scoring is not None:
        summary["scoring"] = dict(scoring)
    report = {"partial": partial is not None}
    if partial is not None:
        report.update(partial)
    report["summary"] = summary
    report["questions"] = [dict(q) for q in questions]
    return strict_json(report)


def format_table(summary: dict, aggregations: Sequence[str] = AGGREGATIONS) -> str:
    """The console table: the chosen aggregations' accuracies, the baselines, the question count."""
    rows = [(f"PRM {name}", summary["accuracy"][name]) for name in aggregations]
    rows += [(TABLE_LABELS[name], summary[name]) for name in BASELINE_NAMES]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'method':<{width}}  accuracy", f"{'-' * width}  --------"]
    lines += [f"{name:<{width}}  {100 * v:7.2f}%" for name, v in rows]
    lines.append(f"{'questions':<{width}}  {summary['n_questions']:8d}")
    return "\n".join(lines)
