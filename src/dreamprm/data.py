"""Records: loading and validating the training, meta and test files.

Every problem is reported as one line naming the file, the record (index and id) and the
field; all problems of a file are collected (up to ``max_errors``) before raising, so a bad
file costs one run, not one run per bad record. ``skip_bad=True`` drops bad records instead.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("train", "meta", "test")
IMAGE_PLACEHOLDER = "<image>"  # the prompt's image slot (see prompt.py): at most one per conversation


class DataError(ValueError):
    """A data file or record that cannot be used; the message says where and why."""


@dataclass
class LoadReport:
    path: str
    kind: str
    records: int = 0
    skipped: int = 0
    steps: int = 0
    positives: int = 0
    negatives: int = 0
    true_count: int = 0
    repeated_ids: int = 0  # records whose id an earlier record already carries (meta/test only)
    domains: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.path}: {self.records} {self.kind} records"
        if self.kind == "test":
            text += f", {self.steps} candidates ({self.positives} correct, {self.negatives} wrong)"
        else:
            text += f", {self.steps} steps ({self.positives} +, {self.negatives} -)"
        if self.kind == "meta":
            text += f", {self.true_count} correct / {self.records - self.true_count} wrong CoTs"
        if self.domains:
            text += f", {len(self.domains)} domains"
        if self.repeated_ids:
            text += (f"; {self.repeated_ids} records repeat an earlier record's id (fine in a {self.kind} file: "
                     "only training ids key weights)")
        if self.skipped:
            text += f"; skipped {self.skipped} bad records"
        return text


def resolve_image(path_value: str, json_path: str | os.PathLike) -> Path:
    """Image paths are relative to the JSON file's folder, else to the working directory.

    A last resort reads ``../x`` as upstream's meta loader does: it opens ``path[1:]``, so its
    published meta file's ``../data/meta_images/...`` means ``./data/meta_images/...`` from the
    working directory (the same place as "beside the JSON" when the file sits in ``data/``)."""
    p = Path(path_value)
    if p.is_absolute():
        return p
    beside = Path(json_path).parent / p
    if beside.exists():
        return beside
    if p.exists():
        return p
    if path_value.startswith("../") and Path(path_value[1:]).exists():
        return Path(path_value[1:])
    return beside


def _image_problem(path: Path) -> str | None:
    if not path.exists():
        return f"image not found: {path}"
    try:
        from PIL import Image

        with Image.open(path) as im:
            im.verify()
    except Exception as exc:  # PIL raises many types for unreadable files
        return f"image unreadable: {path} ({type(exc).__name__})"
    return None


def _check_conversations(rec: dict, kind: str) -> tuple[list[str], int, int]:
    """Problems of a conversation record and its (+, -) counts."""
    problems: list[str] = []
    conv = rec.get("conversations")
    if not isinstance(conv, list) or not conv:
        return ["field 'conversations': must be a non-empty list of turns"], 0, 0
    pos = neg = 0
    for t, turn in enumerate(conv):
        where = f"field 'conversations[{t}]'"
        if not isinstance(turn, dict):
            problems.append(f"{where}: must be an object with 'from' and 'value'")
            continue
        role, value = turn.get("from"), turn.get("value")
        if role not in ("system", "human", "gpt"):
            problems.append(f"{where}.from: must be 'system', 'human' or 'gpt', got {role!r}")
        if not isinstance(value, str):
            problems.append(f"{where}.value: must be a string, got {type(value).__name__}")
            continue
        if role == "gpt":
            if value not in ("+", "-"):
                problems.append(f"{where}.value: gpt turns must be '+' or '-', got {value[:20]!r}")
            elif value == "+":
                pos += 1
            else:
                neg += 1
            if t == 0 or not isinstance(conv[t - 1], dict) or conv[t - 1].get("from") != "human":
                problems.append(f"{where}: a gpt turn must follow a human turn")
        if role == "system" and t != 0:
            problems.append(f"{where}: a system turn may only come first")
    if pos + neg == 0 and not problems:
        problems.append("field 'conversations': no step (no gpt turn)")
    placeholders = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in conv
                       if isinstance(t, dict) and isinstance(t.get("value"), str))
    if placeholders > 1:
        problems.append(f"field 'conversations': {placeholders} '{IMAGE_PLACEHOLDER}' placeholders for one image")
    return problems, pos, neg


def _image_field_problems(rec: dict, field: str, json_path, check_images: bool) -> list[str]:
    """Problems of the record's image-path field: its type, then (optionally) the file itself."""
    if not isinstance(rec.get(field), str):
        return [f"field '{field}': missing or not a string"]
    if check_images:
        img = _image_problem(resolve_image(rec[field], json_path))
        if img:
            return [f"field '{field}': {img}"]
    return []


def _check_record(rec, kind: str, json_path, check_images: bool) -> tuple[list[str], int, int]:
    if not isinstance(rec, dict):
        return [f"must be an object, got {type(rec).__name__}"], 0, 0
    problems: list[str] = []
    if kind in ("train", "meta"):
        if not isinstance(rec.get("id"), (str, int)) or isinstance(rec.get("id"), bool):
            problems.append("field 'id': missing or not a string/number")
        problems += _image_field_problems(rec, "image", json_path, check_images)
        if "dataset" in rec and not isinstance(rec["dataset"], str):
            problems.append("field 'dataset': must be a string")
        if kind == "meta" and not isinstance(rec.get("true_false"), bool):
            problems.append("field 'true_false': meta records need a boolean")
        conv_problems, pos, neg = _check_conversations(rec, kind)
        return problems + conv_problems, pos, neg
    # test
    if "id" in rec and (not isinstance(rec["id"], (str, int)) or isinstance(rec["id"], bool)):
        problems.append("field 'id': not a string/number")
    if not isinstance(rec.get("question"), str):
        problems.append("field 'question': missing or not a string")
    problems += _image_field_problems(rec, "image_path", json_path, check_images)
    cands, tf = rec.get("candidates"), rec.get("true_false")
    if not isinstance(cands, list) or not cands or not all(isinstance(c, str) for c in cands):
        problems.append("field 'candidates': must be a non-empty list of strings")
    if not isinstance(tf, list) or not all(isinstance(x, bool) for x in tf):
        problems.append("field 'true_false': must be a list of booleans")
    elif isinstance(cands, list) and len(cands) != len(tf):
        problems.append(f"field 'true_false': {len(tf)} values for {len(cands)} candidates")
    if isinstance(rec.get("question"), str) and isinstance(cands, list):
        in_question = rec["question"].count(IMAGE_PLACEHOLDER)
        for j, cand in enumerate(cands):
            if isinstance(cand, str) and in_question + cand.count(IMAGE_PLACEHOLDER) > 1:
                problems.append(f"field 'candidates[{j}]': the question and candidate hold more than one "
                                f"'{IMAGE_PLACEHOLDER}' placeholder for one image")
                break
    if problems:
        return problems, 0, 0
    return problems, sum(tf), len(tf) - sum(tf)


def record_label(index: int, rec) -> str:
    rid = rec.get("id") if isinstance(rec, dict) else None
    return f"record {index}" + (f" (id {rid!r})" if rid is not None else "")


def load_records(
    path: str | os.PathLike,
    kind: str,
    skip_bad: bool = False,
    check_images: bool = True,
    max_errors: int = 20,
) -> tuple[list[dict], LoadReport]:
    """Load and validate a JSON list of records; raise one DataError listing every problem.

    Training ids must be unique (they key the Instance Table). Meta and test files may repeat
    an id (upstream's published meta file holds 4 CoTs per question under one id); the report
    counts the repeats."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: the top level must be a JSON list of records, got {type(data).__name__}")
    report = LoadReport(path=path, kind=kind)
    kept: list[dict] = []
    seen_ids: dict = {}
    for i, rec in enumerate(data):
        problems, pos, neg = _check_record(rec, kind, path, check_images)
        if isinstance(rec, dict) and "id" in rec and isinstance(rec["id"], (str, int)):
            key = str(rec["id"])
            if key not in seen_ids:
                seen_ids[key] = i
            elif kind == "train":
                problems.append(f"field 'id': duplicate of record {seen_ids[key]}")
            else:
                report.repeated_ids += 1
        if problems:
            report.skipped += 1
            for p in problems:
                report.problems.append(f"{path}: {record_label(i, rec)}: {p}")
            continue
        kept.append(rec)
        report.steps += pos + neg
        report.positives += pos
        report.negatives += neg
        if kind == "meta":
            report.true_count += rec["true_false"]
        if kind != "test":
            report.domains[rec.get("dataset", "default")] += 1
    report.records = len(kept)
    if report.problems and not skip_bad:
        shown = report.problems[:max_errors]
        more = len(report.problems) - len(shown)
        tail = f"\n... and {more} more problems" if more > 0 else ""
        raise DataError(
            f"{path}: {report.skipped} bad records (use --skip_bad_records to drop them):\n"
            + "\n".join(shown)
            + tail
        )
    if not kept:
        raise DataError(f"{path}: no usable records")
    return kept, report
