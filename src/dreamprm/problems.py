"""Betty problems for the two levels, and the engine that drives them one iteration at a time.

Lower: the PRM on instance-weighted training data (paper Eq. 1).
Upper: the weight model, scored by the best-of-N-mimicking meta loss (paper Eq. 2); its
gradient reaches the weights through Betty's ``darts`` hypergradient, which re-runs the lower
``training_step`` with the PRM perturbed along the meta gradient.

Those two perturbation passes only ever differentiate with respect to the weight model, whose
output depends on the PRM's step outputs as *values*; so they run the PRM without recording an
autograd graph. The hypergradient is bit-identical to that of passes that record one
(``tests/test_trainer.py`` against ``bench/reference.py``); the passes just stop holding a full
set of activations.

Every update of either level is guarded: a step whose loss or gradient is not finite is
skipped and counted, and the parameters are checked after each step (``params_finite``).
The hypergradient is guarded too (``hypergradient.finite_darts``, which also fuses Betty's
darts): darts moves the PRM's weights in place by ``R·v/|v|`` and back, so a non-finite meta
gradient ``v`` would leave NaN in the PRM; ``finite_darts`` skips such an upper step (its
gradient becomes NaN, which the upper guard counts) without touching the PRM.

Everything a problem needs is passed when it is built; problems see each other only through
the attributes Betty sets (``self.upper`` on the lower problem, ``self.lower`` on the upper).

The contract with the trainer: after every iteration ``IterationEngine`` hands each problem's
``take_stats()`` to ``on_iteration(it, stats)``; a problem's checkpointable state is its
``state_dict()`` / ``load_state_dict()``. This module and ``hypergradient`` (the darts it
registers in Betty's table) are the adapter to Betty: the only ones that may touch Betty's
internals (such as the private step counter ``_count``).
"""

from __future__ import annotations

import contextlib
import math

import torch
from betty.configs import Config, EngineConfig
from betty.engine import Engine
from betty.problems import ImplicitProblem

from . import distributed
from .distributed import World
from .hypergradient import DARTS_TYPES, all_finite
from .losses import instance_losses, meta_loss


def step_autocast(enabled: bool, precision: str, dtype, device):
    """The autocast a step runs under: CUDA autocast to ``dtype`` for bf16/fp16 steps on CUDA, as
    Betty does, through ``torch.amp.autocast`` (Betty's ``torch.cuda.amp.autocast`` is deprecated).
    Nothing on CPU, where CUDA autocast never touched the tensors anyway, or with ``enabled=False``."""
    if enabled and precision in ("fp16", "bf16") and torch.device(device).type == "cuda":
        return torch.amp.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


class _GuardedProblem(ImplicitProblem):
    """Clips gradients and skips (and counts) an update whose loss or gradient is not finite."""

    def __init__(self, name, config, module, optimizer, scheduler, stream, autocast=True, world: World = World()):
        super().__init__(name, config, module, optimizer, scheduler, train_data_loader=None)
        self.stream = stream
        self.autocast = autocast
        self.world = world  # data-parallel: the ranks agree on every skipped update
        self._stats: dict = {}  # the latest step's numbers, until take_stats() hands them over
        self.skipped_updates = 0
        self.bad_in_a_row = 0
        self.last_update_skipped = False
        self.params_finite = True
        self._loss_finite = True

    def take_stats(self) -> dict:
        """The numbers of this problem's latest step (empty if it did not step since the last call)."""
        stats, self._stats = self._stats, {}
        return stats

    def state_dict(self) -> dict:
        """What a checkpoint keeps of this problem, besides its module (whose weights are saved as
        safetensors): optimizer, scheduler, Betty's step counter and the skipped-update count.
        Betty's own ``Problem.state_dict`` holds the module as well; nothing in Betty calls it."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "count": self._count,  # Betty's local step: unrolling and accumulation are counted on it
            "skipped_updates": self.skipped_updates,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``'s output; KeyError/ValueError/TypeError/RuntimeError if it does not fit."""
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self._count = int(state["count"])
        self.skipped_updates = int(state["skipped_updates"])

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
        # the gradients (so their norm) are averaged over the ranks already; a loss is per rank
        bad = not (self._loss_finite and bool(torch.isfinite(norm)))
        self.last_update_skipped = distributed.any_true(self.world, bad)
        if self.last_update_skipped:
            self.skipped_updates += 1
            self.bad_in_a_row += 1
            return
        self.bad_in_a_row = 0
        self.optimizer.step()
        self.params_finite = all_finite(self.trainable_parameters())


class LowerProblem(_GuardedProblem):
    """The PRM, trained on instance-weighted step cross-entropy (or MSE)."""

    def __init__(self, name, config, module, optimizer, scheduler, stream, lower_loss="ce", autocast=True,
                 world: World = World()):
        super().__init__(name, config, module, optimizer, scheduler, stream, autocast, world)
        self.lower_loss = lower_loss
        self._own_step = False  # True inside get_loss; otherwise darts is calling at a perturbed PRM
        self._pending = None  # (losses, weights, weighted, index) of the unperturbed pass, until get_loss reads it

    def training_step(self, batch):
        # only the lower step's own pass needs the PRM's graph; darts' perturbation passes do not
        with torch.set_grad_enabled(torch.is_grad_enabled() and self._own_step):
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
        self._stats = {
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
    """The weight model, trained on the meta loss of the PRM's scores on meta CoTs.

    ``meta_loss``: ``aggregate`` scores each CoT by its aggregated step scores (paper Eq. 2),
    ``step`` scores every step on its own (``aggregation`` unused); see ``losses.meta_loss``."""

    def __init__(self, name, config, module, optimizer, scheduler, stream, aggregation="mean", loss_target="both",
                 autocast=True, meta_loss="aggregate", world: World = World()):
        super().__init__(name, config, module, optimizer, scheduler, stream, autocast, world)
        self.aggregation = aggregation
        self.loss_target = loss_target
        self.meta_loss_kind = meta_loss

    def training_step(self, batch):
        steps = self.lower(**batch.model_inputs())
        return meta_loss(steps, batch.true_false, self.aggregation, self.loss_target, per=self.meta_loss_kind)

    def get_loss(self, batch):
        loss, loss_dict = super().get_loss(batch)
        self._stats = {"meta_loss": loss_dict["loss"], "meta_lr": self.optimizer.param_groups[0]["lr"]}
        return loss, loss_dict


def problem_config(*, upper: bool, unroll_steps: int = 1, gradient_accumulation: int = 1,
                   gradient_clipping: float = 0.0, precision: str = "fp32", darts_alpha: float = 0.01,
                   darts: str = "fused") -> Config:
    """Betty's per-problem config; the upper problem keeps its meta-loss graph for the hypergradient.
    ``darts``: the lower problem's hypergradient, ``fused`` or ``betty`` (``hypergradient.DARTS_TYPES``)."""
    return Config(
        type=DARTS_TYPES[darts],
        unroll_steps=unroll_steps,
        gradient_accumulation=gradient_accumulation,
        gradient_clipping=gradient_clipping,
        precision=precision,
        retain_graph=upper,
        darts_alpha=darts_alpha,
    )


# One bi-level iteration, as IterationEngine.run drives Betty 0.2.1 (betty/engine.py,
# betty/problems/problem.py, betty/hypergradient/darts.py); one lower and one upper problem, the
# lower the only leaf:
#
#   Engine.train_step -> lower.step -> Problem.step_normal:
#   1. lower: _count += 1; one_step_descent: get_batch (training stream, kept as cur_batch) ->
#      get_loss -> training_step_exec (step autocast) -> training_step: PRM forward, weights =
#      self.upper(...) (the weight model), weighted loss; backward into the PRM only; every
#      gradient_accumulation steps optimizer_step (the guard: clip, skip a non-finite update,
#      step, check the parameters) and zero_grad; then scheduler.step.
#   2. when lower._count is a multiple of unroll_steps * gradient_accumulation, upper.step_normal:
#      _count += 1; get_batch (meta stream) -> get_loss -> training_step: PRM forward on the meta
#      CoTs (self.lower(...)), meta loss; backward: the direct gradient (None: the meta loss does
#      not see the weight model), then get_grads along the path upper -> lower -> upper:
#      v = d meta loss / d PRM, and finite_darts(v, lower, upper) (darts unless v is not finite;
#      hypergradient.fused_darts does what Betty's darts does, below, with torch._foreach_* ops):
#        PRM += eps·v (eps = darts_alpha / |v|); lower.training_step_exec(cur_batch), the first
#        perturbation pass, its gradient w.r.t. the weight model set as -g+ / 2eps;
#        PRM -= 2eps·v; lower.training_step_exec(cur_batch), the second pass, + g- / 2eps added;
#        PRM += eps·v (back, up to rounding).
#      Then the upper optimizer_step (the guard), zero_grad, scheduler.step.
#   3. lower.step_after_roll_back, with --rollback only: the PRM and its optimizer go back to the
#      state cached at the start of the unroll (cache_states), and one_step_descent runs again on
#      cur_batch with the updated weights, then scheduler.step.
#   Then on_iteration(it, {problem name: problem.take_stats()}).


def merge_stats(per_rank: list[dict]) -> dict:
    """One problem's ``take_stats()`` of an iteration, from every rank, as one: the instances of
    the ranks in rank order (``instance_*`` lists joined), the smallest ``*_min``, the largest
    ``*_max``, the mean of every other number (losses, mean weight; learning rates are equal)."""
    per_rank = [s for s in per_rank if s]
    if len(per_rank) <= 1:
        return dict(per_rank[0]) if per_rank else {}
    merged = {}
    for key in per_rank[0]:
        values = [s[key] for s in per_rank]
        if key.startswith("instance_"):
            merged[key] = [v for value in values for v in value]
        elif key.endswith("_min"):
            merged[key] = min(values)
        elif key.endswith("_max"):
            merged[key] = max(values)
        else:
            merged[key] = sum(values) / len(values)
    return merged


class IterationEngine(Engine):
    """Betty's engine, run one iteration at a time so the trainer can log, save and stop.

    ``on_iteration(it, stats)`` is called after every iteration with ``{problem name: that
    problem's take_stats()}`` (merged over the ranks in a data-parallel run, ``merge_stats``);
    returning False stops the run. ``run(start_iteration)`` lets a resumed run continue where its
    checkpoint left off. It never runs Betty's validation.

    Data parallel (``--strategy distributed``): ``world`` is the process group the trainer has
    already joined. Betty 0.2.1's ``configure_systems`` would start the group itself, assert a
    world size above 1 and put rank r on ``cuda:(r % device_count)``; this engine overrides it, for
    that strategy only, to take the trainer's group as it is: its device (the same CUDA rule, or
    the CPU for gloo runs, where ``device_count`` is 0 and Betty's rule divides by zero) and a
    world of one (a one-process torchrun, which trains exactly as a plain run). ``cleanup`` leaves
    the group to the trainer, which still needs it after the last iteration. Everything else,
    the DDP wrapping of both problems' modules and the gradient averaging, is Betty's.
    """

    def __init__(self, problems, config: EngineConfig, dependencies, on_iteration=None, world: World = World()):
        self.on_iteration = on_iteration
        self.world = world
        super().__init__(problems=problems, config=config, dependencies=dependencies)

    def configure_systems(self):
        if self._strategy != "distributed":
            return super().configure_systems()
        w = self.world
        if not w.distributed:
            raise RuntimeError("strategy 'distributed' needs the trainer's process group (distributed.join)")
        self._world_size, self._rank, self._local_rank = w.size, w.rank, w.local_rank
        self.device = torch.device(w.device)
        return {"strategy": self._strategy, "backend": w.backend, "world_size": w.size, "rank": w.rank,
                "local_rank": w.local_rank}

    def cleanup(self):
        if self._strategy != "distributed":
            super().cleanup()

    def run(self, start_iteration: int = 0):
        self.train()
        for it in range(start_iteration + 1, self.train_iters + 1):
            self.global_step = it
            self.train_step()
            stats = {problem.name: problem.take_stats() for problem in self.problems}
            if self.world.size > 1:
                ranks = distributed.gather_objects(self.world, stats)
                stats = {name: merge_stats([r[name] for r in ranks]) for name in stats}
            if self.on_iteration is not None and self.on_iteration(it, stats) is False:
                break
        self.cleanup()
