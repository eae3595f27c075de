"""Atomic, resumable training checkpoints.

A checkpoint is a folder ``<weights_path>/checkpoints/iter-<N>/`` holding
- ``prm/``: the PRM and its processor (``save_pretrained``, safetensors),
- ``weight_model.safetensors``: the upper-level weight model,
- ``trainer_state.pt``: optimizers, schedulers, data-stream positions, RNG states, counters;
  only tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``.
It is written to a temporary folder and renamed into place, so a kill mid-write never leaves
a half checkpoint where ``--resume`` would look. The newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

PATTERN = re.compile(r"^iter-(\d+)$")


def checkpoint_dir(weights_path) -> Path:
    return Path(weights_path) / "checkpoints"


def list_checkpoints(weights_path) -> list[Path]:
    root = checkpoint_dir(weights_path)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := PATTERN.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(weights_path) -> Path | None:
    found = list_checkpoints(weights_path)
    return found[-1] if found else None


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(weights_path, iteration: int, prm, weight_model, trainer_state: dict, keep: int = 2) -> Path:
    root = checkpoint_dir(weights_path)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"iter-{iteration:08d}"
    tmp = root / f".tmp-iter-{iteration:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    prm.save_pretrained(tmp / "prm")
    if weight_model is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in weight_model.state_dict().items()},
                  str(tmp / "weight_model.safetensors"))
    torch.save(dict(trainer_state, iteration=iteration, rng=rng_state()), tmp / "trainer_state.pt")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(weights_path)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _to_model_keys(module: torch.nn.Module, state: dict) -> dict:
    """Map checkpoint keys to the module's own names.

    transformers >= 5 ``save_pretrained`` writes keys in the original checkpoint layout
    (reversing its load-time renamings, e.g. ``language_model.model.*`` for InternVL), so the
    same renamings ``from_pretrained`` applies are applied here. Tensors are never converted.
    """
    own = module.state_dict()
    if set(state) <= set(own):
        return state
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key
    except ImportError:  # older transformers save the module's own names
        return state
    transforms = get_model_conversion_mapping(module)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if not isinstance(t, WeightRenaming)]
    prefix = getattr(module, "base_model_prefix", None) or None
    out = {}
    for key, value in state.items():
        new_key, converted = rename_source_key(key, renamings, converters, prefix, own)
        if converted is not None:
            raise RuntimeError(f"checkpoint key {key!r} needs a tensor conversion; load it with from_pretrained")
        out[new_key] = value
    return out


def load_model_weights(module: torch.nn.Module, folder: Path) -> None:
    """Load safetensors shards written by ``save_pretrained`` into an existing model, strictly."""
    state = {}
    for shard in sorted(Path(folder).glob("*.safetensors")):
        state.update(load_file(str(shard)))
    state = _to_model_keys(module, state)
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in getattr(module, "_tied_weights_keys", {}) or {}]
    if missing or unexpected:
        raise RuntimeError(f"{folder}: checkpoint does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def load_checkpoint(path: Path, prm, weight_model) -> dict:
    """Restore model weights in place; return the trainer state (optimizers etc.) to apply."""
    load_model_weights(prm.model, path / "prm")
    if weight_model is not None:
        weight_model.load_state_dict(load_file(str(path / "weight_model.safetensors")))
    state = torch.load(path / "trainer_state.pt", weights_only=True, map_location="cpu")
    set_rng_state(state.pop("rng"))
    return state
