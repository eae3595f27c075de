"""Reference computations: what the project's fast paths are measured and tested against.

The package (``src/dreamprm``) runs only the fast paths: the LM head at the label positions
alone, and Betty's darts perturbation passes without an autograd graph through the PRM. This
module computes the same quantities the way the public code does, for ``bench.py``'s
``reference_*`` modes and for the equivalence tests:

``reference_step_outputs(prm, input_ids, attention_mask, label_batch, label_pos, pixel_values=None)``
    The stock InternVL forward (LM head at every position), a full-vocabulary log-softmax at
    every position in fp32, then the label positions picked out, as a ``StepOutputs``.
``ReferenceProcessRewardModel``
    A ``ProcessRewardModel`` whose forward is ``reference_step_outputs``; its ``from_pretrained``
    loads a checkpoint straight into it.
``GraphRecordingLowerProblem``
    A ``LowerProblem`` whose darts perturbation passes record the PRM's autograd graph, as
    Betty's passes do when nothing stops them.
``make_reference(obj)``
    Switches an existing ``ProcessRewardModel``, ``LowerProblem`` or ``Trainer`` (both of its
    parts) to the reference classes above, in place, and returns it: the objects Betty's engine
    already holds keep their identity, weights and optimizer state. A lower problem also
    switches to Betty's own darts (``--darts betty``: a Python loop per PRM tensor).

Tests import it as ``bench.reference`` (pytest puts the repository root on ``sys.path``); the
scripts in this folder import it as ``reference``.
"""

from __future__ import annotations

import torch

from dreamprm.hypergradient import DARTS_TYPES
from dreamprm.prm import ProcessRewardModel, StepOutputs
from dreamprm.problems import LowerProblem

__all__ = ["GraphRecordingLowerProblem", "ReferenceProcessRewardModel", "make_reference", "reference_step_outputs"]


def reference_step_outputs(prm: ProcessRewardModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                           label_batch: torch.Tensor, label_pos: torch.Tensor,
                           pixel_values: torch.Tensor | None = None, **_: object) -> StepOutputs:
    """Step outputs through the full computation: (batch × sequence × vocabulary) logits from the
    stock forward, log-softmax over the vocabulary at every position, label positions read last."""
    logits = prm.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values).logits.float()
    log_probs = logits.log_softmax(-1)[label_batch, label_pos]
    at = logits[label_batch, label_pos]
    return StepOutputs(
        logit_plus=at[:, prm.plus_id],
        logit_minus=at[:, prm.minus_id],
        log_p_plus=log_probs[:, prm.plus_id],
        log_p_minus=log_probs[:, prm.minus_id],
        batch_index=label_batch,
    )


class ReferenceProcessRewardModel(ProcessRewardModel):
    """A PRM that computes every step output through ``reference_step_outputs``."""

    def forward(self, input_ids, attention_mask, label_batch, label_pos, pixel_values=None, **_) -> StepOutputs:
        return reference_step_outputs(self, input_ids, attention_mask, label_batch, label_pos, pixel_values)


class GraphRecordingLowerProblem(LowerProblem):
    """darts' two perturbation passes record the PRM's autograd graph, as the lower step does.

    ``LowerProblem.training_step`` records a graph only in its own pass (``_own_step``, set by
    ``get_loss``); every other call is one of darts' passes at a perturbed PRM. Here those calls
    run as the own pass does, graph included, and then drop what the own pass keeps for
    ``get_loss`` (``_pending``), so the reference differs from the production class in the
    autograd recording alone."""

    def training_step(self, batch):
        if self._own_step:
            return super().training_step(batch)
        self._own_step = True
        try:
            return super().training_step(batch)
        finally:
            self._own_step = False
            self._pending = None


def make_reference(obj):
    """Switch ``obj`` to the reference computation in place and return it: a ``ProcessRewardModel``
    becomes a ``ReferenceProcessRewardModel``, a ``LowerProblem`` a ``GraphRecordingLowerProblem``
    computing Betty's own darts, and anything with ``prm`` and ``lower`` attributes (a
    ``Trainer``) gets both."""
    if isinstance(obj, ProcessRewardModel):
        obj.__class__ = ReferenceProcessRewardModel
    elif isinstance(obj, LowerProblem):
        obj.__class__ = GraphRecordingLowerProblem
        obj.config.type = DARTS_TYPES["betty"]
    elif hasattr(obj, "prm") and hasattr(obj, "lower"):
        make_reference(obj.prm)
        make_reference(obj.lower)
    else:
        raise TypeError(f"no reference computation for a {type(obj).__name__}")
    return obj
