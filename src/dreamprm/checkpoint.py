"""Atomic, verified, resumable training checkpoints.

A checkpoint is a folder ``<weights_path>/checkpoints/iter-<N>/`` holding
- ``prm/``: the PRM and its processor (``save_pretrained``, safetensors),
- ``weight_model.safetensors``: the upper-level weight model,
- ``trainer_state.pt``: optimizers, schedulers, data-stream positions, RNG states, counters;
  only tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``,
- ``run_config.json``: what the run was made with (mode, model, data, training ids, sizes),
  compared by ``--resume`` before anything is loaded,
- ``manifest.json``, written last: every other file with its size and SHA-256.
It is written to a temporary folder and renamed into place, so a kill mid-write never leaves
a half checkpoint where ``--resume`` would look; ``--resume`` verifies the manifest and falls back
to the previous complete checkpoint when the latest one is damaged. After a save the newest
``keep`` checkpoints up to the one just written are kept; any with a higher iteration (an
abandoned continuation, e.g. after falling back) are removed.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

PATTERN = re.compile(r"^iter-(\d+)$")
MANIFEST = "manifest.json"
RUN_CONFIG = "run_config.json"


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is one line and says why."""


def checkpoint_dir(weights_path) -> Path:
    return Path(weights_path) / "checkpoints"


def checkpoint_iteration(path: Path) -> int:
    return int(PATTERN.match(Path(path).name).group(1))


def list_checkpoints(weights_path) -> list[Path]:
    root = checkpoint_dir(weights_path)
    if not root.is_dir() or root.is_symlink():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := PATTERN.match(p.name)) and p.is_dir() and not p.is_symlink()]
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path, iteration: int) -> None:
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in _files(folder)}
    (folder / MANIFEST).write_text(json.dumps({"iteration": iteration, "files": files}, indent=1) + "\n",
                                   encoding="utf-8")


def verify_checkpoint(path: Path) -> None:
    """Raise ``CheckpointError`` unless every file of the manifest is there, whole and unchanged."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        iteration = int(manifest["iteration"])
    except FileNotFoundError:
        raise CheckpointError(f"{path.name}: no {MANIFEST} (incomplete)") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path.name}: unreadable {MANIFEST}") from None
    if iteration != checkpoint_iteration(path):
        raise CheckpointError(f"{path.name}: its manifest says iteration {iteration}")
    for rel, meta in files.items():
        f = path / rel
        if not f.is_file() or f.is_symlink():
            raise CheckpointError(f"{path.name}: {rel} is missing")
        if f.stat().st_size != meta["size"]:
            raise CheckpointError(f"{path.name}: {rel} has {f.stat().st_size} bytes, expected {meta['size']}")
        if _sha256(f) != meta["sha256"]:
            raise CheckpointError(f"{path.name}: {rel} does not match its SHA-256 (damaged)")
    for required in ("prm/config.json", "trainer_state.pt", RUN_CONFIG):
        if required not in files:
            raise CheckpointError(f"{path.name}: {required} is missing")


def read_run_config(path: Path) -> dict:
    try:
        return json.loads((Path(path) / RUN_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise CheckpointError(f"{Path(path).name}: unreadable {RUN_CONFIG}") from None


def save_checkpoint(weights_path, iteration: int, prm, weight_model, trainer_state: dict, run_config: dict,
                    keep: int = 2) -> Path:
    root = checkpoint_dir(weights_path)
    if root.is_symlink():
        raise CheckpointError(f"{root} is a symbolic link; checkpoints are written only inside {weights_path}")
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"iter-{iteration:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-iter-{iteration:08d}-", dir=root))
    try:
        prm.save_pretrained(tmp / "prm")
        if weight_model is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in weight_model.state_dict().items()},
                      str(tmp / "weight_model.safetensors"))
        torch.save(dict(trainer_state, iteration=iteration, rng=rng_state()), tmp / "trainer_state.pt")
        (tmp / RUN_CONFIG).write_text(json.dumps(run_config, indent=1) + "\n", encoding="utf-8")
        write_manifest(tmp, iteration)
        if final.is_symlink():
            final.unlink()
        elif final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_checkpoints(weights_path, iteration, keep)
    return final


def prune_checkpoints(weights_path, current: int, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints up to iteration ``current`` (which is always kept)."""
    found = list_checkpoints(weights_path)
    older = [p for p in found if checkpoint_iteration(p) <= current]
    newer = [p for p in found if checkpoint_iteration(p) > current]
    for old in newer + older[:-max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)


def _to_model_keys(module: torch.nn.Module, state: dict) -> dict:
    """Map checkpoint keys to the module's own names.

    transformers >= 5 ``save_pretrained`` writes keys in the original checkpoint layout
    (reversing its load-time renamings, e.g. ``language_model.model.*`` for InternVL), so the
    same renamings ``from_pretrained`` applies are applied here. Tensors are never converted.
    """
    own = module.state_dict()
    if set(state) <= set(own):
        return state
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming, rename_source_key

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


REQUIRED_STATE = ("iteration", "rng", "train_stream", "lower")


def read_trainer_state(path: Path, bilevel: bool) -> dict:
    """``trainer_state.pt`` of a checkpoint, checked for the keys a resume needs."""
    try:
        state = torch.load(Path(path) / "trainer_state.pt", weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"{Path(path).name}: trainer_state.pt is missing") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise CheckpointError(f"{Path(path).name}: unreadable trainer_state.pt ({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{Path(path).name}: trainer_state.pt is not a state dictionary")
    needed = REQUIRED_STATE + (("upper", "meta_stream") if bilevel else ())
    missing = [k for k in needed if k not in state]
    if missing:
        raise CheckpointError(f"{Path(path).name}: trainer_state.pt lacks {', '.join(missing)}")
    it = state["iteration"]
    if not isinstance(it, int) or it != checkpoint_iteration(path):
        raise CheckpointError(f"{Path(path).name}: trainer_state.pt says iteration {it!r}")
    return state


def load_checkpoint(path: Path, prm, weight_model, state: dict) -> dict:
    """Restore model weights and RNG states in place; return the rest of ``state`` to apply."""
    try:
        load_model_weights(prm.model, path / "prm")
        if weight_model is not None:
            weight_model.load_state_dict(load_file(str(path / "weight_model.safetensors")))
    except (OSError, RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{Path(path).name}: cannot load its weights ({first})") from None
    state = dict(state)
    set_rng_state(state.pop("rng"))
    return state
