"""Lower-level instance losses, step-score aggregation and the upper-level (meta) loss."""

from __future__ import annotations

import torch

from .prm import StepOutputs

AGGREGATIONS = ("mean", "log_mean", "max", "min", "log_odds")
EPS = 1e-6


def per_instance_mean(values: torch.Tensor, batch_index: torch.Tensor, n: int) -> torch.Tensor:
    sums = torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, batch_index, values)
    return sums / torch.bincount(batch_index, minlength=n).clamp(min=1)


def instance_losses(steps: StepOutputs, labels: torch.Tensor, n: int, kind: str = "ce") -> torch.Tensor:
    """One loss per instance: the mean over its steps (paper Eq. 1 before weighting).

    ``ce``: cross-entropy of the full-vocabulary softmax at the label token (``+`` or ``-``).
    ``mse``: DreamPRM-style squared error between p(+) and the (possibly soft) label.
    """
    labels = labels.to(steps.log_p_plus.dtype)
    if kind == "ce":
        per_step = -(labels * steps.log_p_plus + (1 - labels) * steps.log_p_minus)
    elif kind == "mse":
        per_step = (steps.p_plus - labels) ** 2
    else:
        raise ValueError(f"unknown lower loss {kind!r}")
    return per_instance_mean(per_step, steps.batch_index, n)


def aggregate(p: torch.Tensor, batch_index: torch.Tensor, n: int, how: str) -> torch.Tensor:
    """Aggregate step probabilities into one score in [0, 1] per CoT (differentiable).

    ``log_mean`` is the geometric mean exp(mean log p), so the score stays a probability;
    ``log_odds`` is DreamPRM's sigmoid(mean log(p / (1 - p))): its public code averages the
    log-odds over the steps (the paper writes the sum; the code made its numbers).
    """
    if how == "mean":
        return per_instance_mean(p, batch_index, n)
    if how == "log_mean":
        return per_instance_mean(p.clamp(EPS, 1).log(), batch_index, n).exp()
    if how in ("max", "min"):
        fill = -torch.inf if how == "max" else torch.inf
        out = torch.full((n,), fill, dtype=p.dtype, device=p.device)
        reduce = "amax" if how == "max" else "amin"
        return out.scatter_reduce(0, batch_index, p, reduce=reduce, include_self=True)
    if how == "log_odds":
        q = p.clamp(EPS, 1 - EPS)
        return torch.sigmoid(per_instance_mean((q / (1 - q)).log(), batch_index, n))
    raise ValueError(f"unknown aggregation {how!r}; choose from {AGGREGATIONS}")


def meta_loss(steps: StepOutputs, correct: torch.Tensor, how: str = "mean", target: str = "both") -> torch.Tensor:
    """Paper Eq. 2: MSE between the aggregated step scores of a meta CoT and its correctness.

    ``both``: score p(+) steps of correct CoTs and p(-) steps of wrong ones, target 1.
    ``+``: score p(+) steps, target = correctness.
    """
    n = correct.shape[0]
    correct = correct.to(steps.log_p_plus.dtype)
    if target == "both":
        is_right = correct[steps.batch_index]
        p = is_right * steps.p_plus + (1 - is_right) * steps.p_minus
        pred, goal = aggregate(p, steps.batch_index, n, how), torch.ones_like(correct)
    elif target == "+":
        pred, goal = aggregate(steps.p_plus, steps.batch_index, n, how), correct
    else:
        raise ValueError(f"unknown loss target {target!r}; choose '+' or 'both'")
    return ((pred - goal) ** 2).mean()
