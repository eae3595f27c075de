"""The two levels' losses: per-instance step losses (lower) and the meta loss (upper)."""

from __future__ import annotations

import torch

from .aggregation import aggregate, mean_per_group
from .prm import StepOutputs


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
    return mean_per_group(per_step, steps.batch_index, n)


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
