"""Reading records from .json (a list) or .jsonl (one object per line) files, with locations.

Each record comes with ``"FILE:N"``: the line for .jsonl, the 1-based record index for .json.
Malformed files raise ``error`` (the caller's own error class) naming the file and line.
"""

from __future__ import annotations

import json
from pathlib import Path


def iter_file_records(path: Path, error: type[Exception] = ValueError):
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: no such file")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise error(f"{path}:{e.lineno}: <json>: {e.msg}") from None
        if not isinstance(data, list):
            raise error(f"{path}:1: <json>: expected a list of records")
        for i, rec in enumerate(data, 1):
            yield f"{path}:{i}", rec
        return
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{n}: <json>: {e.msg}") from None
            yield f"{path}:{n}", rec
