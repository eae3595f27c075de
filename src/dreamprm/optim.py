"""Optimizers and learning-rate schedules of both levels.

The public DreamPRM-1.5 code trains with the ``AdamW`` that transformers shipped up to its 4.x
releases (removed since). It is not quite ``torch.optim.AdamW``:

* ``eps`` defaults to 1e-6 (torch: 1e-8) and is added to ``sqrt(v)`` *before* bias
  correction, which is folded into the step size ``lr * sqrt(1 - b2^t) / (1 - b1^t)``; so in
  torch's terms the effective epsilon is ``eps / sqrt(1 - b2^t)``, ~32x larger at step 1;
* the decoupled weight decay is applied *after* the Adam update (torch: before), as
  ``p += -lr * wd * p``;
* parameters without a gradient are skipped entirely (no decay either).

``TransformersAdamW`` is that algorithm, op for op, with multi-tensor (``torch._foreach_*``)
kernels in chunks so a 1B-parameter model steps without a per-tensor Python loop or a full
extra copy of the optimizer state. ``--optimizer adamw_torch`` selects torch's AdamW instead
(DreamPRM's own code used it, with eps 1e-8). Both survive Betty's optimizer patch, which
rebuilds an optimizer as ``type(opt)(params, **opt.defaults)``.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

OPTIMIZERS = ("adamw_hf", "adamw_torch")
DEFAULT_EPS = {"adamw_hf": 1e-6, "adamw_torch": 1e-8}
SCHEDULERS = ("cosine_schedule_with_warmup", "step_lr", "constant")
SCHEDULER_ALIASES = {"step": "step_lr"}  # this project's earlier name for StepLR


class TransformersAdamW(torch.optim.Optimizer):
    """AdamW as transformers 4.x implemented it (``transformers.AdamW``, ``correct_bias=True``)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, correct_bias: bool = True, chunk_size: int = 32):
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"lr, eps and weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        correct_bias=correct_bias, chunk_size=chunk_size)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            # Tensors sharing (device, dtype, step count) update together.
            buckets = defaultdict(list)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("TransformersAdamW does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                buckets[(p.device, p.dtype, state["step"])].append(p)
            for (_, _, step), params in buckets.items():
                step_size = group["lr"]
                if group["correct_bias"]:
                    step_size = step_size * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)
                size = max(1, int(group["chunk_size"]))
                for at in range(0, len(params), size):
                    self._update(params[at:at + size], group, beta1, beta2, step_size)
        return loss

    def _scalar(self, value: float, device) -> torch.Tensor:
        """A cached fp32 0-dim tensor on ``device`` (made once: no host-to-device copy per step)."""
        cache = self.__dict__.setdefault("_scalars", {})
        key = (value, str(device))
        if key not in cache:
            cache[key] = torch.tensor(value, dtype=torch.float32, device=device)
        return cache[key]

    def _update(self, params, group, beta1, beta2, step_size):
        grads = [p.grad for p in params]
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        # m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2  (each op rounds, as the per-tensor code).
        # The betas go in as fp32 0-dim tensors: a Python scalar in _foreach_mul_ is rounded to
        # the tensors' dtype first (bf16 0.9 = 0.8984), which Tensor.mul_(0.9) does not do.
        device = params[0].device
        torch._foreach_mul_(exp_avgs, self._scalar(beta1, device))
        torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, self._scalar(beta2, device))
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denoms, group["eps"])
        torch._foreach_addcdiv_(params, exp_avgs, denoms, value=-step_size)
        if group["weight_decay"] > 0.0:
            torch._foreach_add_(params, params, alpha=-group["lr"] * group["weight_decay"])


def make_optimizer(params, kind: str, lr: float, weight_decay: float, momentum: float,
                   eps: float | None, device: str) -> torch.optim.Optimizer:
    """``adamw_hf`` (transformers' AdamW, the public DreamPRM-1.5 code) or ``adamw_torch``."""
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {kind!r}; choose from {OPTIMIZERS}")
    eps = DEFAULT_EPS[kind] if eps is None else float(eps)
    betas = (momentum, 0.999)
    if kind == "adamw_hf":
        return TransformersAdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    # torch.optim.AdamW itself does not survive Betty's rebuild from `.defaults` on current
    # torch; Adam with decoupled weight decay is the same algorithm under another name.
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                            decoupled_weight_decay=True, fused=str(device).startswith("cuda"))


def make_scheduler(optimizer, kind: str, total_steps: int, warmup_ratio: float, step_size: int, gamma: float):
    """``cosine_schedule_with_warmup`` (transformers), ``step_lr`` (StepLR) or ``constant`` (None).

    The warm-up length is ``warmup_ratio * total_steps`` unrounded, as the public code passes
    ``0.05 * iteration_num`` (a float) to transformers' schedule."""
    kind = SCHEDULER_ALIASES.get(kind, kind)
    if kind == "cosine_schedule_with_warmup":
        from transformers import get_cosine_schedule_with_warmup

        return get_cosine_schedule_with_warmup(optimizer, warmup_ratio * total_steps, max(total_steps, 1))
    if kind == "step_lr":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    if kind == "constant":
        return None
    raise ValueError(f"unknown scheduler {kind!r}; choose from {SCHEDULERS}")
