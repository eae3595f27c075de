"""The process reward model: an InternVL checkpoint read as per-step p(+) / p(-).

Only the label positions ever go through the LM head, so the (positions ×
vocabulary) logits are a few rows instead of (sequence × vocabulary); the softmax is still
over the full vocabulary, as the method defines the step score.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .prompt import label_token_ids

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ModelLoadError(Exception):
    """A model that cannot be loaded (missing folder, unreachable hub id, unreadable files).
    The message is one line; the CLIs print it as ``error: <message>`` and exit 2."""


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """``tiny`` means the bundled tiny InternVL; anything else is a folder or a hub id."""
    if str(name_or_path) == "tiny":
        from .tiny import ensure_tiny

        return str(ensure_tiny())
    return str(name_or_path)


@dataclass
class StepOutputs:
    """Per label position (flattened over the batch): the two label logits and log-probs."""

    logit_plus: torch.Tensor
    logit_minus: torch.Tensor
    log_p_plus: torch.Tensor  # log softmax over the full vocabulary, at the "+" token
    log_p_minus: torch.Tensor
    batch_index: torch.Tensor  # which example of the batch each step belongs to

    @property
    def p_plus(self) -> torch.Tensor:
        return self.log_p_plus.exp()

    @property
    def p_minus(self) -> torch.Tensor:
        return self.log_p_minus.exp()


class ProcessRewardModel(nn.Module):
    """Wraps ``InternVLForConditionalGeneration`` and its processor; its parameters are the model's."""

    def __init__(self, model, processor):
        super().__init__()
        self.model = model
        self.processor = processor
        self.plus_id, self.minus_id = label_token_ids(processor.tokenizer)
        self.image_token_id = model.config.image_token_id
        # Reference-equivalent path (benchmarks, equivalence tests): LM head and softmax over
        # every position through the stock forward, as the public code computes it.
        self.full_vocab_logits = False

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        attn_implementation: str | None = "sdpa",
    ) -> "ProcessRewardModel":
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = resolve_model_path(name_or_path)
        if precision not in DTYPES:
            raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
        kwargs = {"dtype": DTYPES[precision]}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        processor = AutoProcessor.from_pretrained(path)
        return cls(model, processor).to(device)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def tokens_per_tile(self) -> int:
        return int(self.model.config.image_seq_length)

    def compile_layers(self) -> None:
        """Regional ``torch.compile``: every vision and language decoder layer, in place.

        Layers of one kind share one compiled graph (their weights are graph inputs), sequence
        lengths are dynamic, so a run compiles a handful of graphs once instead of one per
        length. The gain is fused elementwise work and far fewer kernel launches; the numerics
        are those of the fused kernels (close to eager, not bit-identical)."""
        for layer in [*self.model.model.vision_tower.encoder.layer, *self.model.model.language_model.layers]:
            layer.compile(dynamic=True)

    # -- pieces -------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision tower + pixel shuffle + projector: (tiles × tokens_per_tile, hidden)."""
        cfg = self.model.config
        out = self.model.model.get_image_features(
            pixel_values=pixel_values.to(self.model.dtype),
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        )
        feats = getattr(out, "pooler_output", out)
        return feats.reshape(-1, feats.shape[-1])

    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor | None) -> torch.Tensor:
        embeds = self.model.get_input_embeddings()(input_ids)
        if image_features is not None:
            mask = (input_ids == self.image_token_id).unsqueeze(-1)
            n_slots = int(mask.sum())
            if n_slots != image_features.shape[0]:
                raise ValueError(f"{n_slots} image tokens in the text but {image_features.shape[0]} image features")
            embeds = embeds.masked_scatter(mask, image_features.to(embeds.dtype))
        return embeds

    def hidden_states(self, input_ids, attention_mask=None, pixel_values=None, image_features=None, **lm_kwargs):
        if image_features is None and pixel_values is not None:
            image_features = self.image_features(pixel_values)
        embeds = self.embed(input_ids, image_features)
        # The text config asks for a KV cache by default; scoring and training read every
        # position once, so building one only costs a concatenation per layer (and, under
        # --compile, a recompile). Callers that want it (the prefix cache) pass use_cache=True.
        lm_kwargs.setdefault("use_cache", False)
        out = self.model.model.language_model(inputs_embeds=embeds, attention_mask=attention_mask, **lm_kwargs)
        return out.last_hidden_state

    def label_outputs(self, hidden_at_labels: torch.Tensor, batch_index: torch.Tensor) -> StepOutputs:
        """LM head at the label positions only; full-vocabulary log-softmax in fp32."""
        logits = self.model.lm_head(hidden_at_labels).float()
        log_probs = logits.log_softmax(-1)
        return StepOutputs(
            logit_plus=logits[:, self.plus_id],
            logit_minus=logits[:, self.minus_id],
            log_p_plus=log_probs[:, self.plus_id],
            log_p_minus=log_probs[:, self.minus_id],
            batch_index=batch_index,
        )

    # -- the whole thing ------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        label_batch: torch.Tensor,
        label_pos: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        **_: object,
    ) -> StepOutputs:
        if self.full_vocab_logits:
            logits = self.full_logits(input_ids, attention_mask, pixel_values).float()
            log_probs = logits.log_softmax(-1)[label_batch, label_pos]
            at = logits[label_batch, label_pos]
            return StepOutputs(at[:, self.plus_id], at[:, self.minus_id], log_probs[:, self.plus_id],
                               log_probs[:, self.minus_id], label_batch)
        hidden = self.hidden_states(input_ids, attention_mask, pixel_values)
        return self.label_outputs(hidden[label_batch, label_pos], label_batch)

    def full_logits(self, input_ids, attention_mask=None, pixel_values=None) -> torch.Tensor:
        """Logits at every position through the stock forward (the reference computation)."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values).logits
