"""Betty problems for the two levels, and the engine that drives them one iteration at a time.

Lower: the PRM on instance-weighted training data (paper Eq. 1).
Upper: the weight model, scored by the best-of-N-mimicking meta loss (paper Eq. 2); its
gradient reaches the weights through Betty's ``darts`` hypergradient, which re-runs the lower
``training_step`` with the PRM perturbed along the meta gradient.

Those two perturbation passes only ever differentiate with respect to the weight model, whose
output depends on the PRM's step outputs as *values*; so by default they run the PRM without
recording an autograd graph (``graph_free_perturbation``). The hypergradient is bit-identical
(``tests/test_trainer.py``); the passes just stop holding a full set of activations.

Every update of either level is guarded: a step whose loss or gradient is not finite is
skipped and counted, and the parameters are checked after each step (``params_finite``).
The hypergradient is guarded too (``finite_darts``): Betty's darts moves the PRM's weights in
place by ``R·v/|v|`` and back, so a non-finite meta gradient ``v`` would leave NaN in the PRM;
``finite_darts`` skips such an upper step (its gradient becomes NaN, which the upper guard
counts) without touching the PRM.

Everything a problem needs is passed when it is built; problems see each other only through
the attributes Betty sets (``self.upper`` on the lower problem, ``self.lower`` on the upper).
"""

from __future__ import annotations

import contextlib
import math

import torch
from betty.configs import Config, EngineConfig
from betty.engine import Engine
from betty.hypergradient import jvp_fn_mapping
from betty.hypergradient.darts import darts
from betty.problems import ImplicitProblem

from .losses import instance_losses, meta_loss


def all_finite(tensors) -> bool:
    """True when no tensor holds a NaN or an infinity (one fused max-abs pass, one host sync)."""
    tensors = [t.detach() for t in tensors]
    if not tensors:
        return True
    return bool(torch.stack([n.float() for n in torch._foreach_norm(tensors, float("inf"))]).isfinite().all())


def finite_darts(vector, curr, prev, sync):
    """Betty's darts hypergradient, skipped when the meta gradient ``vector`` is not finite.

    Skipping leaves the lower problem's weights untouched and gives the upper problem a NaN
    gradient, so its guard skips (and counts) the update."""
    if all_finite(vector):
        return darts(vector, curr, prev, sync)
    params = list(prev.trainable_parameters())
    nan = [torch.full_like(p, float("nan")) for p in params]
    if sync:
        prev.set_grads(params, nan)
        return None
    return nan


# Betty picks the hypergradient by the lower problem's ``config.type`` from this table.
jvp_fn_mapping.setdefault("finite_darts", finite_darts)


def step_autocast(enabled: bool, precision: str, dtype, device):
    """The autocast a step runs under: CUDA autocast to ``dtype`` for bf16/fp16 steps on CUDA, as
    Betty does, through ``torch.amp.autocast`` (Betty's ``torch.cuda.amp.autocast`` is deprecated).
    Nothing on CPU, where CUDA autocast never touched the tensors anyway, or with ``enabled=False``."""
    if enabled and precision in ("fp16", "bf16") and torch.device(device).type == "cuda":
        return torch.amp.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


class _GuardedProblem(ImplicitProblem):
    """Clips gradients and skips (and counts) an update whose loss or gradient is not finite."""

    def __init__(self, name, config, module, optimizer, scheduler, stream, autocast=True):
        super().__init__(name, config, module, optimizer, scheduler, train_data_loader=None)
        self.stream = stream
        self.autocast = autocast
        self.stats: dict = {}
        self.skipped_updates = 0
        self.bad_in_a_row = 0
        self.last_update_skipped = False
        self.params_finite = True
        self._loss_finite = True

    def get_batch(self):
        return self.stream.next().to(self.device, non_blocking=True)

    def training_step_exec(self, batch):
        # Betty wraps bf16/fp16 steps in CUDA autocast (the public code's numerics), which
        # up-casts the operands of its fp32-listed ops (layer_norm among them) and casts them
        # back for the next matmul. With autocast=False the step runs in the weights' own
        # dtype: no casts, rounding in slightly different places (the label softmax stays
        # fp32, see prm.label_outputs).
        with step_autocast(self.autocast, self.precision, self.dtype, self.device):
            return self.training_step(batch)

    def get_loss(self, batch):
        loss, loss_dict = super().get_loss(batch)
        self._loss_finite = math.isfinite(loss_dict["loss"])
        return loss, loss_dict

    def optimizer_step(self, *args, **kwargs):
        max_norm = self.gradient_clipping if self.gradient_clipping > 0 else float("inf")
        params = [p for p in self.trainable_parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.tensor(0.0)
        self.last_update_skipped = not (self._loss_finite and bool(torch.isfinite(norm)))
        if self.last_update_skipped:
            self.skipped_updates += 1
            self.bad_in_a_row += 1
            return
        self.bad_in_a_row = 0
        self.optimizer.step()
        self.params_finite = all_finite(self.trainable_parameters())


class LowerProblem(_GuardedProblem):
    """The PRM, trained on instance-weighted step cross-entropy (or MSE)."""

    def __init__(self, name, config, module, optimizer, scheduler, stream, lower_loss="ce",
                 graph_free_perturbation=True, autocast=True):
        super().__init__(name, config, module, optimizer, scheduler, stream, autocast)
        self.lower_loss = lower_loss
        self.graph_free_perturbation = graph_free_perturbation
        self._own_step = False  # True inside get_loss; otherwise darts is calling at a perturbed PRM

    def training_step(self, batch):
        record_graph = self._own_step or not self.graph_free_perturbation
        with torch.set_grad_enabled(torch.is_grad_enabled() and record_graph):
            steps = self.module(**batch.model_inputs())
            n = batch.index.shape[0]
            losses = instance_losses(steps, batch.labels, n, self.lower_loss)
        upper = getattr(self, "upper", None)
        if upper is None:
            weights = torch.ones_like(losses)
        else:
            weights = upper(batch.index, batch.domain, steps)
        weighted = (weights.to(losses.dtype) * losses).mean()
        if self._own_step:  # kept only until get_loss reads it: it holds the pass's autograd graph
            self._pending = (losses, weights, weighted, batch.index)
        return weighted

    def get_loss(self, batch):
        self._own_step = True
        try:
            loss, loss_dict = super().get_loss(batch)
        finally:
            self._own_step = False
        losses, weights, weighted, index = self._pending  # from this (unperturbed) pass
        self._pending = None
        w = weights.detach().float()
        self.stats = {
            "lower_loss": float(losses.detach().mean()),
            "weighted_loss": float(weighted.detach()),
            "weight_min": float(w.min()),
            "weight_mean": float(w.mean()),
            "weight_max": float(w.max()),
            "lr": self.optimizer.param_groups[0]["lr"],
            "instance_index": index.tolist(),
            "instance_weight": w.tolist(),
        }
        return loss, loss_dict


class UpperProblem(_GuardedProblem):
    """The weight model, trained on the meta loss of the PRM's scores on meta CoTs."""

    def __init__(self, name, config, module, optimizer, scheduler, stream, aggregation="mean", loss_target="both",
                 autocast=True):
        super().__init__(name, config, module, optimizer, scheduler, stream, autocast)
        self.aggregation = aggregation
        self.loss_target = loss_target

    def training_step(self, batch):
        steps = self.lower(**batch.model_inputs())
        return meta_loss(steps, batch.true_false, self.aggregation, self.loss_target)

    def get_loss(self, batch):
        loss, loss_dict = super().get_loss(batch)
        self.stats = {"meta_loss": loss_dict["loss"], "meta_lr": self.optimizer.param_groups[0]["lr"]}
        return loss, loss_dict


def problem_config(args, upper: bool) -> Config:
    return Config(
        type="finite_darts",
        unroll_steps=args.unroll_steps,
        gradient_accumulation=args.gradiant_accumulation,
        gradient_clipping=args.gradiant_clipping,
        precision=args.precision,
        retain_graph=upper,
        darts_alpha=args.darts_alpha,
    )


class IterationEngine(Engine):
    """Betty's engine, run one iteration at a time so the trainer can log, save and stop.

    ``on_iteration(it)`` is called after every iteration; returning False stops the run.
    ``start_iteration`` lets a resumed run continue where its checkpoint left off.
    """

    def __init__(self, problems, config: EngineConfig, dependencies, on_iteration, start_iteration: int = 0):
        self.on_iteration = on_iteration
        self.start_iteration = start_iteration
        super().__init__(problems=problems, config=config, dependencies=dependencies)

    def run(self):
        self.train()
        for it in range(self.start_iteration + 1, self.train_iters + 1):
            self.global_step = it
            self.train_step()
            if self.on_iteration(it) is False:
                break
        self.cleanup()
