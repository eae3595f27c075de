"""Records: loading and validating the training, meta and test files (.json lists or .jsonl).

Every problem is reported as one line naming the file, the record (index and id) and the
field; all problems of a file are collected (up to ``max_errors``) before raising, so a bad
file costs one run, not one run per bad record. ``skip_bad=True`` drops bad records instead.

Text fields (every turn, a test record's question and candidates) must not spell the image tokens
of the prompt format (``IMAGE_TOKENS``): only the prompt builder places those, and upstream would
read them as image slots (a training step would then fail on an image-token count). Images are
decoded in full (at most ``MAX_IMAGE_PIXELS`` pixels), each distinct file once, in threads.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .jsonio import iter_file_records

KINDS = ("train", "meta", "test")
IMAGE_PLACEHOLDER = "<image>"  # the prompt's image slot (see prompt.py): at most one per conversation
# The tokens the prompt builder writes for an image (InternVL: <img>, <IMG_CONTEXT> x n, </img>);
# a record's text may not hold them.
IMAGE_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>")
# Images with more pixels are refused before decoding (Pillow's own decompression-bomb limit).
MAX_IMAGE_PIXELS = 89_478_485


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 record``, ``2 records`` (``many`` for irregular plurals)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


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
    indices: list[int] = field(default_factory=list)  # the file index of every kept record, in order

    def summary(self) -> str:
        text = f"{self.path}: {plural(self.records, self.kind + ' record')}"
        if self.kind == "test":
            text += f", {plural(self.steps, 'candidate')} ({self.positives} correct, {self.negatives} wrong)"
        else:
            text += f", {plural(self.steps, 'step')} ({self.positives} +, {self.negatives} -)"
        if self.kind == "meta":
            wrong = self.records - self.true_count
            text += f", {self.true_count} correct / {plural(wrong, 'wrong CoT')}"
        if self.domains:
            text += f", {plural(len(self.domains), 'domain')}"
        if self.repeated_ids:
            repeat = "record repeats" if self.repeated_ids == 1 else "records repeat"
            text += (f"; {self.repeated_ids} {repeat} an earlier record's id (fine in a {self.kind} file: "
                     "only training ids key weights)")
        if self.skipped:
            text += f"; skipped {plural(self.skipped, 'bad record')}"
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
    """None for an image that decodes; else what is wrong with it. Reads the whole file, refusing
    more than ``MAX_IMAGE_PIXELS`` pixels before decoding anything."""
    if path.is_dir():
        return f"{path} is a folder, not an image file"
    if not path.exists():
        return f"image not found: {path}"
    from PIL import Image

    try:
        with Image.open(path) as im:
            width, height = im.size
            if width * height > MAX_IMAGE_PIXELS:
                return (f"image too large: {path} is {width}x{height} = {width * height:,} pixels "
                        f"(at most {MAX_IMAGE_PIXELS:,})")
            im.verify()  # chunk checksums (PNG); verify() leaves the image unusable, so reopen
        with Image.open(path) as im:
            im.load()  # decodes every pixel: a corrupt compressed stream fails here
            im.crop((0, 0, 1, 1)).convert("RGB")  # the mode converts as training will convert it
    except Exception as exc:  # PIL raises many types for unreadable files
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"image unreadable: {path} ({type(exc).__name__}{': ' + detail[:120] if detail else ''})"
    return None


def _image_problems(paths: list[Path], workers: int | None = None) -> dict[Path, str | None]:
    """``_image_problem`` of each distinct path, decoded in threads (Pillow decodes without the GIL)."""
    unique = list(dict.fromkeys(paths))
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    if workers <= 1 or len(unique) < 2:
        return {p: _image_problem(p) for p in unique}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(unique, pool.map(_image_problem, unique)))


def _text_problem(text: str) -> str | None:
    """What makes a text unusable in a prompt: an image token of the prompt format, or a lone
    surrogate (not Unicode: no tokenizer accepts it)."""
    for token in IMAGE_TOKENS:
        if token in text:
            return (f"holds {token!r}, an image token of the prompt format that only the prompt builder "
                    f"may write (mark the image's place with '{IMAGE_PLACEHOLDER}')")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"holds a lone surrogate {text[exc.start]!r} at character {exc.start}, which is not valid Unicode"
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
        text_problem = _text_problem(value)
        if text_problem:
            problems.append(f"{where}.value: {text_problem}")
    if pos + neg == 0 and not problems:
        problems.append("field 'conversations': no step (no gpt turn)")
    placeholders = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in conv
                       if isinstance(t, dict) and isinstance(t.get("value"), str))
    if placeholders > 1:
        problems.append(f"field 'conversations': {placeholders} '{IMAGE_PLACEHOLDER}' placeholders for one image")
    return problems, pos, neg


def _resolve_field(rec, kind: str, json_path) -> Path | str | None:
    """The resolved image path of a record, a problem text for a path no file system takes
    (a NUL byte, a name too long), or None when the field holds no usable string."""
    value = rec.get("image_path" if kind == "test" else "image") if isinstance(rec, dict) else None
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return resolve_image(value, json_path)
    except (OSError, ValueError) as exc:
        return f"not a usable path: {value[:80]!r} ({type(exc).__name__}: {exc})"


def _image_field_problems(rec: dict, field: str, resolved: Path | str | None,
                          image_problems: dict | None) -> list[str]:
    """Problems of the record's image-path field: its type, then (when checked) the file itself."""
    if not isinstance(rec.get(field), str):
        return [f"field '{field}': missing or not a string"]
    if not rec[field].strip():
        return [f"field '{field}': is empty (it must name an image file)"]
    if isinstance(resolved, str):
        return [f"field '{field}': {resolved}"]
    if image_problems is not None and resolved is not None:
        img = image_problems.get(resolved)
        if img:
            return [f"field '{field}': {img}"]
    return []


def _check_record(rec, kind: str, resolved: Path | str | None,
                  image_problems: dict | None) -> tuple[list[str], int, int]:
    if not isinstance(rec, dict):
        return [f"must be an object, got {type(rec).__name__}"], 0, 0
    problems: list[str] = []
    if kind in ("train", "meta"):
        if not isinstance(rec.get("id"), (str, int)) or isinstance(rec.get("id"), bool):
            problems.append("field 'id': missing or not a string/number")
        problems += _image_field_problems(rec, "image", resolved, image_problems)
        if "dataset" in rec and not isinstance(rec["dataset"], str):
            problems.append("field 'dataset': must be a string")
        if kind == "meta" and not isinstance(rec.get("true_false"), bool):
            problems.append("field 'true_false': meta records need a boolean")
        conv_problems, pos, neg = _check_conversations(rec, kind)
        return problems + conv_problems, pos, neg
    # test
    if "id" in rec and (not isinstance(rec["id"], (str, int)) or isinstance(rec["id"], bool)):
        problems.append("field 'id': not a string/number")
    question_problem = _text_problem(rec["question"]) if isinstance(rec.get("question"), str) else None
    if not isinstance(rec.get("question"), str):
        problems.append("field 'question': missing or not a string")
    elif question_problem:
        problems.append(f"field 'question': {question_problem}")
    problems += _image_field_problems(rec, "image_path", resolved, image_problems)
    cands, tf = rec.get("candidates"), rec.get("true_false")
    if not isinstance(cands, list) or not cands or not all(isinstance(c, str) for c in cands):
        problems.append("field 'candidates': must be a non-empty list of strings")
    else:
        text_problems = ((j, _text_problem(cand)) for j, cand in enumerate(cands))
        problems += [f"field 'candidates[{j}]': {problem}" for j, problem in text_problems if problem]
    if not isinstance(tf, list) or not all(isinstance(x, bool) for x in tf):
        problems.append("field 'true_false': must be a list of booleans")
    elif isinstance(cands, list) and len(cands) != len(tf):
        problems.append(f"field 'true_false': {plural(len(tf), 'value')} for {plural(len(cands), 'candidate')}")
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
    data = [rec for _, rec in iter_file_records(path, DataError, check_unicode=False)]
    report = LoadReport(path=path, kind=kind)
    kept: list[dict] = []
    seen_ids: dict = {}
    resolved = [_resolve_field(rec, kind, path) for rec in data]
    image_problems = _image_problems([r for r in resolved if isinstance(r, Path)]) if check_images else None
    for i, rec in enumerate(data):
        problems, pos, neg = _check_record(rec, kind, resolved[i], image_problems)
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
        report.indices.append(i)
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
        tail = f"\n... and {plural(more, 'more problem')}" if more > 0 else ""
        raise DataError(
            f"{path}: {plural(report.skipped, 'bad record')} (use --skip_bad_records to drop them):\n"
            + "\n".join(shown)
            + tail
        )
    if not kept:
        raise DataError(f"{path}: no usable records")
    return kept, report
