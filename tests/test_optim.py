"""Optimizers and schedules: transformers' AdamW exactly, Betty's rebuild, upstream's schedule names."""

import math

import pytest
import torch
from betty.patch.optimizer import patch_optimizer
from betty.patch.scheduler import patch_scheduler

from arguments import parse_train_args
from dreamprm.optim import TransformersAdamW, make_optimizer, make_scheduler


def _reference_step(params, state, lr, betas, eps, weight_decay):
    """transformers 4.x ``AdamW.step`` (correct_bias=True), one tensor at a time, as its source reads:
    moments, denominator sqrt(v) + eps, bias correction folded into the step size, update, then decay."""
    beta1, beta2 = betas
    with torch.no_grad():
        for p in params:
            if p.grad is None:
                continue
            st = state.setdefault(id(p), {"step": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)})
            st["step"] += 1
            st["m"].mul_(beta1).add_(p.grad, alpha=1.0 - beta1)
            st["v"].mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
            denom = st["v"].sqrt().add_(eps)
            step_size = lr * math.sqrt(1.0 - beta2 ** st["step"]) / (1.0 - beta1 ** st["step"])
            p.addcdiv_(st["m"], denom, value=-step_size)
            if weight_decay > 0.0:
                p.add_(p, alpha=-lr * weight_decay)


def _params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 3), (7,), (2, 2, 2), (1,), (4, 6)]
    return [torch.randn(s, generator=g).to(dtype).requires_grad_(True) for s in shapes]


def _grads(params, step, seed=1):
    g = torch.Generator().manual_seed(seed + step)
    for i, p in enumerate(params):
        # parameter 3 gets no gradient on odd steps: its own step count falls behind (and it is
        # neither updated nor decayed then), so the optimizer mixes step counts in one group
        if i == 3 and step % 2:
            p.grad = None
        else:
            scale = 10.0 ** (-(i + step) % 7)  # gradients from 1 to 1e-6: eps matters for some
            p.grad = (torch.randn(p.shape, generator=g) * scale).to(p.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_size", [1, 2, 32])
def test_transformers_adamw_matches_the_reference_bit_for_bit(dtype, chunk_size):
    ours, ref = _params(dtype), _params(dtype)
    opt = TransformersAdamW(ours, lr=3e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.05, chunk_size=chunk_size)
    state = {}
    for step in range(6):
        _grads(ours, step)
        _grads(ref, step)
        opt.step()
        _reference_step(ref, state, 3e-2, (0.9, 0.999), 1e-6, 0.05)
        for a, b in zip(ours, ref):
            assert torch.equal(a, b), step
    assert opt.state[ours[3]]["step"] == 3 and opt.state[ours[0]]["step"] == 6


def test_transformers_adamw_is_not_torch_adamw():
    """Same lr, betas, eps and decay: torch's algorithm lands elsewhere (eps after bias correction,
    decay before the update), so the equality above is a real check."""
    ours, theirs = _params(torch.float32), _params(torch.float32)
    a = TransformersAdamW(ours, lr=3e-2, eps=1e-6, weight_decay=0.05)
    b = torch.optim.AdamW(theirs, lr=3e-2, eps=1e-6, weight_decay=0.05)
    for step in range(3):
        _grads(ours, step)
        _grads(theirs, step)
        a.step()
        b.step()
    assert any(not torch.allclose(x, y, rtol=0, atol=1e-7) for x, y in zip(ours, theirs))


def test_make_optimizer_defaults_and_bettys_rebuild_keep_the_settings():
    params = [torch.nn.Parameter(torch.ones(3))]
    hf = make_optimizer(params, "adamw_hf", 5e-5, 1e-2, 0.9, None, "cpu")
    assert isinstance(hf, TransformersAdamW) and hf.defaults["eps"] == 1e-6  # transformers' default
    assert hf.defaults["betas"] == (0.9, 0.999) and hf.defaults["weight_decay"] == 1e-2
    rebuilt = patch_optimizer(hf, params, is_zero=False)  # what Betty does to every optimizer
    assert type(rebuilt) is TransformersAdamW and rebuilt.defaults == hf.defaults
    torch_opt = make_optimizer(params, "adamw_torch", 5e-7, 1e-2, 0.9, None, "cpu")
    assert torch_opt.defaults["eps"] == 1e-8 and torch_opt.defaults["decoupled_weight_decay"] is True
    assert make_optimizer(params, "adamw_hf", 1.0, 0.0, 0.9, 1e-4, "cpu").defaults["eps"] == 1e-4
    with pytest.raises(ValueError, match="adamw_hf"):
        make_optimizer(params, "sgd", 1.0, 0.0, 0.9, None, "cpu")


def test_train_flags_default_to_the_public_codes_optimizer():
    config = parse_train_args([])
    assert config.optimizer == "adamw_hf" and config.adam_epsilon is None
    assert parse_train_args(["--scheduler_type", "step_lr"]).scheduler_type == "step_lr"


def _lrs(sched, opt, n):
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    return out


def test_step_lr_is_upstreams_name_for_steplr_and_step_an_alias():
    for name in ("step_lr", "step"):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0)
        sched = make_scheduler(opt, name, 100, 0.05, step_size=2, gamma=0.5)
        assert isinstance(sched, torch.optim.lr_scheduler.StepLR)
        assert _lrs(sched, opt, 5) == [1.0, 1.0, 0.5, 0.5, 0.25]
    assert make_scheduler(opt, "constant", 100, 0.05, 2, 0.5) is None


def test_cosine_warmup_is_the_unrounded_share_of_the_steps_as_upstream():
    """Upstream passes 0.05 * iteration_num (a float) as the warm-up: with 30 iterations the lr
    ramps over 1.5 steps, not a rounded 2."""
    from transformers import get_cosine_schedule_with_warmup

    ours_opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0)
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0)
    ours = _lrs(make_scheduler(ours_opt, "cosine_schedule_with_warmup", 30, 0.05, 1, 1.0), ours_opt, 30)
    ref = _lrs(get_cosine_schedule_with_warmup(ref_opt, num_warmup_steps=0.05 * 30, num_training_steps=30),
               ref_opt, 30)
    assert ours == ref
    assert ours[1] == pytest.approx(1 / 1.5)
    rebuilt = patch_scheduler(make_scheduler(ours_opt, "cosine_schedule_with_warmup", 30, 0.05, 1, 1.0), ours_opt)
    assert isinstance(rebuilt, torch.optim.lr_scheduler.LambdaLR)


def test_the_flag_choices_are_the_optimizers_and_schedules_this_module_builds():
    from dreamprm import config, optim

    assert config.OPTIMIZERS == optim.OPTIMIZERS
    assert set(config.SCHEDULER_CHOICES) == set(optim.SCHEDULERS) | set(optim.SCHEDULER_ALIASES)
