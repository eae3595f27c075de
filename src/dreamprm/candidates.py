"""The CPU half of best-of-N scoring: a test question made ready for the model.

``QuestionEncoder.prepare`` turns a question (its image, its text, its candidates' steps) into a
:class:`PreparedQuestion`: the image decoded, tiled and normalised into pixels, and every
distinct candidate encoded into the token ids of its conversation, cut to the steps that fit in
``max_length``. Nothing here touches the model, so this work can run in a background thread or
in worker processes while the previous question is on the GPU (``scoring.iter_evaluate``), and
``Scorer.score_prepared`` does the rest. A prepared question holds exactly what
``Scorer.score_step_lists`` would have built itself, so the scores are the same either way.
"""

from __future__ import annotations

import dataclasses
import os
from bisect import bisect_right
from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image

from .batching import ExampleBuilder, load_rgb
from .prompt import EncodedConversation, PromptError, candidate_conversation, encode_conversation
from .steps import SPLITTERS, split_steps


def image_pixels(builder: ExampleBuilder, image):
    """``image`` (a PIL image, a path, or None for text only) as ``builder``'s (tiles, 3, T, T)
    pixel tensor; a tensor or None is returned as it is."""
    if image is None or isinstance(image, torch.Tensor):
        return image
    if isinstance(image, (str, os.PathLike)):
        image = load_rgb(image)
    elif isinstance(image, Image.Image):
        image = image.convert("RGB")
    return builder.pixel_values(image)


@dataclass
class PreparedQuestion:
    """A question ready to score (``QuestionEncoder.prepare``).

    ``pixels``: the image's (tiles, 3, T, T) tensor, None for text only or when no candidate has
    steps. ``n_steps``: each candidate's step count. ``scored_as``: for each candidate with steps,
    the first candidate with the same steps (itself or an earlier one: identical step lists are
    scored once), None for one without steps. ``encoded``: the token ids of the conversations to
    run, keyed by candidate, for the first of each distinct step list whose first step fits in
    ``max_length`` (plain lists: they cross from a worker process in one pickle, where every
    tensor would take a shared-memory segment of its own)."""

    pixels: torch.Tensor | None
    n_steps: list[int]
    scored_as: list[int | None]
    encoded: dict[int, EncodedConversation]

    def pin_memory(self) -> PreparedQuestion:
        """The same question with its pixels in page-locked memory (what a DataLoader calls when it
        pins), so their copy to the GPU can run asynchronously."""
        if self.pixels is None or self.pixels.is_pinned():
            return self
        return dataclasses.replace(self, pixels=self.pixels.pin_memory())


class QuestionEncoder:
    """Prepares test questions for a PRM's processor: image tiling with at most ``max_patch_num``
    tiles, steps split by ``splitter`` (``steps.SPLITTERS``), conversations cut to ``max_length``
    tokens (None: no limit). Holds the processor, no model."""

    def __init__(self, processor, max_patch_num: int = 12, splitter: str = "upstream",
                 max_length: int | None = None):
        if splitter not in SPLITTERS:
            raise ValueError(f"splitter must be one of {SPLITTERS}, got {splitter!r}")
        if max_length is not None and int(max_length) < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        self.builder = ExampleBuilder(processor, max_patch_num)
        self.tokenizer = processor.tokenizer
        self.splitter = splitter
        self.max_length = None if max_length is None else int(max_length)
        # Over-long candidates are measured and truncated here, so the tokenizer's own warning
        # ("... will result in indexing errors") would be wrong; it is one flag per tokenizer.
        warned = getattr(self.tokenizer, "deprecation_warnings", None)
        if isinstance(warned, dict):
            warned["sequence-length-is-longer-than-the-specified-maximum"] = True

    def prepare_image(self, image, pin_memory: bool = False):
        """``image`` (a PIL image, a path, or None for text only) decoded, tiled and normalised into
        the (tiles, 3, T, T) pixel tensor; a tensor or None is returned as it is. ``pin_memory``:
        in page-locked memory (CUDA only), for an asynchronous copy to the device."""
        pv = image_pixels(self.builder, image)
        if pin_memory and pv is not None and not pv.is_pinned():
            pv = pv.pin_memory()
        return pv

    def fit(self, question: str, steps: Sequence[str], num_image_tokens: int):
        """``(encoding, kept)``: the token ids of the conversation over the first ``kept`` steps,
        the most that fit in ``max_length`` tokens (all of them when the whole fits); ``(None, 0)``
        when not even the first step fits. Only id lists are built, never a tensor."""
        steps = list(steps)
        enc = encode_conversation(self.tokenizer, candidate_conversation(question, steps), num_image_tokens)
        limit = self.max_length
        if limit is None or len(enc.input_ids) <= limit:
            return enc, len(steps)
        # Every step turn ends the same way (label, end of turn), so the conversation over the first
        # j steps is the prefix of these ids that ends as many tokens after label j's position as
        # the whole ends after the last label's.
        tail = len(enc.input_ids) - enc.label_positions[-1]
        kept = bisect_right([p + tail for p in enc.label_positions], limit)
        while kept > 0:  # re-encoded to be sure: the ids of exactly what is scored
            enc = encode_conversation(self.tokenizer, candidate_conversation(question, steps[:kept]), num_image_tokens)
            if len(enc.input_ids) <= limit:
                return enc, kept
            kept -= 1
        return None, 0

    def prepare(self, image, question: str, step_lists: Sequence[Sequence[str]],
                pin_memory: bool = False) -> PreparedQuestion:
        """The question with candidates already split into ``step_lists``. The image (a PIL image, a
        path, None, or a pixel tensor) is only read when some candidate has steps. A candidate
        whose conversation cannot be built raises ``PromptError`` naming it."""
        n_steps = [len(steps) for steps in step_lists]
        first_of: dict[tuple, int] = {}
        scored_as: list[int | None] = []
        for i, steps in enumerate(step_lists):
            scored_as.append(first_of.setdefault(tuple(steps), i) if len(steps) > 0 else None)
        todo = sorted(first_of.values())
        if not todo:
            return PreparedQuestion(None, n_steps, scored_as, {})
        pv = self.prepare_image(image, pin_memory=pin_memory)
        n_img = 0 if pv is None else pv.shape[0] * self.builder.tokens_per_tile
        encoded = {}
        for i in todo:
            try:
                enc, kept = self.fit(question, step_lists[i], n_img)
            except PromptError as exc:
                raise PromptError(f"candidate {i}: {exc}") from exc
            if enc is not None:  # else unscorable: not even the first step fits in max_length
                encoded[i] = enc
        return PreparedQuestion(pv, n_steps, scored_as, encoded)

    def prepare_candidates(self, image, question: str, candidates: Sequence[str],
                           pin_memory: bool = False) -> PreparedQuestion:
        """``prepare`` with free-text candidates, split into steps by this encoder's splitter."""
        return self.prepare(image, question, [split_steps(c, self.splitter) for c in candidates], pin_memory)
