"""The hypergradient the weight model's gradient goes through: Betty's darts, fused and guarded.

Betty's ``darts`` (``betty/hypergradient/darts.py``) approximates the product of the meta
gradient ``v`` (d meta loss / d PRM) with the PRM's best-response Jacobian by a central finite
difference on the lower problem's loss, differentiated with respect to the weight model:

    eps = R / |v|;  PRM += eps·v;  g+ = d L_train / d w;  PRM -= 2·eps·v;  g- = d L_train / d w;
    PRM += eps·v (back);  hypergradient = (g- - g+) / (2·eps)

At InternVL3-1B that means three Python loops over ~730 PRM tensors (one kernel launch each)
and a 0.9 G-element copy of ``v`` (``to_vec``) only to take its norm. :func:`fused_darts` does the
same with ``torch._foreach_*`` operations: a few launches per loop on CUDA, and the norm from
per-tensor norms without the copy. The elementwise arithmetic (the moves of the PRM, the
finite difference) is the same operation on the same values, so it is bit-identical; the norm
is summed in another order, so ``eps`` can differ in its last bits. (On the CPU, fp32 norms of
long vectors lose precision with their length: Betty's one-vector norm of the tiny model's
meta gradient is 1e-5 off, the per-tensor one 5e-7.) ``tests/test_hypergradient.py`` proves
both statements.

:func:`finite_darts` is the hypergradient the problems use. It averages ``v`` over the ranks of a
data-parallel run and skips the step when ``v`` is not finite, then runs the fused darts (or
Betty's own, ``--darts betty``). Betty finds it by the lower problem's ``config.type``
(:data:`DARTS_TYPES`), through its ``jvp_fn_mapping`` table, where importing this module
registers it.
"""

from __future__ import annotations

import functools

import torch
from betty.hypergradient import jvp_fn_mapping
from betty.hypergradient.darts import darts as betty_darts
from betty.utils import replace_none_with_zero

from . import distributed

# --darts value -> the lower problem's Betty config type (its key in jvp_fn_mapping)
DARTS_TYPES = {"fused": "finite_darts", "betty": "finite_betty_darts"}


def all_finite(tensors) -> bool:
    """True when no tensor holds a NaN or an infinity (one fused max-abs pass, one host sync)."""
    tensors = [t.detach() for t in tensors]
    if not tensors:
        return True
    return bool(torch.stack([n.float() for n in torch._foreach_norm(tensors, float("inf"))]).isfinite().all())


def vector_norm(tensors) -> torch.Tensor:
    """The 2-norm of ``tensors`` taken as one vector, without concatenating them: per-tensor norms
    accumulated in fp32 (one fused launch), combined in fp32, rounded once to the dtype the
    concatenation would have (as Betty's ``to_vec(v).norm()`` returns it)."""
    dtype = functools.reduce(torch.promote_types, {t.dtype for t in tensors})  # a dispatched op: once per dtype
    acc = torch.promote_types(dtype, torch.float32)
    norms = torch._foreach_norm([t.detach() for t in tensors], 2, dtype=acc)
    return torch.linalg.vector_norm(torch.stack(norms)).to(dtype)


def fused_darts(vector, curr, prev, sync):
    """Betty 0.2.1's ``darts(vector, curr, prev, sync)`` with ``torch._foreach_*`` operations; the
    same passes, in the same order, with the same arguments (FSDP, which this project refuses,
    is not handled). ``curr`` is the lower problem (the PRM), ``prev`` the upper one."""
    R = curr.config.darts_alpha
    eps = R / vector_norm(vector).add_(1e-15).item()
    params = [p.data for p in curr.meta_trainable_parameters()]
    v = [t.data for t in vector]
    upper_params = list(prev.trainable_parameters())

    torch._foreach_add_(params, v, alpha=eps)
    loss_p = curr.training_step_exec(curr.cur_batch)
    grad_p = replace_none_with_zero(torch.autograd.grad(loss_p, upper_params, allow_unused=True), upper_params)
    if sync:
        torch._foreach_div_(grad_p, 2 * eps)
        torch._foreach_neg_(grad_p)
        prev.set_grads(upper_params, grad_p)

    torch._foreach_sub_(params, v, alpha=2 * eps)
    loss_n = curr.training_step_exec(curr.cur_batch)
    if sync:
        torch.autograd.backward(loss_n / (2 * eps), inputs=upper_params)
    else:
        grad_n = replace_none_with_zero(torch.autograd.grad(loss_n, upper_params, allow_unused=True), upper_params)

    if not curr.config.darts_multitask:
        torch._foreach_add_(params, v, alpha=eps)

    if sync:
        return None
    implicit = torch._foreach_sub(grad_n, grad_p)
    torch._foreach_div_(implicit, 2 * eps)
    return implicit


def finite_darts(vector, curr, prev, sync, darts=fused_darts):
    """The darts hypergradient, skipped when the meta gradient ``vector`` is not finite.

    Skipping leaves the lower problem's weights untouched and gives the upper problem a NaN
    gradient, so its guard skips (and counts) the update.

    Data-parallel (``curr.world`` of several ranks): ``vector`` is first averaged over the ranks,
    so every rank perturbs the PRM by the same global meta gradient (the PRM stays identical on
    every rank, and a non-finite gradient anywhere is skipped everywhere). Each rank's finite
    difference then uses its own training batch, and the weight model's DDP averages the results:
    the hypergradient of the ranks' batches taken together, as one process with the whole batch
    would compute it. Betty's darts averages nothing (each rank would use its own meta gradient)."""
    distributed.average_(curr.world, list(vector))
    if all_finite(vector):
        return darts(vector, curr, prev, sync)
    params = list(prev.trainable_parameters())
    nan = [torch.full_like(p, float("nan")) for p in params]
    if sync:
        prev.set_grads(params, nan)
        return None
    return nan


# Betty picks the hypergradient by the lower problem's config.type from this table.
jvp_fn_mapping.setdefault(DARTS_TYPES["fused"], finite_darts)
jvp_fn_mapping.setdefault(DARTS_TYPES["betty"], functools.partial(finite_darts, darts=betty_darts))
