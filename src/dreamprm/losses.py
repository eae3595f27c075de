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


META_LOSSES = ("aggregate", "step")


def step_scores(steps: StepOutputs, correct: torch.Tensor, target: str = "both") -> tuple[torch.Tensor, torch.Tensor]:
    """Every meta step's score and its goal under ``target`` (``correct``: one 0/1 per CoT).

    ``both``: p(+) for a step of a correct CoT, p(-) for a step of a wrong one, goal 1.
    ``+``: p(+), goal = the CoT's correctness."""
    is_right = correct.to(steps.log_p_plus.dtype)[steps.batch_index]
    if target == "both":
        return is_right * steps.p_plus + (1 - is_right) * steps.p_minus, torch.ones_like(is_right)
    if target == "+":
        return steps.p_plus, is_right
    raise ValueError(f"unknown loss target {target!r}; choose '+' or 'both'")


def meta_loss(steps: StepOutputs, correct: torch.Tensor, how: str = "mean", target: str = "both",
              per: str = "aggregate") -> torch.Tensor:
    """The upper level's loss on a batch of meta CoTs (``correct``: one 0/1 per CoT).

    ``per="aggregate"`` (paper Eq. 2): the mean over CoTs of (aggregated step score − goal)², the
    steps aggregated by ``how``. ``per="step"``: the mean over every step of the batch of
    (step score − goal)², each step weighing the same whatever its CoT's length; ``how`` is
    unused. That is DreamPRM's ablation without the aggregation-function loss. Step scores and
    goals as :func:`step_scores` gives them for ``target``.
    """
    if per not in META_LOSSES:
        raise ValueError(f"unknown meta loss {per!r}; choose from {', '.join(META_LOSSES)}")
    p, goal = step_scores(steps, correct, target)
    if per == "step":
        return ((p - goal) ** 2).mean()
    n = correct.shape[0]
    correct = correct.to(steps.log_p_plus.dtype)
    pred = aggregate(p, steps.batch_index, n, how)
    cot_goal = torch.ones_like(correct) if target == "both" else correct
    return ((pred - cot_goal) ** 2).mean()
