"""Split a test-format file by question into a meta set and a held-out test set.

    python -m dreamprm.meta_split --test_json_file TEST.json --meta_from_test FRACTION \\
        --meta_out META.json --test_out HELDOUT_TEST.json [--seed 0]

DreamPRM-1.5's sanity check trains the weights against meta CoTs drawn from the test
distribution itself and evaluates on the questions left over. The split is by *question*, so
no question is on both sides: records that share an id, or the same question text (stripped)
and image path (normalised), are one question, transitively. round(FRACTION × questions),
rounded half up and kept between 1 and all but one, are drawn with ``random.Random(seed)``.

``META.json``: every candidate of the meta-side questions as a meta record (``true_false`` the
candidate's), built by ``dreamprm.generate.meta_records`` (upstream's step splitter, a ``+``
placeholder per step); a candidate without step text is left out and counted. A record without
an id gets ``record_<its index in the file>`` there. ``HELDOUT_TEST.json``: the other questions'
records, unchanged, in file order, except an image path that would not resolve from the output's
folder, which is rewritten relative to it (absolute when nothing but the root is shared). A
``.jsonl`` output is written one record per line, anything else as a JSON list.

Exit status: 0 done, 2 a bad flag or file (one ``error:`` line).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
from pathlib import Path

from .generate import meta_records, output_image_path
from .jsonio import atomic_write_text, same_file, write_json
from .records import DataError, load_records, plural, resolve_image


class SplitError(ValueError):
    """A split that cannot be made (bad fraction, too few questions, clashing paths); the CLI
    prints ``error: <message>`` and exits 2."""


def question_keys(rec: dict) -> list[tuple]:
    """What identifies a record's question: its id (if any) and its question text with its image."""
    keys = [("text+image", str(rec.get("question", "")).strip(), os.path.normpath(str(rec.get("image_path", ""))))]
    if rec.get("id") is not None:
        keys.append(("id", str(rec["id"])))
    return keys


def group_questions(records: list[dict]) -> list[list[int]]:
    """The records' indices grouped by question (groups and members in file order): records sharing
    any key of :func:`question_keys` are one question, and so are chains of such records."""
    parent = list(range(len(records)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple, int] = {}
    for i, rec in enumerate(records):
        for key in question_keys(rec):
            if key in first:
                a, b = root(first[key]), root(i)
                parent[max(a, b)] = min(a, b)  # the earlier record stays the root: groups keep file order
            else:
                first[key] = i
    groups: dict[int, list[int]] = {}
    for i in range(len(records)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def meta_count(fraction: float, questions: int) -> int:
    """How many of ``questions`` go to the meta side: round(fraction × questions) half up, at least 1
    and at most all but 1. SplitError for a fraction outside (0, 1) or fewer than 2 questions."""
    if not valid_fraction(fraction):
        raise SplitError(f"the meta fraction must be strictly between 0 and 1 (got {fraction})")
    if questions < 2:
        raise SplitError(f"{plural(questions, 'question')}: a split needs at least 2, one for each side")
    return min(max(math.floor(fraction * questions + 0.5), 1), questions - 1)


def valid_fraction(fraction) -> bool:
    return isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 < fraction < 1


def split_indices(records: list[dict], fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """:func:`split_by_question`, as the records' indices."""
    groups = group_questions(records)
    chosen = set(random.Random(seed).sample(range(len(groups)), meta_count(fraction, len(groups))))
    meta = sorted(i for g in chosen for i in groups[g])
    test = sorted(i for g, members in enumerate(groups) if g not in chosen for i in members)
    return meta, test


def split_by_question(records: list[dict], fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``(meta_side, test_side)``: the records of round(fraction × questions) questions drawn with
    ``random.Random(seed)``, and the records of the others, each side in file order. A question is
    a group of :func:`group_questions`; the same records, fraction and seed give the same split."""
    meta, test = split_indices(records, fraction, seed)
    return [records[i] for i in meta], [records[i] for i in test]


def shared_questions(a: list[dict], b: list[dict]) -> set[tuple]:
    """The question keys (id, or text with image) found on both sides; empty for a clean split."""
    return {k for r in a for k in question_keys(r)} & {k for r in b for k in question_keys(r)}


def portable_image_path(value: str, source: Path, output: Path) -> str:
    """``value`` (an image path of a record of ``source``) as a record of ``output`` should hold it:
    unchanged when it names the same file from there, else rewritten (``generate.output_image_path``)."""
    image = resolve_image(value, source)
    here = Path(value) if Path(value).is_absolute() else output.parent / value
    if same_file(here, image):
        return value
    return output_image_path(image, output)


def write_records(path: Path, records: list[dict]) -> None:
    """A JSON list, or one record per line for a ``.jsonl`` path (atomically; DataError on failure)."""
    if path.suffix != ".jsonl":
        write_json(path, records, DataError)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in records))
    except OSError as exc:
        raise DataError(f"{path}: cannot write ({exc.strerror or exc})") from None


def check_paths(test_json: Path, meta_out: Path, test_out: Path) -> None:
    """SplitError when an output is a folder, the input, or the other output."""
    for flag, out in (("--meta_out", meta_out), ("--test_out", test_out)):
        if out.is_dir():
            raise SplitError(f"{flag} {out} is a folder; give a file name, e.g. {out / 'split.json'}")
        if same_file(out, test_json) or out.resolve() == test_json.resolve():
            raise SplitError(f"{flag} {out} is the --test_json_file; write the split to another file")
    if same_file(meta_out, test_out) or meta_out.resolve() == test_out.resolve():
        raise SplitError(f"--meta_out and --test_out are the same file ({meta_out}); give two files")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m dreamprm.meta_split",
        description="Split a test-format file by question: a share of its questions become a meta set (one meta "
                    "record per candidate), the rest a held-out test file; no question is on both sides.")
    ap.add_argument("--test_json_file", required=True, help="test-format records to split")
    ap.add_argument("--meta_from_test", type=float, required=True,
                    help="share of the questions for the meta set, in (0, 1); rounded half up, at least 1 and at "
                         "most all but 1 question")
    ap.add_argument("--meta_out", required=True, help="meta records to write (for train.py --meta_json_file)")
    ap.add_argument("--test_out", required=True, help="held-out test records to write (for test.py --test_json_file)")
    ap.add_argument("--seed", type=int, default=0, help="which questions are drawn (default: %(default)s)")
    return ap


def run(args) -> int:
    """Split, write both files, print one line; SplitError or DataError raised."""
    test_json, meta_out, test_out = Path(args.test_json_file), Path(args.meta_out), Path(args.test_out)
    check_paths(test_json, meta_out, test_out)
    if not valid_fraction(args.meta_from_test):  # refused before the file is read
        raise SplitError(f"--meta_from_test must be a fraction strictly between 0 and 1 (got {args.meta_from_test})")
    records, _ = load_records(test_json, "test")
    questions = len(group_questions(records))
    if questions < 2:
        raise SplitError(f"{test_json}: {plural(questions, 'question')}; a split needs at least 2, one for each side")
    meta_idx, test_idx = split_indices(records, args.meta_from_test, args.seed)
    meta_side, test_side = [records[i] for i in meta_idx], [records[i] for i in test_idx]
    if shared_questions(meta_side, test_side):  # impossible by construction; never write a leaky split
        raise SplitError("internal error: a question landed on both sides of the split")
    # meta_records reads image paths relative to its `output` argument's folder: pass them resolved
    resolved = [{**records[i], "id": records[i].get("id", f"record_{i}"),
                 "image_path": os.path.abspath(resolve_image(records[i]["image_path"], test_json))} for i in meta_idx]
    meta, empty = meta_records(resolved, test_json, meta_out)
    if not meta:
        raise SplitError(f"no candidate of the {plural(len(meta_side), 'meta-side record')} has step text: "
                         "the meta set would be empty")
    held_out = [{**r, "image_path": portable_image_path(r["image_path"], test_json, test_out)} for r in test_side]
    write_records(meta_out, meta)
    write_records(test_out, held_out)
    n_meta = len(group_questions(meta_side))
    skipped = f", {plural(empty, 'candidate')} without step text left out" if empty else ""
    print(f"{test_json}: {plural(questions, 'question')} split by question (seed {args.seed}): {n_meta} into "
          f"{meta_out} ({plural(len(meta), 'meta record')}{skipped}), {questions - n_meta} into {test_out}; "
          "no test question is in the meta set")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (SplitError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
