"""The upper-level weight models: Instance Table, Instance Net, and DreamPRM's Domain Table.

Each is an ``nn.Module`` whose ``forward`` maps a training batch (and, for the net, the PRM's
step outputs on it) to one weight per instance. Only their parameters are meta-trained.
"""

from __future__ import annotations

import torch
from torch import nn

from .aggregation import mean_per_group
from .prm import StepOutputs

ACTIVATIONS = ("LeakyReLU", "ReLU", "No", "Clip", "sigmoid")


def activate(raw: torch.Tensor, name: str) -> torch.Tensor:
    """Map raw table entries to effective weights (``Clip`` clamps to [-1, 3] as the public code)."""
    if name == "LeakyReLU":
        return nn.functional.leaky_relu(raw)
    if name == "ReLU":
        return torch.relu(raw)
    if name == "No":
        return raw
    if name == "Clip":
        return raw.clamp(-1.0, 3.0)
    if name == "sigmoid":
        return torch.sigmoid(raw)
    raise ValueError(f"unknown activation function {name!r}; choose from {ACTIVATIONS}")


class WeightTable(nn.Module):
    """The Instance Table: one learnable raw weight per training instance, through ``activation``."""

    def __init__(self, keys: list[str], initialization: float = 1.0, activation: str = "Clip"):
        super().__init__()
        activate(torch.zeros(1), activation)  # fail early on a bad name
        self.keys = list(keys)
        self.activation = activation
        self.raw = nn.Parameter(torch.full((len(self.keys),), float(initialization)))

    def forward(self, index: torch.Tensor, domain: torch.Tensor, steps: StepOutputs | None = None) -> torch.Tensor:
        return activate(self.raw[index.to(self.raw.device)], self.activation)

    def effective(self) -> dict[str, float]:
        with torch.no_grad():
            values = activate(self.raw.detach().float(), self.activation).tolist()
        return dict(zip(self.keys, values))


class DomainTable(nn.Module):
    """DreamPRM's Domain Table: one raw weight per dataset, starting at 0 (``initialization``).

    A domain's weight is ``softplus(raw) / mean(softplus(raw))`` over all domains: always
    positive, and the weights average to 1 whatever the raw values, so the lower loss keeps its
    scale while domains trade weight among themselves.
    """

    def __init__(self, domains: list[str], initialization: float = 0.0):
        super().__init__()
        self.keys = list(domains)
        self.raw = nn.Parameter(torch.full((len(self.keys),), float(initialization)))

    def normalised(self) -> torch.Tensor:
        positive = nn.functional.softplus(self.raw)
        return positive / positive.mean()

    def forward(self, index: torch.Tensor, domain: torch.Tensor, steps: StepOutputs | None = None) -> torch.Tensor:
        return self.normalised()[domain.to(self.raw.device)]

    def effective(self) -> dict[str, float]:
        with torch.no_grad():
            values = self.normalised().detach().float().tolist()
        return dict(zip(self.keys, values))


class InstanceNet(nn.Module):
    """Per step: softmax(logit+, logit-) -> Linear(2, h) -> LeakyReLU -> Linear(h, 1); mean over
    the instance's steps; then ``activation`` (``--activation_function``; the public run script
    passes ``sigmoid``).

    Its size does not grow with the data. By default its input is not detached from the PRM
    (as the public code); ``detach_input=True`` stops gradients into the PRM through it.
    """

    def __init__(self, hidden_dim: int = 10, detach_input: bool = False, activation: str = "sigmoid"):
        super().__init__()
        activate(torch.zeros(1), activation)  # fail early on a bad name
        self.detach_input = detach_input
        self.activation = activation
        self.mlp = nn.Sequential(nn.Linear(2, hidden_dim), nn.LeakyReLU(), nn.Linear(hidden_dim, 1))

    def forward(self, index: torch.Tensor, domain: torch.Tensor, steps: StepOutputs) -> torch.Tensor:
        pair = torch.stack([steps.logit_plus, steps.logit_minus], dim=-1).float()
        if self.detach_input:
            pair = pair.detach()
        per_step = self.mlp(pair.softmax(-1).to(self.mlp[0].weight.dtype)).squeeze(-1)
        return activate(mean_per_group(per_step, steps.batch_index, index.shape[0]), self.activation)


# What --activation_function / --initialization mean when not given, per weight model: the
# values the public run scripts pass (run_table.sh: Clip, as paper section 2.2; run_net.sh:
# sigmoid) and DreamPRM's Domain Table start (raw 0, no activation: softplus normalisation).
DEFAULT_ACTIVATION = {"table": "Clip", "net": "sigmoid", "domain": None}
DEFAULT_INITIALIZATION = {"table": 1.0, "net": None, "domain": 0.0}


def build_weight_model(kind: str, train_ids: list[str], domains: list[str], *, activation: str | None = None,
                       initialization: float | None = None, hidden_dim: int = 10,
                       detach_net_input: bool = False) -> nn.Module:
    """The upper-level model for ``--reweighting`` ``kind`` (table, net or domain) over the training
    ids / domains; an ``activation`` or ``initialization`` of None means the method's default."""
    if kind not in DEFAULT_ACTIVATION:
        raise ValueError(f"unknown reweighting {kind!r}")
    activation = activation or DEFAULT_ACTIVATION[kind]
    if initialization is None:
        initialization = DEFAULT_INITIALIZATION[kind]
    if kind == "table":
        return WeightTable(train_ids, initialization, activation)
    if kind == "domain":
        return DomainTable(domains, initialization)
    return InstanceNet(hidden_dim, detach_net_input, activation)
