"""The process reward model: an InternVL checkpoint read as per-step p(+) / p(-).

Only the label positions ever go through the LM head, so the (positions ×
vocabulary) logits are a few rows instead of (sequence × vocabulary); the softmax is still
over the full vocabulary, as the method defines the step score.

``ProcessRewardModel.from_pretrained`` takes either checkpoint layout: transformers' native
InternVL, or InternVL's original *chat* layout (the released DreamPRM-1.5 checkpoints, which
upstream loads with remote code), converted in memory by :mod:`dreamprm.convert`. Whatever
cannot be loaded is a :class:`ModelLoadError` with a one-line message.

Best-of-N scoring (``dreamprm.scoring``) uses two more pieces: :meth:`~ProcessRewardModel.encode_prefix`
runs the token prefix a question's candidates share once, and
:meth:`~ProcessRewardModel.step_probabilities` scores a batch of them on a copy of its cache.
"""

from __future__ import annotations

import copy
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .prompt import label_token_ids

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ModelLoadError(OSError):
    """A model that cannot be loaded (missing folder, unreachable hub id, unreadable files).
    The message is one line; the CLIs print it as ``error: <message>`` and exit 2. It is an
    ``OSError``, so handlers written for transformers' own load errors catch it too; the
    underlying exception, where there is one, is chained as ``__cause__``."""

    def __init__(self, message: str):
        super().__init__(re.sub(r"\s*\n\s*", " ", str(message)).strip())


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """``tiny`` means the bundled tiny InternVL; anything else is a folder or a hub id."""
    if str(name_or_path) == "tiny":
        from .tiny import ensure_tiny

        return str(ensure_tiny())
    return str(name_or_path)


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def looks_like_path(name: str) -> bool:
    """Whether ``name`` can only be a folder, never a hub id.

    A hub id is ``name`` or ``owner/name`` (letters, digits, ``-``, ``_``, ``.``). A name is a
    path when it starts with ``.``, ``/`` or ``~``, has a drive letter or a backslash, has more
    than one ``/``, or is no valid hub id (a space, a ``--``...). ``owner/name`` shapes such as
    ``weights/run1`` are ambiguous: an existing folder wins, else the hub is asked, and the
    hub's error says that no such local folder exists either.
    """
    if name.startswith((".", "/", "~")) or "\\" in name or re.match(r"[A-Za-z]:", name):
        return True
    if os.sep != "/" and os.sep in name:
        return True
    if name.count("/") > 1:
        return True
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(name)
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return False
    except Exception:  # HFValidationError
        return True
    return False


def _missing_folder_message(name: str) -> str:
    return (f"model folder not found: {name} (train stage 1 first? pass --reward_model a trained folder, "
            "a hub id such as OpenGVLab/InternVL3-1B-hf, or 'tiny')")


def _no_config_message(folder: Path) -> str:
    hint = "it is not a model checkpoint"
    if (folder / "prm" / "config.json").exists():
        hint = f"a training checkpoint keeps its model in {folder / 'prm'}"
    elif (folder / "checkpoints").is_dir():
        done = sorted((folder / "checkpoints").glob("iter-*/prm/config.json"),
                      key=lambda p: int(re.sub(r"\D", "", p.parent.parent.name) or 0))
        hint = "the run has not exported a model yet"
        if done:
            hint += f"; its latest checkpoint's model is {done[-1].parent}"
    return f"model folder has no config.json: {folder} ({hint})"


def locate_model(name_or_path: str | os.PathLike) -> tuple[str, str]:
    """``("folder", path)`` or ``("hub", id)`` for a ``--reward_model`` value; ModelLoadError for a
    path-like name (see :func:`looks_like_path`) that is no folder holding a config.json."""
    name = str(name_or_path)
    if name == "tiny":
        return "folder", resolve_model_path(name)
    path = Path(name).expanduser()
    if path.exists() or looks_like_path(name):
        if not path.exists():
            raise ModelLoadError(_missing_folder_message(name))
        if not path.is_dir():
            raise ModelLoadError(f"not a model folder: {name} is a file (pass the folder that holds config.json)")
        if not (path / "config.json").is_file():
            raise ModelLoadError(_no_config_message(path))
        return "folder", str(path)
    return "hub", name


def _hub_error(name: str, e: BaseException) -> ModelLoadError:
    return ModelLoadError(
        f"cannot download {name} from the Hugging Face hub (offline?): {_first_line(e)} "
        f"(no local folder {name} exists either; pass a trained folder or 'tiny')")


def _hub_chat_snapshot(name: str) -> str | None:
    """The local snapshot folder of hub id ``name`` when it is a chat-layout checkpoint, else None
    (a native one is left to transformers' own download)."""
    from transformers.utils import cached_file

    from .convert import CHAT, ConversionError, detect_layout

    try:
        config_file = cached_file(name, "config.json")
    except Exception as e:  # OSError, requests/httpx and huggingface_hub errors
        raise _hub_error(name, e) from e
    try:
        layout = detect_layout(Path(config_file).parent)
    except ConversionError as e:
        raise ModelLoadError(f"{name}: {e}") from e
    if layout != CHAT:
        return None
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt", "*.model", "*.jinja"])
    except Exception as e:
        raise _hub_error(name, e) from e


def _load_chat(folder: str, shown: str, dtype, attn_implementation):
    from .convert import ConversionError, load_chat_as_native

    try:
        model, processor = load_chat_as_native(folder, dtype=dtype, attn_implementation=attn_implementation)
    except ConversionError as e:
        raise ModelLoadError(f"cannot load the chat-layout checkpoint {shown}: {e}") from e
    dst = f"{folder.rstrip('/')}-hf" if shown == folder else f"./{shown.rsplit('/', 1)[-1]}-hf"
    print(f"note: {shown} is in InternVL's chat layout; converted in memory (write a native copy once with: "
          f"python -m dreamprm.convert {folder} {dst})", file=sys.stderr)
    return model, processor


def _load_native(path: str, from_hub: bool, dtype, attn_implementation):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    kwargs = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        processor = AutoProcessor.from_pretrained(path)
    except Exception as e:
        if from_hub and isinstance(e, OSError):
            raise _hub_error(path, e) from e
        raise ModelLoadError(f"cannot load the model in {path} (damaged or incomplete files?): {_first_line(e)}") from e
    return model, processor


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


@dataclass
class Prefix:
    """A token prefix several sequences share, run once (:meth:`ProcessRewardModel.encode_prefix`):
    its ``length`` in tokens and the language model's key/value ``cache`` over it."""

    length: int
    cache: object


class ProcessRewardModel(nn.Module):
    """Wraps ``InternVLForConditionalGeneration`` and its processor; its parameters are the model's."""

    def __init__(self, model, processor):
        super().__init__()
        self.model = model
        self.processor = processor
        self.plus_id, self.minus_id = label_token_ids(processor.tokenizer)
        self.image_token_id = model.config.image_token_id
        self._towers = None  # (vision tower forward, language model) compiled by compile_towers(); not submodules

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        attn_implementation: str | None = "sdpa",
    ) -> "ProcessRewardModel":
        """Load a PRM from a folder, ``tiny`` or a hub id, in either checkpoint layout.

        A chat-layout checkpoint is converted in memory (a note on stderr says so). Anything that
        cannot be loaded raises :class:`ModelLoadError`: a path-like name that is no folder, a
        folder without config.json or of an unknown layout, a hub id that cannot be fetched,
        unreadable or corrupt files."""
        if precision not in DTYPES:
            raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
        from .convert import CHAT, ConversionError, detect_layout

        kind, path = locate_model(name_or_path)
        if kind == "hub":
            snapshot = _hub_chat_snapshot(path)
            if snapshot is not None:
                model, processor = _load_chat(snapshot, path, DTYPES[precision], attn_implementation)
                return cls(model, processor).to(device)
        else:
            try:
                layout = detect_layout(path)
            except ConversionError as e:
                raise ModelLoadError(str(e)) from e
            if layout == CHAT:
                model, processor = _load_chat(path, path, DTYPES[precision], attn_implementation)
                return cls(model, processor).to(device)
        model, processor = _load_native(path, kind == "hub", DTYPES[precision], attn_implementation)
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

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's weights (the precision it was loaded in)."""
        return self.model.dtype

    @property
    def max_length(self) -> int | None:
        """The longest sequence the language model was built for (``max_position_embeddings`` of
        its text config), or None when the config does not say."""
        config = self.model.config
        for cfg in (getattr(config, "text_config", None), getattr(config, "llm_config", None), config):
            n = getattr(cfg, "max_position_embeddings", None) if cfg is not None else None
            if isinstance(n, int) and n > 0:
                return n
        return None

    def compile_layers(self) -> None:
        """Regional ``torch.compile``: every vision and language decoder layer, in place.

        Layers of one kind share one compiled graph (their weights are graph inputs), sequence
        lengths are dynamic, so a run compiles a handful of graphs once instead of one per
        length. The gain is fused elementwise work and far fewer kernel launches; the numerics
        are those of the fused kernels (close to eager, not bit-identical)."""
        for layer in [*self.model.model.vision_tower.encoder.layer, *self.model.model.language_model.layers]:
            layer.compile(dynamic=True)

    def compile_towers(self) -> None:
        """Compile the training forward per tower for CUDA graphs: ``torch.compile(mode=
        "reduce-overhead", dynamic=True)`` of the vision tower and of the language model, as two
        separate callables.

        Each tower compiles once, for symbolic sizes (tiles, sequence length; one tile is
        specialised apart); on CUDA each distinct concrete shape is then captured once as a CUDA
        graph and replayed after, so a pass launches a few graphs instead of thousands of kernels.
        The shapes must repeat, hence the length buckets (``collate``'s ``pad_to_multiple_of``);
        tile counts repeat by themselves. The pixel shuffle, the projector and the image-token
        scatter run eagerly between the towers (the scatter checks the token count on the host,
        and the pixel shuffle's square root of a symbolic size does not trace). The weights stay
        graph inputs, read where they live, so the optimizer's and darts' in-place updates are
        seen. Only :meth:`forward` (training and the meta pass) uses them; scoring
        (:meth:`encode_prefix`, :meth:`step_probabilities`) stays eager. On the CPU the towers are
        compiled without graphs (the fused kernels only)."""
        mm = self.model.model
        compile_ = dict(mode="reduce-overhead" if self.device.type == "cuda" else "default", dynamic=True)
        self._towers = (torch.compile(mm.vision_tower.forward, **compile_),
                        torch.compile(mm.language_model, **compile_))

    # -- pieces -------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor, compiled: bool = False) -> torch.Tensor:
        """Vision tower + pixel shuffle + projector: (tiles × tokens_per_tile, hidden); ``compiled``:
        the vision tower through :meth:`compile_towers`' callable, for this call only."""
        cfg = self.model.config
        tower = self.model.model.vision_tower
        if compiled:
            tower.forward = self._towers[0]  # an instance attribute over the class's forward
        try:
            out = self.model.model.get_image_features(
                pixel_values=pixel_values.to(self.model.dtype),
                vision_feature_layer=cfg.vision_feature_layer,
                vision_feature_select_strategy=cfg.vision_feature_select_strategy,
            )
        finally:
            if compiled:
                del tower.forward
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

    def hidden_states(self, input_ids, attention_mask=None, pixel_values=None, image_features=None,
                      compiled: bool = False, **lm_kwargs):
        """The language model's last hidden states; ``compiled``: both towers through
        :meth:`compile_towers`' callables."""
        if image_features is None and pixel_values is not None:
            image_features = self.image_features(pixel_values, compiled)
        embeds = self.embed(input_ids, image_features)
        # The text config asks for a KV cache by default; scoring and training read every
        # position once, so building one only costs a concatenation per layer (and, under
        # --compile, a recompile). Callers that want it (the prefix cache) pass use_cache=True.
        lm_kwargs.setdefault("use_cache", False)
        language_model = self._towers[1] if compiled else self.model.model.language_model
        out = language_model(inputs_embeds=embeds, attention_mask=attention_mask, **lm_kwargs)
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

    # -- best-of-N scoring: a shared prefix run once, p(+) in the scoring dtype ------------
    def encode_prefix(self, input_ids: torch.Tensor, image_features: torch.Tensor | None = None) -> Prefix:
        """Run the token prefix ``input_ids`` (1, n) that several sequences share through the
        language model once and keep its key/value cache for :meth:`step_probabilities`.
        ``image_features``: the features of every image token in the prefix (None: text only)."""
        embeds = self.embed(input_ids, image_features)
        out = self.model.model.language_model(inputs_embeds=embeds, attention_mask=torch.ones_like(input_ids),
                                              use_cache=True)
        return Prefix(input_ids.shape[1], out.past_key_values)

    def step_probabilities(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        label_batch: torch.Tensor,
        label_pos: torch.Tensor,
        image_features: torch.Tensor | None = None,
        prefix: Prefix | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """p(+) at every label position of a batch of sequences that show one image (flattened,
        as ``label_batch``/``label_pos``): the LM head at the label positions only, then the
        softmax over the full vocabulary in ``dtype`` (default: the model's, with no upcast, as
        upstream's test code computes the step score). Returned in ``dtype``, on the device.

        ``image_features``: the one image's features, shared by every row. ``prefix`` (from
        :meth:`encode_prefix`): every row starts with that prefix, image included (then pass no
        ``image_features``), and only the tokens after it are run, on a copy of its cache; every
        label position must lie after it. ``attention_mask`` covers the whole rows either way."""
        bsz = input_ids.shape[0]
        if prefix is None:
            features = image_features.repeat(bsz, 1) if image_features is not None else None
            hidden = self.hidden_states(input_ids, attention_mask, image_features=features)
        else:
            if image_features is not None:
                raise ValueError("with a prefix the image is in its cache: pass no image_features")
            n = prefix.length
            if int(label_pos.min()) < n:
                raise ValueError("a label position falls inside the shared prefix")
            cache = copy.deepcopy(prefix.cache)
            if bsz > 1:
                cache.batch_repeat_interleave(bsz)
            suffix = input_ids[:, n:]
            embeds = self.embed(suffix, None)
            positions = torch.arange(n, n + suffix.shape[1], device=self.device).unsqueeze(0).expand(bsz, -1)
            hidden = self.model.model.language_model(
                inputs_embeds=embeds,
                attention_mask=attention_mask,  # full length: prefix (all ones) + suffix
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            ).last_hidden_state
            label_pos = label_pos - n
        logits = self.model.lm_head(hidden[label_batch, label_pos]).to(self.dtype if dtype is None else dtype)
        return logits.softmax(-1)[:, self.plus_id]

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
        compiled = self._towers is not None
        if compiled:  # a new pass: the previous pass's graph outputs have been consumed
            torch.compiler.cudagraph_mark_step_begin()
        hidden = self.hidden_states(input_ids, attention_mask, pixel_values, compiled=compiled)
        return self.label_outputs(hidden[label_batch, label_pos], label_batch)
