"""How a chain of thought's step scores p₁…pₙ become one score: the five aggregations.

One implementation serves both levels of the method: the meta loss aggregates the PRM's
differentiable step probabilities of a meta CoT (training), and best-of-N aggregates each
candidate's step scores (``test.py``). So the numbers ``test.py`` reports are exactly the
numbers the meta loss trains on.

* ``mean``: Σp / n;
* ``log_mean``: the geometric mean exp(Σ log p / n), with p clamped to [``EPS``, 1];
* ``max`` / ``min``: the largest / smallest step score;
* ``log_odds``: DreamPRM's sigmoid(Σ log(p / (1 − p)) / n), with p clamped to
  [``EPS``, 1 − ``EPS``]. DreamPRM's paper writes the sum of the log-odds; its public code
  averages them, and the code made its numbers.

Every score lies in [0, 1]. Means accumulate in at least fp32 and round once to the input's
dtype, which is how ``torch.mean`` computes a bf16 or fp16 mean: upstream's test path averages
bf16 step scores that way.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

AGGREGATIONS = ("mean", "log_mean", "max", "min", "log_odds")
EPS = 1e-6


def mean_per_group(values: torch.Tensor, group: torch.Tensor, n: int) -> torch.Tensor:
    """The mean of ``values`` over each of ``n`` groups (``group[i]`` is the group of value i).

    Sums accumulate in fp32 (or the input's dtype when wider) and the mean is rounded once to
    the input's dtype. A group without values gets 0."""
    acc = torch.promote_types(values.dtype, torch.float32)
    sums = torch.zeros(n, dtype=acc, device=values.device).index_add(0, group, values.to(acc))
    return (sums / torch.bincount(group, minlength=n).clamp(min=1)).to(values.dtype)


def aggregate(p: torch.Tensor, group: torch.Tensor, n: int, how: str) -> torch.Tensor:
    """One score per CoT from its step probabilities (differentiable).

    ``p``: step probabilities, flattened over the CoTs; ``group[i]``: the CoT (0 … n−1) of step i."""
    if how == "mean":
        return mean_per_group(p, group, n)
    if how == "log_mean":
        return mean_per_group(p.clamp(EPS, 1).log(), group, n).exp()
    if how in ("max", "min"):
        fill = -torch.inf if how == "max" else torch.inf
        out = torch.full((n,), fill, dtype=p.dtype, device=p.device)
        return out.scatter_reduce(0, group, p, reduce="amax" if how == "max" else "amin", include_self=True)
    if how == "log_odds":
        q = p.clamp(EPS, 1 - EPS)
        return torch.sigmoid(mean_per_group((q / (1 - q)).log(), group, n))
    raise ValueError(f"unknown aggregation {how!r}; choose from {', '.join(AGGREGATIONS)}")


def aggregate_lists(step_scores: Sequence[Sequence[float]], how: str,
                    dtype: torch.dtype = torch.float64) -> list[float]:
    """:func:`aggregate` over plain lists: one score per candidate, computed in ``dtype``.

    Best-of-N passes float64, or the model's dtype for ``mean`` (upstream's score). A candidate
    without steps gets −inf: it is never selected while another candidate has a number."""
    lists = [list(ps) for ps in step_scores]
    scored = [i for i, ps in enumerate(lists) if ps]
    out = [-math.inf] * len(lists)
    if scored:
        flat = torch.tensor([p for i in scored for p in lists[i]], dtype=dtype)
        group = torch.tensor([g for g, i in enumerate(scored) for _ in lists[i]], dtype=torch.long)
        values = aggregate(flat, group, len(scored), how).tolist()
        for i, v in zip(scored, values):
            out[i] = float(v)
    return out
