"""JSON files in and out: the one record reader and the one atomic writer of the project.

Reading: records from a .jsonl file (one object per line) or any other file holding a JSON list.

Each record comes with ``"FILE:N"``: the line for .jsonl, the 1-based record index for .json.
Every problem with a file raises ``error`` (the caller's own error class) as one line naming
the file and, where it has one, the line: a missing file or a folder, an unreadable file,
invalid UTF-8 (``FILE:LINE: <utf-8>: ...``), malformed JSON (``FILE:LINE: <json>: ...``), and a
string holding a lone surrogate (a JSON ``\\udXXX`` escape that is not half of a pair: no UTF-8
writer or tokenizer accepts it). A UTF-8 byte-order mark at the start of a file is allowed.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import re
import tempfile
from pathlib import Path

# A JSON escape of a surrogate code point: only such an escape can put a lone surrogate in a
# string (UTF-8 input cannot encode one), so records are searched only when a text holds it.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _utf8(raw: bytes, path: Path, first_line: int, error) -> str:
    """``raw`` decoded, or ``error`` naming the line and column of the first invalid byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + raw.count(b"\n", 0, exc.start)
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise error(f"{path}:{line}: <utf-8>: invalid UTF-8 (byte 0x{raw[exc.start]:02x} at column {column}); "
                    "save the file as UTF-8") from None


def _lone_surrogate(obj) -> str | None:
    """The first lone surrogate in any string of ``obj`` (keys included), or None."""
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            if not x.isascii():
                try:
                    x.encode("utf-8")
                except UnicodeEncodeError as exc:
                    return x[exc.start]
        elif isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return None


def _parse(text: str, path: Path, error, line: int | None = None):
    """``text`` parsed; a problem names ``path`` and ``line`` (a .jsonl line) or, for a syntax
    error in a whole .json file, the line the parser stopped at."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}:{line if line is not None else e.lineno}: <json>: {e.msg}") from None
    except RecursionError:
        raise error(f"{where}: <json>: nested too deeply") from None
    except ValueError as e:  # e.g. an integer longer than Python's digit limit
        raise error(f"{where}: <json>: {str(e).splitlines()[0]}") from None


def _json_type(value) -> str:
    """The JSON name of a parsed value's type (object, array, string, number, true/false, null)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return {dict: "an object", list: "an array", str: "a string"}.get(type(value), "a number")


def _check_unicode(rec, where: str, error) -> None:
    bad = _lone_surrogate(rec)
    if bad is not None:
        raise error(f"{where}: <json>: a string holds the lone surrogate \\u{ord(bad):04x}, "
                    "which is not valid Unicode")


def iter_file_records(path: Path, error: type[Exception] = ValueError, check_unicode: bool = True):
    """Yield ``("FILE:N", record)`` for every record of ``path``. ``check_unicode=False`` leaves lone
    surrogates to a caller that names the record field holding one (``dreamprm.records``)."""
    path = Path(path)
    try:
        is_dir, exists = path.is_dir(), path.exists()
    except (OSError, ValueError) as exc:  # a NUL byte in the path, a name too long
        raise error(f"{path!r}: not a usable path ({exc})") from None
    if is_dir:
        raise error(f"{path}: is a folder, not a .json or .jsonl file")
    if not exists:
        raise error(f"{path}: no such file")
    if path.suffix != ".jsonl":
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
        if raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        text = _utf8(raw, path, 1, error)
        data = _parse(text, path, error)
        if not isinstance(data, list):
            raise error(f"{path}:1: <json>: expected a list of records, got {_json_type(data)}")
        check = check_unicode and _SURROGATE_ESCAPE.search(text) is not None
        for i, rec in enumerate(data, 1):
            if check:
                _check_unicode(rec, f"{path}:{i}", error)
            yield f"{path}:{i}", rec
        return
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    with fh:
        n = 0
        while True:
            try:
                raw = fh.readline()
            except OSError as exc:
                raise error(f"{path}:{n + 1}: cannot read ({exc.strerror or exc})") from None
            if not raw:
                break
            n += 1
            if n == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            line = _utf8(raw, path, n, error)
            if not line.strip():
                continue
            rec = _parse(line, path, error, n)
            if check_unicode and "\\u" in line and _SURROGATE_ESCAPE.search(line):
                _check_unicode(rec, f"{path}:{n}", error)
            yield f"{path}:{n}", rec


def same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name one existing file (links included)."""
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except (OSError, ValueError):
        return False


def strict_json(obj):
    """``obj`` with every non-finite float replaced by None, so that it is written as ``null``
    instead of the bare ``NaN``/``Infinity`` that no JSON parser must accept."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a fresh temporary file beside ``path`` (created with ``O_EXCL``, so no
    existing file or symlink is followed), then rename it over ``path``: a reader, or a run killed
    mid-write, never sees half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + path.name + "-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path, data, error: type[Exception] | None = None) -> Path:
    """Write ``data`` as strict, indented UTF-8 JSON (non-finite numbers as ``null``), atomically;
    the folder is created. With ``error``, a failure is raised as that class, in one line."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(strict_json(data), indent=1, ensure_ascii=False, allow_nan=False) + "\n")
    except OSError as exc:
        if error is None:
            raise
        raise error(f"{path}: cannot write ({exc.strerror or exc})") from None
    return path
