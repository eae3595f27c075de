"""The fused darts hypergradient against Betty's own darts, on the tiny model in fp32 on the CPU.

The two compute the same finite difference; the fused one with ``torch._foreach_*`` operations
and a norm taken per tensor. Given the same step size the results are bit-identical, and the
engine uses the fused one unless ``--darts betty``."""

import copy

import pytest
import torch
from betty.configs import Config, EngineConfig
from betty.hypergradient import jvp_fn_mapping
from betty.hypergradient.darts import darts as betty_darts
from betty.utils import to_vec
from runs import DATA, train_config
from torch.utils._python_dispatch import TorchDispatchMode

from dreamprm.batching import BatchStream, ConversationDataset, ExampleBuilder
from dreamprm.hypergradient import DARTS_TYPES, finite_darts, fused_darts, vector_norm
from dreamprm.prm import ProcessRewardModel
from dreamprm.problems import IterationEngine, LowerProblem, UpperProblem, problem_config
from dreamprm.records import load_records
from dreamprm.weighting import InstanceNet, WeightTable

ARGS = ("--iteration_num", "3", "--save_every_iterations", "3", "--batch_size", "2", "--meta_batch_size", "2")


def _problems(tiny_dir, kind):
    """Lower and upper problems on four training and two meta records after one real iteration
    (so the lower problem holds its current batch), and the meta gradient v of a fresh meta batch."""
    torch.manual_seed(0)
    prm = ProcessRewardModel.from_pretrained(tiny_dir, precision="fp32")
    with torch.no_grad():  # sharper label logits: per-instance gradients that clearly differ
        prm.model.lm_head.weight.mul_(3)
    builder = ExampleBuilder(prm.processor, 2)
    train_records, _ = load_records(DATA / "train.json", "train")
    meta_records, _ = load_records(DATA / "meta.json", "meta")
    train_set = ConversationDataset(train_records[:4], DATA / "train.json", builder)
    meta_set = ConversationDataset(meta_records[:2], DATA / "meta.json", builder)
    weights = InstanceNet(hidden_dim=4) if kind == "net" else WeightTable(train_set.ids, 1.0, "LeakyReLU")
    low = LowerProblem("lower", problem_config(upper=False), prm, torch.optim.SGD(prm.parameters(), lr=1e-3), None,
                       BatchStream(train_set, 4, 3, 0))
    up = UpperProblem("upper", problem_config(upper=True), weights, torch.optim.SGD(weights.parameters(), lr=0.1),
                      None, BatchStream(meta_set, 2, 4, 0))
    IterationEngine([up, low], EngineConfig(train_iters=1, strategy="cpu"),
                    {"l2u": {low: [up]}, "u2l": {up: [low]}}).run()
    meta_loss = up.training_step(up.get_batch())
    params = list(low.trainable_parameters())
    v = torch.autograd.grad(meta_loss, params, allow_unused=True)
    v = [g.detach() if g is not None else torch.zeros_like(p) for g, p in zip(v, params)]
    return low, up, v


def _run(darts, low, up, vector, sync):
    """``darts`` from the problems' current state, restored afterwards: (result, upper .grad, PRM after)."""
    prm_before = copy.deepcopy(low.module.state_dict())
    for p in up.trainable_parameters():
        p.grad = None
    out = darts(vector, low, up, sync)
    grads = [None if p.grad is None else p.grad.clone() for p in up.trainable_parameters()]
    prm_after = {k: t.clone() for k, t in low.module.state_dict().items()}
    low.module.load_state_dict(prm_before)
    for p in up.trainable_parameters():
        p.grad = None
    return out, grads, prm_after


def _dyadic(vector, seed=0):
    """A vector of 0 and ±2^-6 entries: every partial sum of its squares is exact in fp32, so its
    norm does not depend on the order of summation."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(-1, 2, t.shape, generator=g).to(t.dtype) * 2.0**-6 for t in vector]


@pytest.mark.parametrize("kind", ["table", "net"])
@pytest.mark.parametrize("sync", [False, True])
def test_fused_darts_is_bit_identical_to_bettys_at_the_same_step_size(tiny_dir, kind, sync):
    low, up, v = _problems(tiny_dir, kind)
    vector = _dyadic(v)
    assert torch.equal(vector_norm(vector), to_vec(vector).norm())  # the same eps for both
    out_b, grads_b, prm_b = _run(betty_darts, low, up, vector, sync)
    out_f, grads_f, prm_f = _run(fused_darts, low, up, vector, sync)
    if sync:  # the hypergradient lands in the weight model's .grad
        assert out_b is None and out_f is None
        assert all(g is not None for g in grads_b) and any(g.abs().max() > 0 for g in grads_b)
        assert all(torch.equal(a, b) for a, b in zip(grads_b, grads_f))
    else:  # it is returned
        assert any(g.abs().max() > 0 for g in out_b)
        assert len(out_b) == len(out_f) and all(torch.equal(a, b) for a, b in zip(out_b, out_f))
    # the PRM ends where Betty's leaves it (θ + εv − 2εv + εv, rounded the same way)
    assert all(torch.equal(prm_b[k], prm_f[k]) for k in prm_b)


def test_fused_darts_on_a_real_meta_gradient_differs_only_through_the_norms_rounding(tiny_dir):
    low, up, v = _problems(tiny_dir, "table")
    fused, betty = vector_norm(v), to_vec(v).norm()
    exact = torch.linalg.vector_norm(torch.cat([t.double().flatten() for t in v]))
    assert abs(fused.double() - exact) <= 1e-6 * exact
    assert abs(fused - betty) <= 1e-4 * betty  # Betty's one-vector fp32 norm: ~1e-5 off here, on the CPU
    out_b, _, prm_b = _run(betty_darts, low, up, v, False)
    out_f, _, prm_f = _run(fused_darts, low, up, v, False)
    [b], [f] = out_b, out_f
    assert b.abs().max() > 0
    assert (f - b).abs().max() <= 1e-4 * b.abs().max()  # measured: 1e-6
    assert all(torch.allclose(prm_b[k], prm_f[k], rtol=0, atol=1e-6) for k in prm_b)


def test_the_norm_without_concatenation_keeps_the_dtype_betty_takes_it_in():
    g = torch.Generator().manual_seed(1)
    half = [torch.randn(1000, generator=g).bfloat16() for _ in range(2)]
    assert vector_norm(half).dtype == torch.bfloat16  # as Betty's to_vec(v).norm() returns it
    assert vector_norm(half) == torch.linalg.vector_norm(torch.cat([t.float() for t in half])).bfloat16()
    mixed = [torch.ones(4, dtype=torch.bfloat16), torch.ones(5)]
    assert vector_norm(mixed).dtype == torch.float32 and vector_norm(mixed) == 3.0


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 0 if func.is_view else 1
        return func(*args, **(kwargs or {}))


def test_fused_darts_dispatches_a_few_ops_per_loop_instead_of_one_per_prm_tensor(tiny_dir):
    """What the fusion buys on a GPU (one kernel launch per dispatched op): Betty's darts moves
    the PRM tensor by tensor three times and copies v to take its norm; the fused one does not."""
    low, up, v = _problems(tiny_dir, "table")
    counts = {}
    for name, darts in (("betty", betty_darts), ("fused", fused_darts)):
        with _OpCounter() as counter:
            _run(darts, low, up, v, False)
        counts[name] = counter.count
    # each _run also snapshots, restores and clones the PRM: equal overhead on both sides
    assert counts["betty"] - counts["fused"] >= 3 * len(v), counts


def test_the_engine_uses_the_fused_darts_unless_told_otherwise(tmp_path, tiny_dir):
    from dreamprm.trainer import Trainer

    assert jvp_fn_mapping[DARTS_TYPES["fused"]] is finite_darts
    assert jvp_fn_mapping[DARTS_TYPES["betty"]].keywords == {"darts": betty_darts}
    default = Trainer(train_config(tmp_path / "a", *ARGS))
    assert default.lower.config.type == "finite_darts" and default.config.darts == "fused"
    betty = Trainer(train_config(tmp_path / "b", *ARGS, "--darts", "betty"))
    assert betty.lower.config.type == "finite_betty_darts"
    default.run()
    betty.run()
    # three iterations through either hypergradient: the same table, up to the norm's rounding
    a, b = default.weight_model.raw.detach(), betty.weight_model.raw.detach()
    assert not torch.equal(a, torch.ones_like(a))  # the upper step moved the weights
    assert torch.allclose(a, b, rtol=0, atol=1e-5)


def test_betty_config_types_for_the_darts_choices():
    assert problem_config(upper=False).type == "finite_darts"
    assert problem_config(upper=False, darts="betty").type == "finite_betty_darts"
    with pytest.raises(KeyError):
        problem_config(upper=False, darts="neumann")
    assert Config(type="finite_darts").darts_multitask is False  # fused_darts reads it as Betty's darts does


def test_the_reference_trainer_computes_bettys_own_darts(tmp_path, tiny_dir):
    """bench.py's reference_ modes time the public code's computation, Betty's darts included."""
    from bench.reference import GraphRecordingLowerProblem, make_reference
    from dreamprm.trainer import Trainer

    trainer = make_reference(Trainer(train_config(tmp_path / "w", *ARGS)))
    assert type(trainer.lower) is GraphRecordingLowerProblem
    assert jvp_fn_mapping[trainer.lower.config.type].keywords == {"darts": betty_darts}
