"""The output folder of one training run (``--weights_path``): checked, locked, never shared.

A run owns its folder for its whole lifetime through an OS-level lock (``fcntl.flock`` on
``.lock``): a second run on the same folder is refused at once, and a killed run's lock goes
away with its process. A new run refuses a folder that already holds another run's outputs
unless ``--resume`` (continue it) or ``--overwrite`` (replace it) is given; ``--overwrite``
removes only the files this project writes there, never anything else.

Every file is written through a temporary name created inside the folder (``O_EXCL``, so an
existing file or symlink of that name is never followed) and renamed over its target: paths
always resolve inside the folder and a kill mid-write never leaves a torn file. (The folder
itself may be a symbolic link, e.g. to a larger disk: that is the user's choice of place.)
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
import weakref
from pathlib import Path

from .checkpoint import checkpoint_dir, list_checkpoints

LOCK_NAME = ".lock"
# What a run writes at the top of its folder besides the exported model/processor files
# (those are listed in EXPORT_MANIFEST when they are written).
RUN_FILES = ("instance_weights.json", "train_args.json", "metrics.jsonl")
EXPORT_MANIFEST = "export_manifest.json"
# --save_best: the best evaluated model, in its own folder, marked by its BEST_INFO file
BEST_DIR = "best"
BEST_INFO = "best.json"
# Temporary names this project creates (tempfile's 8-character random suffix included), so a
# leftover of a killed run is recognised and nothing else is ever taken for one.
TEMPORARY = re.compile(r"^\.(export|tmp-.+)-[a-z0-9_]{8}$")


class RunFolderError(Exception):
    """A ``--weights_path`` that cannot be used; the message is one line."""


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


class RunFolder:
    """``--weights_path``: validated, created and locked by ``open()``; released by ``close()``."""

    def __init__(self, path):
        self.path = Path(path)
        self._release = None

    # -- checks, before any model loads -----------------------------------------------------
    def open(self) -> "RunFolder":
        p = self.path
        if p.exists() and not p.is_dir():
            raise RunFolderError(f"--weights_path {p} is a file, not a folder")
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunFolderError(f"cannot create --weights_path {p}: {exc.strerror or exc}") from None
        try:
            fd, probe = tempfile.mkstemp(prefix=".tmp-probe-", dir=p)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise RunFolderError(f"--weights_path {p} is not writable: {exc.strerror or exc}") from None
        self._lock()
        return self

    def _lock(self) -> None:
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f" (process {holder})" if holder else ""
                raise RunFolderError(f"another run is using --weights_path {self.path}{who}; wait for it to "
                                     "finish or choose another folder") from None
            raise RunFolderError(f"cannot lock --weights_path {self.path}: {exc.strerror or exc}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        # Closing the descriptor releases the flock; a RunFolder dropped without close() (a
        # Trainer that is never run) closes it when it is collected.
        self._release = weakref.finalize(self, os.close, fd)

    def close(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None

    # -- what is in the folder ----------------------------------------------------------------
    def previous_run(self) -> str | None:
        """A short description of another run's outputs in the folder, or None when there are none."""
        found = []
        ckpts = list_checkpoints(self.path)
        if ckpts:
            found.append(f"{_plural(len(ckpts), 'checkpoint')} (latest {ckpts[-1].name})")
        if (self.path / "config.json").exists() or any(self.path.glob("*.safetensors")):
            found.append("an exported model")
        found += [name for name in RUN_FILES if (self.path / name).exists()]
        if self._best_folder():
            found.append(f"a best model ({BEST_DIR}/)")
        return ", ".join(found) or None

    def _best_folder(self) -> bool:
        """Whether ``best/`` is a folder this project wrote (it holds ``best.json``)."""
        best = self.path / BEST_DIR
        return best.is_dir() and not best.is_symlink() and (best / BEST_INFO).is_file()

    def clean_temporaries(self) -> None:
        """Remove temporary folders/files a killed run of this project left (real ones, never symlinks)."""
        for root in (self.path, checkpoint_dir(self.path)):
            if not root.is_dir() or root.is_symlink():
                continue
            for entry in root.iterdir():
                if not TEMPORARY.match(entry.name) or entry.is_symlink():
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)

    def remove_previous_run(self) -> None:
        """``--overwrite``: remove what an earlier run of this project wrote here, nothing else."""
        for ckpt in list_checkpoints(self.path):
            shutil.rmtree(ckpt)
        for name in RUN_FILES + tuple(exported_files(self.path)) + (EXPORT_MANIFEST,):
            target = self.path / name
            if target.is_symlink() or target.is_file():
                target.unlink()
        for name in ("losses.png", "weights.png"):
            (self.path / "figs" / name).unlink(missing_ok=True)
        if self._best_folder():
            shutil.rmtree(self.path / BEST_DIR)
        self.clean_temporaries()


def exported_files(folder: Path) -> list[str]:
    """Names of the model/processor files the last export listed in ``export_manifest.json``."""
    try:
        names = json.loads((Path(folder) / EXPORT_MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [n for n in names if isinstance(n, str) and "/" not in n and n not in ("", ".", "..")]


def open_append(path: Path):
    """Open ``path`` for appending text without following a symlink there."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RunFolderError(f"{path} is a symbolic link; this run writes only inside its folder") from None
        raise
    return os.fdopen(fd, "a", encoding="utf-8")
