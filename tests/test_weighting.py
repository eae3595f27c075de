"""Weight models and the meta loss against oracles written from the public code.

DreamPRM's ``DomainTable`` and meta prediction (coder-qicao/DreamPRM ``model.py``, ``main.py``)
and DreamPRM-1.5's ``InstanceTable`` / ``InstanceNet`` (coder-qicao/DreamPRM-1.5 ``model.py``).
"""

import math

import pytest
import torch

from dreamprm.losses import meta_loss
from dreamprm.prm import StepOutputs
from dreamprm.weighting import DomainTable, InstanceNet, WeightTable, build_weight_model


def _steps(log_p_plus, batch_index, logit_minus=None):
    lp = torch.tensor(log_p_plus)
    lm = torch.log1p(-lp.exp() * 0.999)  # some mass left for the rest of the vocabulary
    logits_minus = torch.tensor(logit_minus) if logit_minus is not None else torch.zeros_like(lp)
    return StepOutputs(lp.clone(), logits_minus, lp, lm, torch.tensor(batch_index))


def test_domain_table_is_dreamprms_softplus_over_mean_starting_at_zero():
    table = DomainTable(["a", "b", "c"])
    assert torch.equal(table.raw.detach(), torch.zeros(3))  # DreamPRM: raw weights start at 0
    with torch.no_grad():
        table.raw.copy_(torch.tensor([-1.0, 0.5, 2.0]))
    domain = torch.tensor([2, 0, 2, 1])
    w = table(torch.arange(4), domain)
    # oracle: softplus(raw) / mean(softplus(raw)), looked up per sample by its domain
    sp = [math.log1p(math.exp(r)) for r in (-1.0, 0.5, 2.0)]
    mean = sum(sp) / 3
    expected = [sp[d] / mean for d in (2, 0, 2, 1)]
    assert w.tolist() == pytest.approx(expected, rel=1e-6)
    assert sum(table.effective().values()) == pytest.approx(3.0)  # weights average to 1
    # every domain's raw weight gets a gradient through the mean, not just the ones in the batch
    w[:1].sum().backward()
    assert (table.raw.grad != 0).all()


def test_domain_mode_builds_dreamprms_table():
    model = build_weight_model("domain", ["i1", "i2"], ["x", "y"])
    assert isinstance(model, DomainTable) and model.keys == ["x", "y"]
    assert model.effective() == {"x": 1.0, "y": 1.0}


@pytest.mark.parametrize("activation, expected", [("Clip", [3.0, -1.0, 0.5]), ("No", [4.0, -2.0, 0.5]),
                                                  ("ReLU", [4.0, 0.0, 0.5])])
def test_instance_table_applies_its_activation(activation, expected):
    table = WeightTable(["a", "b", "c"], 1.0, activation)
    with torch.no_grad():
        table.raw.copy_(torch.tensor([4.0, -2.0, 0.5]))
    assert table(torch.tensor([0, 1, 2]), torch.tensor([-1, -1, -1])).tolist() == expected


def test_table_defaults_to_clip_and_net_to_sigmoid_as_the_public_scripts():
    assert build_weight_model("table", ["a"], ["d"]).activation == "Clip"
    assert build_weight_model("net", ["a"], ["d"]).activation == "sigmoid"
    assert build_weight_model("table", ["a"], ["d"]).raw.item() == 1.0


@pytest.mark.parametrize("activation", ["sigmoid", "Clip", "No", "LeakyReLU"])
def test_instance_net_applies_the_activation_after_the_step_mean(activation):
    """Upstream InstanceNet: per step softmax(logit+, logit-) -> Linear -> LeakyReLU -> Linear,
    mean over the instance's steps, then the activation function."""
    torch.manual_seed(0)
    net = InstanceNet(hidden_dim=5, activation=activation)
    with torch.no_grad():
        net.mlp[2].bias.fill_(2.5)  # push the output past the clip range so activations differ
    logit_plus = torch.tensor([2.0, -1.0, 0.5, 3.0, 0.0])
    logit_minus = torch.tensor([0.0, 1.0, 0.5, -2.0, 4.0])
    batch_index = torch.tensor([0, 0, 0, 1, 1])
    steps = StepOutputs(logit_plus, logit_minus, logit_plus * 0, logit_plus * 0, batch_index)
    out = net(torch.tensor([0, 1]), torch.tensor([-1, -1]), steps)
    acts = {"sigmoid": torch.sigmoid, "Clip": lambda t: t.clamp(-1.0, 3.0), "No": lambda t: t,
            "LeakyReLU": torch.nn.functional.leaky_relu}
    expected = []
    for rows in ([0, 1, 2], [3, 4]):
        pair = torch.stack([logit_plus[rows], logit_minus[rows]], dim=1).softmax(dim=1)
        hidden = torch.nn.functional.leaky_relu(pair @ net.mlp[0].weight.T + net.mlp[0].bias)
        per_step = hidden @ net.mlp[2].weight.T + net.mlp[2].bias
        expected.append(acts[activation](per_step.mean(dim=0))[0])
    torch.testing.assert_close(out, torch.stack(expected))


def test_log_odds_meta_loss_is_dreamprms_sigmoid_of_the_mean_log_odds():
    """DreamPRM main.py: outputs = sigmoid(sum_i log(p_i / (1 - p_i)) / n_steps); MSE vs correctness."""
    p = [[0.9, 0.6, 0.2], [0.7, 0.99]]
    correct = [1.0, 0.0]
    steps = _steps([math.log(x) for row in p for x in row], [0, 0, 0, 1, 1])
    loss = meta_loss(steps, torch.tensor(correct), how="log_odds", target="+")
    preds = [1 / (1 + math.exp(-sum(math.log(x / (1 - x)) for x in row) / len(row))) for row in p]
    expected = sum((a - b) ** 2 for a, b in zip(preds, correct)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_the_flag_choices_are_the_weight_models_and_activations_defined_here():
    from dreamprm import aggregation, config, weighting

    assert config.ACTIVATIONS == weighting.ACTIVATIONS
    assert config.REWEIGHTINGS == tuple(weighting.DEFAULT_ACTIVATION)
    assert config.AGGREGATIONS == aggregation.AGGREGATIONS
    with pytest.raises(TypeError):  # the options are keyword-only: no silent mix-up of positions
        build_weight_model("table", ["a"], ["d"], "Clip")
