"""Convert InternVL checkpoints between the upstream *chat* layout and transformers' native layout.

Usage::

    python -m dreamprm.convert SRC DST [--direction to_hf|to_chat] [--dtype auto|float32|bfloat16|float16]
                                       [--remote_code_from DIR] [--overwrite]

* **chat layout** (``OpenGVLab/InternVL3-1B``, the released DreamPRM-1.5 checkpoints; loaded
  upstream with ``trust_remote_code``): ``config.json`` with ``architectures:
  ["InternVLChatModel"]``, ``vision_config``/``llm_config``, ``downsample_ratio``, ``template``...;
  weights ``vision_model.*`` (fused ``attn.qkv``), ``mlp1.{0,1,3}``, ``language_model.model.*``,
  ``language_model.lm_head.*``; a tokenizer with ``<img>``, ``</img>``, ``<IMG_CONTEXT>``.
* **native layout** (``OpenGVLab/InternVL3-1B-hf``): ``InternVLForConditionalGeneration``
  (``model_type: internvl``) written with ``save_pretrained`` (safetensors) plus an
  ``InternVLProcessor`` (GotOcr2 image processor with ``crop_to_patches``, ImageNet mean/std, a
  tokenizer carrying ``start_image_token``/``end_image_token``/``context_image_token``/``video_token``).

The direction defaults to the opposite of what SRC's ``config.json`` says it is.

Weights are renamed by the declarative table :data:`KEY_RULES` (chat template <-> native template,
both directions from the same row) and the vision attention's fused ``qkv`` is split into / fused
from ``q_proj``, ``k_proj``, ``v_proj`` (rows ``[0:d]``, ``[d:2d]``, ``[2d:3d]``, the order used by
InternViT and by transformers' own ``convert_internvl_weights_to_hf.py``). Native names are the
in-memory ``state_dict`` names of ``InternVLForConditionalGeneration`` (``model.vision_tower...``,
``lm_head...``); on-disk naming of the native layout is left to ``save_pretrained`` /
``from_pretrained``.

Chat-layout settings with no native counterpart (``template``, ``ps_version``, ``dynamic_image_size``,
``pad2square``, LoRA flags...) are kept under ``internvl_chat`` in the native ``config.json`` so that a
round trip gives the same chat config; ``max_dynamic_patch``/``min_dynamic_patch`` go to the image
processor's ``max_patches``/``min_patches``.

The upstream *Python* files (``modeling_internvl_chat.py``...) are not generated: pass
``--remote_code_from`` an original chat checkpoint to copy its ``*.py`` next to the converted
weights. Only Qwen2 and Llama language models are supported (InternLM2's fused ``wqkv`` is not).
Every failure is a :class:`ConversionError` whose one-line message names the folder and, where
there is one, the key; the CLI prints it without a traceback and exits with status 2 (a bad flag
too). The destination is checked before anything is read, so a busy DST fails at once.

:func:`load_chat_as_native` does the chat -> native direction in memory (no files written):
``ProcessRewardModel.from_pretrained`` uses it, so every command accepts a chat-layout folder.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

CHAT = "chat"
NATIVE = "native"

# ----------------------------------------------------------------------------------------------
# The mapping table. Placeholders: {L} layer index, {P} parameter name (weight|bias), {REST} any
# dotted tail. Each row is (chat template, native template); rows are tried in order.
# ----------------------------------------------------------------------------------------------
_VIT = "vision_model.encoder.layers.{L}"
_HFV = "model.vision_tower.encoder.layer.{L}"
KEY_RULES: list[tuple[str, str]] = [
    ("vision_model.embeddings.class_embedding", "model.vision_tower.embeddings.cls_token"),
    ("vision_model.embeddings.position_embedding", "model.vision_tower.embeddings.position_embeddings"),
    ("vision_model.embeddings.patch_embedding.{P}", "model.vision_tower.embeddings.patch_embeddings.projection.{P}"),
    (_VIT + ".attn.proj.{P}", _HFV + ".attention.projection_layer.{P}"),
    (_VIT + ".attn.q_norm.{P}", _HFV + ".attention.q_norm.{P}"),
    (_VIT + ".attn.k_norm.{P}", _HFV + ".attention.k_norm.{P}"),
    (_VIT + ".mlp.fc1.{P}", _HFV + ".mlp.fc1.{P}"),
    (_VIT + ".mlp.fc2.{P}", _HFV + ".mlp.fc2.{P}"),
    (_VIT + ".norm1.{P}", _HFV + ".layernorm_before.{P}"),
    (_VIT + ".norm2.{P}", _HFV + ".layernorm_after.{P}"),
    (_VIT + ".ls1", _HFV + ".lambda_1"),
    (_VIT + ".ls2", _HFV + ".lambda_2"),
    ("mlp1.0.{P}", "model.multi_modal_projector.layer_norm.{P}"),
    ("mlp1.1.{P}", "model.multi_modal_projector.linear_1.{P}"),
    ("mlp1.3.{P}", "model.multi_modal_projector.linear_2.{P}"),
    ("language_model.model.{REST}", "model.language_model.{REST}"),
    ("language_model.lm_head.{P}", "lm_head.{P}"),
]
# Fused rows: one chat tensor <-> several native tensors, concatenated along dim 0 in this order.
FUSED_RULES: list[tuple[str, tuple[str, ...]]] = [
    (_VIT + ".attn.qkv.{P}", (_HFV + ".attention.q_proj.{P}", _HFV + ".attention.k_proj.{P}", _HFV + ".attention.v_proj.{P}")),
]

_PLACEHOLDERS = {"L": r"\d+", "P": r"weight|bias", "REST": r".+"}


def _compile(template: str) -> re.Pattern:
    out, pos = "", 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out += re.escape(template[pos : m.start()]) + f"(?P<{m.group(1)}>{_PLACEHOLDERS[m.group(1)]})"
        pos = m.end()
    return re.compile(out + re.escape(template[pos:]) + r"\Z")


_RULES_C = [(_compile(c), c, _compile(n), n) for c, n in KEY_RULES]
_FUSED_C = [(_compile(c), c, [(_compile(n), n) for n in ns], ns) for c, ns in FUSED_RULES]

# llm_config / text_config keys that belong to the upstream training code, not to the model.
_LLM_DROP = {
    "_name_or_path", "_attn_implementation_autoset", "auto_map", "use_bfloat16", "use_flash_attn",
    "attn_implementation", "bias", "laux_allreduce", "moe_coeff_ratio", "moe_intermediate_size",
    "moe_output_scale", "noisy_gate_policy", "shared_expert_intermediate_size", "use_residual",
    "use_moe", "use_rts", "use_weighted_residual", "moe_config", "num_experts", "num_routed_experts",
    "num_shared_experts", "capacity_factor", "eval_capacity_factor", "drop_path_rate",
    "transformers_version", "torch_dtype", "dtype", "architectures",
}
# generic PretrainedConfig defaults that only clutter a written llm_config
_LLM_NOISE = {"id2label", "label2id", "output_attentions", "output_hidden_states", "return_dict", "problem_type",
              "chunk_size_feed_forward", "is_encoder_decoder", "layer_types"}
_LLM_ARCH = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama"}
_CHAT_EXTRAS = ("template", "ps_version", "dynamic_image_size", "use_thumbnail", "pad2square",
                "use_backbone_lora", "use_llm_lora", "system_message")
IMAGE_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# The InternVL ChatML template as a Jinja chat template (images as "<image>\n" placeholders).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}"
)
_DTYPES = ("auto", "float32", "bfloat16", "float16")


class ConversionError(Exception):
    """A conversion failure, with a one-line message naming the folder and the key."""

    def __init__(self, message: str):
        super().__init__(re.sub(r"\s*\n\s*", " ", str(message)).strip())


# ----------------------------------------------------------------------------------------------
# key mapping
# ----------------------------------------------------------------------------------------------
def chat_key_to_native(key: str) -> list[str] | None:
    """Native name(s) of a chat-layout key (several for a fused tensor); None if unknown."""
    for pat, _, npairs, _ in _FUSED_C:
        m = pat.match(key)
        if m:
            return [n.format(**m.groupdict()) for _, n in npairs]
    for cpat, _, _, ntpl in _RULES_C:
        m = cpat.match(key)
        if m:
            return [ntpl.format(**m.groupdict())]
    return None


def native_key_to_chat(key: str) -> tuple[str, int] | None:
    """(chat name, index within the fused tensor or -1) of a native key; None if unknown."""
    for _, ctpl, npairs, _ in _FUSED_C:
        for i, (npat, _) in enumerate(npairs):
            m = npat.match(key)
            if m:
                return ctpl.format(**m.groupdict()), i
    for _, ctpl, npat, _ in _RULES_C:
        m = npat.match(key)
        if m:
            return ctpl.format(**m.groupdict()), -1
    return None


def chat_to_native_state_dict(sd: dict, where: str = "<state dict>") -> dict:
    out = {}
    for key, tensor in sd.items():
        names = chat_key_to_native(key)
        if names is None:
            raise ConversionError(f"{where}: unrecognised chat-layout weight key '{key}'")
        if len(names) == 1:
            out[names[0]] = tensor
            continue
        if tensor.shape[0] % len(names):
            raise ConversionError(f"{where}: fused key '{key}' has {tensor.shape[0]} rows, not a multiple of {len(names)}")
        for name, part in zip(names, tensor.chunk(len(names), dim=0)):
            out[name] = part.contiguous()
    return out


def native_to_chat_state_dict(sd: dict, where: str = "<state dict>") -> dict:
    import torch

    out, fused = {}, {}
    for key, tensor in sd.items():
        hit = native_key_to_chat(key)
        if hit is None:
            raise ConversionError(f"{where}: unrecognised native weight key '{key}'")
        name, idx = hit
        if idx < 0:
            out[name] = tensor
        else:
            fused.setdefault(name, {})[idx] = tensor
    for name, parts in fused.items():
        pat, _, _, ntpls = next(f for f in _FUSED_C if f[0].match(name))
        for i, ntpl in enumerate(ntpls):
            if i not in parts:
                want = ntpl.format(**pat.match(name).groupdict())
                raise ConversionError(f"{where}: missing key '{want}' (needed to build '{name}')")
        out[name] = torch.cat([parts[i] for i in range(len(ntpls))], dim=0).contiguous()
    return out


# ----------------------------------------------------------------------------------------------
# reading folders
# ----------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConversionError(f"{path.parent}: no {path.name}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path.parent}: {path.name} is not valid JSON ({e})") from None
    except OSError as e:
        raise ConversionError(f"{path.parent}: cannot read {path.name} ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path.parent}: {path.name} is not a JSON object")
    return data


def detect_layout(folder: str | Path) -> str:
    """'chat' or 'native' from ``config.json``; ConversionError otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError(f"{folder}: not a folder")
    cfg = _read_json(folder / "config.json")
    arch = cfg.get("architectures") or []
    if "InternVLChatModel" in arch or cfg.get("model_type") == "internvl_chat":
        return CHAT
    if cfg.get("model_type") == "internvl" or "InternVLForConditionalGeneration" in arch:
        return NATIVE
    raise ConversionError(
        f"{folder}: unknown checkpoint layout (config.json key 'model_type'={cfg.get('model_type')!r}, "
        f"'architectures'={arch!r}; expected InternVLChatModel or InternVLForConditionalGeneration)"
    )


def _shard_path(folder: Path, name: str, index_name: str) -> Path:
    """The file a weight index names, refused unless it lies inside ``folder``.

    An index is data from whoever made the checkpoint: an absolute name, a ``..`` component or a
    symlink resolving outside the folder would read a file the checkpoint does not contain.
    One exception, the Hugging Face hub cache: a snapshot folder (``.../snapshots/<revision>/``)
    holds symlinks into the repository's own ``blobs/`` folder, and those are accepted.
    """
    windows_abs = re.match(r"[A-Za-z]:", name) is not None
    parts = re.split(r"[\\/]", name)
    if not name or name.startswith(("/", "\\", "~")) or windows_abs or ".." in parts or Path(name).is_absolute():
        raise ConversionError(f"{folder}: {index_name} names weight file '{name}' outside the folder; refusing to read it")
    path = folder / name
    real, root = path.resolve(), folder.resolve()
    blobs = (folder.parent.parent / "blobs").resolve() if folder.parent.name == "snapshots" else None
    if not (real.is_relative_to(root) or (blobs is not None and real.is_relative_to(blobs))):
        raise ConversionError(
            f"{folder}: weight file '{name}' (listed in {index_name}) is a link to {real}, outside the folder; "
            "refusing to read it")
    return path


def load_chat_state_dict(folder: str | Path) -> dict:
    """All tensors of a chat-layout folder (safetensors, sharded or not; else pytorch_model.bin)."""
    import torch
    from safetensors.torch import load_file

    folder = Path(folder)
    for index_name, loader in (("model.safetensors.index.json", "st"), ("pytorch_model.bin.index.json", "pt")):
        if (folder / index_name).exists():
            weight_map = _read_json(folder / index_name).get("weight_map", {})
            if not isinstance(weight_map, dict):
                raise ConversionError(f"{folder}: {index_name} key 'weight_map' is not an object")
            files = [_shard_path(folder, name, index_name) for name in sorted(set(map(str, weight_map.values())))]
            break
    else:
        if (folder / "model.safetensors").exists():
            files, loader = [folder / "model.safetensors"], "st"
        elif (folder / "pytorch_model.bin").exists():
            files, loader = [folder / "pytorch_model.bin"], "pt"
        else:
            raise ConversionError(f"{folder}: no weights (model.safetensors, its index, or pytorch_model.bin)")
    sd = {}
    for f in files:
        if not f.exists():
            raise ConversionError(f"{folder}: weight shard '{f.name}' listed in the index is missing")
        try:
            part = load_file(str(f)) if loader == "st" else torch.load(str(f), map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt file
            raise ConversionError(f"{folder}: cannot read '{f.name}' ({_one_line(e)})") from None
        sd.update(part)
    return sd


def _torch_dtype(name: str):
    import torch

    if name not in _DTYPES:
        raise ConversionError(f"unknown --dtype {name!r} (choose from {', '.join(_DTYPES)})")
    return None if name == "auto" else getattr(torch, name)


def _check_dst(dst: Path, overwrite: bool, src: Path) -> None:
    """Refuse an unusable destination before any weight is read (a big checkpoint takes minutes)."""
    if dst.resolve() == src.resolve():
        raise ConversionError(f"{dst}: destination is the source folder")
    if dst.exists() and not dst.is_dir():
        raise ConversionError(f"{dst}: destination exists and is not a folder")
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise ConversionError(f"{dst}: destination exists and is not empty (pass --overwrite)")


def _make_dst(dst: Path) -> None:
    try:
        dst.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConversionError(f"{dst}: cannot create the destination ({e.strerror or e})") from None


# ----------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------
def _as_int(x):
    return int(x[0]) if isinstance(x, (list, tuple)) else int(x)


def chat_config_to_native(chat: dict, image_token_id: int, folder: str = "<config>"):
    """A ``transformers.InternVLConfig`` equivalent to an ``InternVLChatConfig`` dict."""
    from transformers import InternVLConfig

    try:
        vc, lc = dict(chat["vision_config"]), dict(chat["llm_config"])
    except KeyError as e:
        raise ConversionError(f"{folder}: config.json has no key {e.args[0]!r}") from None
    except (TypeError, ValueError):
        raise ConversionError(f"{folder}: config.json keys 'vision_config' and 'llm_config' must be objects") from None
    arch = (lc.get("architectures") or [None])[0]
    if arch not in _LLM_ARCH:
        raise ConversionError(f"{folder}: config.json key 'llm_config.architectures' is {arch!r}; supported: {sorted(_LLM_ARCH)}")
    if chat.get("ps_version", "v2") != "v2":
        raise ConversionError(f"{folder}: config.json key 'ps_version' is {chat.get('ps_version')!r}; the native model implements 'v2' only")
    for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "patch_size"):
        if k not in vc:
            raise ConversionError(f"{folder}: config.json has no key 'vision_config.{k}'")
    try:
        image_size = _as_int(chat.get("force_image_size") or vc.get("image_size", 448))
        patch = _as_int(vc["patch_size"])
        ratio = float(chat.get("downsample_ratio", 0.5))
    except (TypeError, ValueError, IndexError) as e:
        raise ConversionError(
            f"{folder}: config.json has a malformed 'force_image_size', 'vision_config.patch_size' or "
            f"'downsample_ratio' ({_one_line(e)})") from None
    vision = dict(
        hidden_size=vc["hidden_size"], num_hidden_layers=vc["num_hidden_layers"],
        num_attention_heads=vc["num_attention_heads"], intermediate_size=vc["intermediate_size"],
        hidden_act=vc.get("hidden_act", "gelu"), layer_norm_eps=vc.get("layer_norm_eps", 1e-6),
        norm_type=vc.get("norm_type", "rms_norm"), num_channels=vc.get("num_channels", 3),
        image_size=image_size, patch_size=patch, attention_bias=bool(vc.get("qkv_bias", False)),
        use_qk_norm=bool(vc.get("qk_normalization", False)),
        attention_dropout=vc.get("attention_dropout", 0.0), projection_dropout=vc.get("attention_dropout", 0.0),
        hidden_dropout_prob=vc.get("dropout", 0.0), initializer_range=vc.get("initializer_range", 0.02),
        layer_scale_init_value=vc.get("initializer_factor", 0.1),
        use_mean_pooling=True, use_absolute_position_embeddings=True,
    )
    text = {k: v for k, v in _rope_from_chat(lc).items() if k not in _LLM_DROP}
    text["model_type"] = _LLM_ARCH[arch]
    tie = bool(lc.get("tie_word_embeddings", chat.get("tie_word_embeddings", False)))
    extras = {k: chat[k] for k in _CHAT_EXTRAS if k in chat}
    try:
        return InternVLConfig(
            vision_config=vision, text_config=text, image_token_id=image_token_id,
            image_seq_length=int((image_size // patch) ** 2 * ratio**2), downsample_ratio=ratio,
            projector_hidden_act="gelu", vision_feature_layer=int(chat.get("select_layer", -1)),
            tie_word_embeddings=tie, architectures=["InternVLForConditionalGeneration"], internvl_chat=extras,
        )
    except Exception as e:  # strict config validation
        raise ConversionError(f"{folder}: config.json cannot be expressed natively ({type(e).__name__}: {e})") from None


def _rope_to_chat(rope: dict | None, scaling: dict | None = None) -> dict:
    """transformers 5 ``rope_parameters`` as the fields upstream's pinned transformers (4.49) reads.

    4.49's Qwen2/Llama configs take ``rope_theta`` as a top-level field and a scaled rotary
    embedding as ``rope_scaling = {"rope_type": ..., "factor": ..., ...}`` (``None`` for plain
    RoPE); ``type`` is written beside ``rope_type`` for versions before 4.43, which read that name.
    """
    rope = dict(rope or scaling or {})
    if rope and all(isinstance(v, dict) or v is None for v in rope.values()):
        raise ConversionError("<config>: per-layer-type rope_parameters have no chat-layout counterpart")
    out: dict = {}
    if "rope_theta" in rope:
        out["rope_theta"] = rope.pop("rope_theta")
    if "partial_rotary_factor" in rope:
        out["partial_rotary_factor"] = rope.pop("partial_rotary_factor")
    kind = rope.pop("rope_type", None) or rope.pop("type", None) or "default"
    rope.pop("type", None)
    out["rope_scaling"] = None if kind == "default" else {"rope_type": kind, "type": kind, **rope}
    return out


def _rope_from_chat(lc: dict) -> dict:
    """A chat ``llm_config``'s ``rope_scaling`` with one type key (``rope_type``), as transformers 5 expects."""
    scaling = lc.get("rope_scaling")
    if isinstance(scaling, dict):
        scaling = dict(scaling)
        kind = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
        scaling.pop("type", None)
        lc = {**lc, "rope_scaling": {"rope_type": kind, **scaling}}
    return lc


def native_config_to_chat(cfg, max_patches: int = 12, min_patches: int = 1, dtype: str | None = None) -> dict:
    """An ``InternVLChatConfig``-shaped dict (what upstream remote code reads) from an InternVLConfig."""
    v, t = cfg.vision_config, cfg.text_config
    arch = {m: a for a, m in _LLM_ARCH.items()}.get(t.model_type)
    if arch is None:
        raise ConversionError(f"<config>: text_config.model_type {t.model_type!r} has no chat-layout counterpart")
    if not v.use_mean_pooling:
        raise ConversionError("<config>: vision_config.use_mean_pooling=false (a final vision layernorm) has no chat-layout counterpart")
    llm = {k: val for k, val in t.to_dict().items() if k not in _LLM_DROP and k not in _LLM_NOISE}
    llm["architectures"] = [arch]
    llm.update(_rope_to_chat(llm.pop("rope_parameters", None), llm.pop("rope_scaling", None)))
    image_size = _as_int(v.image_size)
    vision = dict(
        architectures=["InternVisionModel"], model_type="intern_vit_6b", hidden_size=v.hidden_size,
        num_hidden_layers=v.num_hidden_layers, num_attention_heads=v.num_attention_heads,
        intermediate_size=v.intermediate_size, hidden_act=v.hidden_act, layer_norm_eps=v.layer_norm_eps,
        norm_type=v.norm_type, num_channels=v.num_channels, image_size=image_size, patch_size=_as_int(v.patch_size),
        qkv_bias=v.attention_bias, qk_normalization=v.use_qk_norm, attention_dropout=v.attention_dropout,
        dropout=v.hidden_dropout_prob, drop_path_rate=0.0, initializer_range=v.initializer_range,
        initializer_factor=v.layer_scale_init_value, use_flash_attn=False,
    )
    extras = dict(getattr(cfg, "internvl_chat", None) or {})
    chat = {
        "architectures": ["InternVLChatModel"],
        "auto_map": {
            "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
            "AutoModel": "modeling_internvl_chat.InternVLChatModel",
            "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
        },
        "model_type": "internvl_chat",
        "downsample_ratio": cfg.downsample_ratio,
        "force_image_size": image_size,
        "select_layer": cfg.vision_feature_layer,
        "template": "internvl2_5",
        "ps_version": "v2",
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "pad2square": False,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "max_dynamic_patch": int(max_patches),
        "min_dynamic_patch": int(min_patches),
        "tie_word_embeddings": bool(cfg.tie_word_embeddings),
        "llm_config": llm,
        "vision_config": vision,
    }
    chat.update(extras)
    if dtype:
        chat["torch_dtype"] = dtype
        llm["torch_dtype"] = dtype
    return chat


# ----------------------------------------------------------------------------------------------
# tokenizer / processor
# ----------------------------------------------------------------------------------------------
def _load_tokenizer(folder: Path):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a chat config.json makes AutoTokenizer warn about its model_type
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), extra_special_tokens=dict(IMAGE_TOKENS), trust_remote_code=False)
    except Exception as e:
        raise ConversionError(f"{folder}: cannot load the tokenizer ({_one_line(e)})") from None
    finally:
        hf_logging.set_verbosity(level)
    vocab = tok.get_vocab()
    for attr, token in IMAGE_TOKENS.items():
        if token not in vocab:
            if attr == "video_token":  # unused by InternVL3 image inputs; the processor needs one
                tok.add_special_tokens({"additional_special_tokens": [token]}, replace_extra_special_tokens=False)
            else:
                raise ConversionError(f"{folder}: tokenizer has no special token '{token}' (key '{attr}')")
    return tok


def _write_slow_vocab(tok, dst: Path) -> None:
    """vocab.json + merges.txt next to tokenizer.json, for upstream code that loads use_fast=False."""
    tj = dst / "tokenizer.json"
    if not tj.exists():
        return
    model = json.loads(tj.read_text()).get("model", {})
    if model.get("type") != "BPE":
        return
    if not (dst / "vocab.json").exists():
        (dst / "vocab.json").write_text(json.dumps(model.get("vocab", {}), ensure_ascii=False))
    if not (dst / "merges.txt").exists():
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        (dst / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))


# ----------------------------------------------------------------------------------------------
# the two directions
# ----------------------------------------------------------------------------------------------
def _chat_checkpoint(src: Path, tdtype=None):
    """What a chat-layout folder holds, in native terms, checked key by key and shape by shape.

    Returns (chat config dict, tokenizer, ``InternVLConfig``, native state dict, the model built
    on the meta device); with ``tdtype`` the floating tensors are cast to it.
    """
    import torch
    from transformers import InternVLForConditionalGeneration

    chat = _read_json(src / "config.json")
    tok = _load_tokenizer(src)
    config = chat_config_to_native(chat, tok.convert_tokens_to_ids(IMAGE_TOKENS["context_image_token"]), str(src))
    sd = chat_to_native_state_dict(load_chat_state_dict(src), str(src))
    if tdtype is not None:
        sd = {k: (v.to(tdtype) if v.is_floating_point() else v) for k, v in sd.items()}
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    expected = model.state_dict()
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        sd.pop("lm_head.weight", None)
    for k in expected:
        if k not in sd:
            back = native_key_to_chat(k)
            raise ConversionError(f"{src}: missing key '{back[0] if back else k}'")
    for k, v in sd.items():
        if k not in expected:
            back = native_key_to_chat(k)
            raise ConversionError(f"{src}: unexpected key '{back[0] if back else k}' for this config")
        if tuple(v.shape) != tuple(expected[k].shape):
            back = native_key_to_chat(k)
            raise ConversionError(
                f"{src}: key '{back[0] if back else k}' has shape {tuple(v.shape)}, config expects {tuple(expected[k].shape)}")
    dtypes = {v.dtype for v in sd.values() if v.is_floating_point()}
    if len(dtypes) == 1:
        config.dtype = str(next(iter(dtypes))).replace("torch.", "")
    return chat, tok, config, sd, model


def _native_processor(chat: dict, tok, config):
    """The ``InternVLProcessor`` of a chat checkpoint: its tokenizer, InternVL's tiling and normalisation."""
    from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

    image_size = _as_int(config.vision_config.image_size)
    image_processor = GotOcr2ImageProcessor(
        crop_to_patches=True, min_patches=int(chat.get("min_dynamic_patch", 1)),
        max_patches=int(chat.get("max_dynamic_patch", 12)), size={"height": image_size, "width": image_size},
        image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_convert_rgb=True,
    )
    if not getattr(tok, "chat_template", None):
        tok.chat_template = CHAT_TEMPLATE
    video_processor = InternVLVideoProcessor(
        size={"height": image_size, "width": image_size}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    return InternVLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                             image_seq_length=config.image_seq_length, chat_template=CHAT_TEMPLATE)


def _require_chat(src: Path) -> None:
    if detect_layout(src) != CHAT:
        raise ConversionError(f"{src}: not a chat-layout checkpoint (config.json model_type is 'internvl'); use --direction to_chat")


def convert_to_hf(src: str | Path, dst: str | Path, dtype: str = "auto", overwrite: bool = False) -> Path:
    """Chat layout -> native ``InternVLForConditionalGeneration`` + ``InternVLProcessor`` in ``dst``."""
    src, dst = Path(src), Path(dst)
    _require_chat(src)
    tdtype = _torch_dtype(dtype)
    _check_dst(dst, overwrite, src)
    chat, tok, config, sd, model = _chat_checkpoint(src, tdtype)
    model.load_state_dict(sd, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    _make_dst(dst)
    model.save_pretrained(str(dst), safe_serialization=True)
    _native_processor(chat, tok, config).save_pretrained(str(dst))
    return dst


def load_chat_as_native(src: str | Path, dtype=None, attn_implementation: str | None = None):
    """(model, processor) of a chat-layout folder, converted in memory; nothing is written.

    The model is the ``InternVLForConditionalGeneration`` that ``convert_to_hf`` followed by
    ``from_pretrained`` gives (same tensors, config and buffers), in ``dtype`` (a torch dtype;
    None keeps the stored one); the processor is the one ``convert_to_hf`` writes. Errors are
    ``ConversionError`` with a one-line message.
    """
    from transformers import InternVLForConditionalGeneration

    src = Path(src)
    _require_chat(src)
    try:
        chat, tok, config, sd, _ = _chat_checkpoint(src, dtype)
        config._name_or_path = str(src)
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model = InternVLForConditionalGeneration.from_pretrained(
            None, config=config, state_dict=sd, dtype=dtype if dtype is not None else "auto", **kwargs)
        processor = _native_processor(chat, tok, config)
    except ConversionError:
        raise
    except Exception as e:
        raise ConversionError(f"{src}: cannot convert the chat-layout checkpoint ({_one_line(e)})") from e
    return model, processor


def convert_to_chat(src: str | Path, dst: str | Path, dtype: str = "auto", overwrite: bool = False,
                    remote_code_from: str | Path | None = None) -> Path:
    """Native layout -> chat layout (config.json, model.safetensors, tokenizer files) in ``dst``."""
    from safetensors.torch import save_file
    from transformers import InternVLForConditionalGeneration

    src, dst = Path(src), Path(dst)
    if detect_layout(src) != NATIVE:
        raise ConversionError(f"{src}: not a native-layout checkpoint (config.json says InternVLChatModel); use --direction to_hf")
    tdtype = _torch_dtype(dtype)
    _check_dst(dst, overwrite, src)
    code_files = []
    if remote_code_from is not None:
        rc = Path(remote_code_from)
        code_files = sorted(rc.glob("*.py")) if rc.is_dir() else []
        if not code_files:
            raise ConversionError(f"{rc}: no upstream *.py files to copy (--remote_code_from)")
    try:
        model = InternVLForConditionalGeneration.from_pretrained(str(src), dtype=tdtype if tdtype is not None else "auto")
    except Exception as e:
        raise ConversionError(f"{src}: cannot load the native model ({_one_line(e)})") from None
    tok = _load_tokenizer(src)
    max_p, min_p = 12, 1
    pc = src / "processor_config.json"
    ipc = _read_json(pc).get("image_processor", {}) if pc.exists() else {}
    if not ipc and (src / "preprocessor_config.json").exists():
        ipc = _read_json(src / "preprocessor_config.json")
    max_p, min_p = ipc.get("max_patches", max_p), ipc.get("min_patches", min_p)
    sd = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    chat_sd = native_to_chat_state_dict(sd, str(src))
    if model.config.tie_word_embeddings:  # upstream reads an explicit head; tying happens from the config
        chat_sd["language_model.lm_head.weight"] = chat_sd["language_model.model.embed_tokens.weight"]
    chat_sd = {k: v.clone().contiguous() for k, v in chat_sd.items()}
    dtypes = {v.dtype for v in chat_sd.values() if v.is_floating_point()}
    dname = str(next(iter(dtypes))).replace("torch.", "") if len(dtypes) == 1 else None
    chat = native_config_to_chat(model.config, max_p, min_p, dname)
    _make_dst(dst)
    save_file(chat_sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(chat, indent=2, sort_keys=True) + "\n")
    tok.save_pretrained(str(dst))
    _write_slow_vocab(tok, dst)
    for f in code_files:
        shutil.copy2(f, dst / f.name)
    return dst


def convert(src, dst, direction: str | None = None, dtype: str = "auto", overwrite: bool = False,
            remote_code_from=None) -> Path:
    """Convert ``src`` into ``dst``; ``direction`` None means the opposite of SRC's layout.

    Every failure is a ``ConversionError`` with a one-line message: a file that cannot be
    written names the file, anything unexpected names SRC and the exception (chained)."""
    try:
        if direction is None:
            direction = "to_hf" if detect_layout(src) == CHAT else "to_chat"
        if direction == "to_hf":
            return convert_to_hf(src, dst, dtype=dtype, overwrite=overwrite)
        if direction == "to_chat":
            return convert_to_chat(src, dst, dtype=dtype, overwrite=overwrite, remote_code_from=remote_code_from)
    except ConversionError:
        raise
    except OSError as e:
        where = e.filename or dst
        raise ConversionError(f"{where}: {e.strerror or _one_line(e)}") from e
    except Exception as e:
        raise ConversionError(f"{src}: conversion failed ({_one_line(e)})") from e
    raise ConversionError(f"unknown direction {direction!r} (to_hf or to_chat)")


def _one_line(e: BaseException) -> str:
    """``Type: first line of the message`` (transformers' messages run over several lines)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (``error: ...``, exit status 2), like every other error."""

    def error(self, message):
        self.exit(2, f"error: {message} (see python -m dreamprm.convert --help)\n")


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(prog="python -m dreamprm.convert", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="checkpoint folder to read")
    ap.add_argument("dst", help="folder to write")
    ap.add_argument("--direction", choices=["to_hf", "to_chat"], default=None,
                    help="default: to_hf for a chat-layout SRC, to_chat for a native one")
    ap.add_argument("--dtype", choices=_DTYPES, default="auto", help="weight dtype to write (auto: as stored)")
    ap.add_argument("--remote_code_from", default=None,
                    help="(to_chat) copy the upstream *.py remote-code files from this folder")
    ap.add_argument("--overwrite", action="store_true", help="allow a non-empty DST")
    args = ap.parse_args(argv)
    try:
        out = convert(args.src, args.dst, args.direction, args.dtype, args.overwrite, args.remote_code_from)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: interrupted; {args.dst} may hold a partial checkpoint", file=sys.stderr)
        return 130
    print(f"wrote {out} ({detect_layout(out)} layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
