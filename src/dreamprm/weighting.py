"""The upper-level weight models: Instance Table, Domain Table (DreamPRM), Instance Net.

Each is an ``nn.Module`` whose ``forward`` maps a training batch (and, for the net, the PRM's
step outputs on it) to one weight per instance. Only their parameters are meta-trained.
"""

from __future__ import annotations

import torch
from torch import nn

from .losses import per_instance_mean
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
    """One learnable raw weight per key (a training instance, or a dataset for the Domain Table)."""

    def __init__(self, keys: list[str], initialization: float = 1.0, activation: str = "LeakyReLU", by: str = "index"):
        super().__init__()
        if by not in ("index", "domain"):
            raise ValueError("by must be 'index' or 'domain'")
        activate(torch.zeros(1), activation)  # fail early on a bad name
        self.keys = list(keys)
        self.by = by
        self.activation = activation
        self.raw = nn.Parameter(torch.full((len(self.keys),), float(initialization)))

    def forward(self, index: torch.Tensor, domain: torch.Tensor, steps: StepOutputs | None = None) -> torch.Tensor:
        rows = index if self.by == "index" else domain
        return activate(self.raw[rows.to(self.raw.device)], self.activation)

    def effective(self) -> dict[str, float]:
        with torch.no_grad():
            values = activate(self.raw.detach().float(), self.activation).tolist()
        return dict(zip(self.keys, values))


class InstanceNet(nn.Module):
    """Per step: softmax(logit+, logit-) -> Linear(2, h) -> LeakyReLU -> Linear(h, 1); mean; sigmoid.

    Its size does not grow with the data. By default its input is not detached from the PRM
    (as the public code); ``detach_input=True`` stops gradients into the PRM through it.
    """

    def __init__(self, hidden_dim: int = 10, detach_input: bool = False):
        super().__init__()
        self.detach_input = detach_input
        self.mlp = nn.Sequential(nn.Linear(2, hidden_dim), nn.LeakyReLU(), nn.Linear(hidden_dim, 1))

    def forward(self, index: torch.Tensor, domain: torch.Tensor, steps: StepOutputs) -> torch.Tensor:
        pair = torch.stack([steps.logit_plus, steps.logit_minus], dim=-1).float()
        if self.detach_input:
            pair = pair.detach()
        per_step = self.mlp(pair.softmax(-1).to(self.mlp[0].weight.dtype)).squeeze(-1)
        return torch.sigmoid(per_instance_mean(per_step, steps.batch_index, index.shape[0]))


def build_weight_model(kind: str, train_ids: list[str], domains: list[str], args) -> nn.Module:
    if kind == "table":
        return WeightTable(train_ids, args.initialization, args.activation_function, by="index")
    if kind == "domain":
        return WeightTable(domains, args.initialization, args.activation_function, by="domain")
    if kind == "net":
        return InstanceNet(args.hidden_dim, args.detach_net_input)
    raise ValueError(f"unknown reweighting {kind!r}")
