"""Build the meta set and the best-of-N test set from questions + generated candidates.

Usage::

    python data/prepare_meta_test.py --questions mmmu_pro.jsonl --candidates cands.jsonl \\
        [--meta_out meta.json] [--test_out test.json] [--image_root DIR] \\
        [--step_splitter upstream|clean]

Inputs
------
* ``--questions``: MMMU / MMMU-Pro style records, JSONL (one a line) or JSON (a list):
  ``id`` (string or number), ``question`` (text; ``<image 1>`` placeholders are left as they are),
  ``options`` (a list, a ``{"A": ...}`` dict, or the string form of a list as in the MMMU
  parquet files, e.g. ``"['3', '4']"``; empty or absent = open question), ``answer`` (a letter
  for multiple choice, else free text, or a list of acceptable free-text answers) and the image
  path in ``image_path``, ``image`` or ``image_1`` (the first one present; relative paths are
  kept, or joined to ``--image_root``). A question with several images (a list of paths, or
  ``image_2`` ... ``image_7`` set, as in MMMU) is skipped and counted, with its candidates:
  a meta or test record holds one image.
* ``--candidates``: JSONL, one generated solution a line: ``{"id" or "question_id", "candidate"}``.
  Candidates keep their file order within a question.

Outputs
-------
* ``--meta_out``: one record per candidate in the shape of upstream's ``meta_MMMU_Pro.json``:
  ``{"id": "<question id>#<k>", "response": candidate text, "true_false": whether its final
  answer is right, "image", "conversations"}``, the conversation being the PRM system turn, the
  human turn ``### Question:\\n`` + (question + options).strip(), then every step from
  ``dreamprm.steps.split_steps`` as a human turn followed by a ``+`` placeholder gpt turn.
  ``--step_splitter`` picks the splitter: ``upstream`` (default; upstream's meta file is this
  split of each ``response``, and it may hold an empty step, e.g. for
  ``[Reasoning]\\nAnswer: B``) or ``clean`` (see ``dreamprm.steps``). A candidate whose steps
  are all empty is rejected.
* ``--test_out``: one record per question with candidates: ``{"id", "question", "image_path",
  "candidates", "true_false"}``.

Answer checking
---------------
``dreamprm.answers`` (its module docstring has the rules): the text after the last ``Answer:``,
then an option letter or option text for multiple choice, numbers with a tolerance and normalised
text otherwise.

Counts are printed as JSON on stdout; a malformed line stops the run with
``error: FILE:LINE: FIELD: problem`` on stderr (exit 2); so does any other bad input or flag
(an unreadable or non-UTF-8 file, an output that is a folder, one of the inputs, or both
outputs at once, an output that cannot be written), always as one ``error:`` line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

try:
    from dreamprm.answers import (answer_key, answer_text, extract_choice, free_is_correct,  # noqa: F401
                                  is_correct, normalize_options, options_block)
    from dreamprm.records import DataError
    from dreamprm.jsonio import iter_file_records, same_file, write_json
    from dreamprm.prompt import SYSTEM_PROMPT
    from dreamprm.steps import SPLITTERS, split_steps
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from dreamprm.answers import (answer_key, answer_text, extract_choice, free_is_correct,  # noqa: F401
                                  is_correct, normalize_options, options_block)
    from dreamprm.records import DataError
    from dreamprm.jsonio import iter_file_records, same_file, write_json
    from dreamprm.prompt import SYSTEM_PROMPT
    from dreamprm.steps import SPLITTERS, split_steps


def _err(where: str, field: str, problem: str) -> DataError:
    return DataError(f"{where}: {field}: {problem}")


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------
def _iter(path: Path):
    return iter_file_records(path, DataError)


EXTRA_IMAGE_FIELDS = tuple(f"image_{k}" for k in range(2, 8))  # MMMU: image_1 ... image_7


def question_image(rec: dict, where: str) -> str | None:
    """The question's one image path; None when it has several (the question is skipped)."""
    key = next((k for k in ("image_path", "image", "image_1") if rec.get(k)), None)
    value = rec.get(key) if key else None
    if isinstance(value, list) and all(isinstance(x, str) and x for x in value):
        paths = list(dict.fromkeys(value))
    elif isinstance(value, str):
        paths = [value]
    else:
        raise _err(where, key or "image_path",
                   "missing (image_path, image or image_1 must hold a path)" if value is None
                   else f"not a path (a string or a list of strings), got {type(value).__name__}")
    if len(paths) > 1 or any(rec.get(k) for k in EXTRA_IMAGE_FIELDS):
        return None
    return paths[0]


def read_questions(paths, image_root: str | None = None, skipped: set | None = None) -> dict:
    """Questions by id; the ids of questions skipped for holding several images go to ``skipped``."""
    out = {}
    skipped = set() if skipped is None else skipped
    for p in map(Path, paths):
        for where, rec in _iter(p):
            if not isinstance(rec, dict):
                raise _err(where, "<record>", "expected a JSON object")
            qid = rec.get("id")
            if qid is None or isinstance(qid, bool) or not isinstance(qid, (str, int)):
                raise _err(where, "id", "missing or not a string/number")
            if str(qid) in out or str(qid) in skipped:
                raise _err(where, "id", f"duplicate question id {qid!r}")
            q = rec.get("question")
            if not isinstance(q, str) or not q.strip():
                raise _err(where, "question", "missing or empty")
            try:
                options = normalize_options(rec.get("options"))
            except ValueError as e:
                raise _err(where, "options", str(e)) from None
            image = question_image(rec, where)
            if image is None:
                skipped.add(str(qid))
                continue
            if image_root:
                image = str(Path(image_root) / image)
            try:
                answer = answer_key(rec.get("answer"), options)
            except ValueError as e:
                raise _err(where, "answer", str(e)) from None
            text = q.strip()
            if options:
                text += "\n" + options_block(options)
            out[str(qid)] = {"id": qid, "question": text, "image_path": image, "options": options,
                             "answer": answer, "where": where}
    return out


def read_candidates(path, questions: dict, splitter: str = "upstream", skipped: set | None = None,
                    counts: Counter | None = None) -> dict:
    """Candidates by question id; those of a ``skipped`` question are counted in ``counts``."""
    cands: dict[str, list[str]] = {}
    skipped = skipped or set()
    for where, rec in _iter(Path(path)):
        if not isinstance(rec, dict):
            raise _err(where, "<record>", "expected a JSON object")
        field = "id" if "id" in rec else "question_id"
        qid = rec.get(field)
        if qid is None or isinstance(qid, bool) or not isinstance(qid, (str, int)):
            raise _err(where, "id", "missing (id or question_id)")
        if str(qid) in skipped:
            if counts is not None:
                counts["candidates_of_skipped_questions"] += 1
            continue
        if str(qid) not in questions:
            raise _err(where, field, f"unknown question id {qid!r}")
        c = rec.get("candidate")
        if not isinstance(c, str) or not c.strip():
            raise _err(where, "candidate", "missing or empty text")
        if not any(step.strip() for step in split_steps(c, splitter)):
            raise _err(where, "candidate", "no non-empty step after splitting")
        cands.setdefault(str(qid), []).append(c)
    return cands


def meta_record(rid: str, question: str, image: str, candidate: str, ok: bool,
                splitter: str = "upstream") -> dict:
    """One meta record, shaped like those of upstream's ``meta_MMMU_Pro.json``."""
    conv = [{"from": "system", "value": SYSTEM_PROMPT},
            {"from": "human", "value": "### Question:\n" + question.strip()}]
    for step in split_steps(candidate, splitter):
        conv += [{"from": "human", "value": step}, {"from": "gpt", "value": "+"}]
    return {"id": rid, "response": candidate, "true_false": ok, "image": image, "conversations": conv}


def build(questions: dict, cands: dict, splitter: str = "upstream") -> tuple[list[dict], list[dict], dict]:
    meta, test = [], []
    counts = Counter(questions=len(questions))
    for key, q in questions.items():
        cs = cands.get(key)
        if not cs:
            counts["questions_without_candidates"] += 1
            continue
        tf = [is_correct(c, q) for c in cs]
        for k, (c, ok) in enumerate(zip(cs, tf)):
            rec = meta_record(f"{q['id']}#{k}", q["question"], q["image_path"], c, ok, splitter)
            meta.append(rec)
            counts["steps"] += len(rec["conversations"]) // 2 - 1
            if (answer_text(c) is None) or (q["options"] and extract_choice(c, q["options"]) is None):
                counts["candidates_without_answer"] += 1
        test.append({"id": q["id"], "question": q["question"], "image_path": q["image_path"],
                     "candidates": cs, "true_false": tf})
        counts["candidates"] += len(cs)
        counts["correct_candidates"] += sum(tf)
        counts["incorrect_candidates"] += len(tf) - sum(tf)
        counts["multiple_choice_questions" if q["options"] else "open_questions"] += 1
        counts["questions_all_correct" if all(tf) else "questions_none_correct" if not any(tf) else "questions_mixed"] += 1
    counts["meta_records"], counts["test_records"] = len(meta), len(test)
    return meta, test, dict(counts)


def output_problems(outputs: list[tuple[str, Path]], inputs: list[Path]) -> str | None:
    """Why the outputs cannot be written (a folder, one of the inputs, both the same), or None."""
    for flag, out in outputs:
        try:
            if out.is_dir():
                return f"{out}: {flag} is a folder; give it a file name, e.g. {out / (flag[2:-4] + '.json')}"
        except (OSError, ValueError) as exc:
            return f"{out!r}: {flag} is not a usable path ({exc})"
        for f in inputs:
            if same_file(out, f):
                return f"{out}: {flag} is also an input file; write it to another file"
    if len(outputs) == 2:
        (fa, a), (fb, b) = outputs
        try:
            same = same_file(a, b) or a.resolve() == b.resolve()
        except (OSError, ValueError):
            same = str(a) == str(b)
        if same:
            return f"{a}: {fa} and {fb} name the same file"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="questions + candidates -> DreamPRM meta and test JSON")
    ap.add_argument("--questions", nargs="+", required=True, help="MMMU/MMMU-Pro style .jsonl/.json files")
    ap.add_argument("--candidates", required=True, help="JSONL of {id|question_id, candidate}")
    ap.add_argument("--meta_out", default=None, help="meta-format JSON to write")
    ap.add_argument("--test_out", default=None, help="test-format JSON to write")
    ap.add_argument("--image_root", default=None, help="prefix joined to every image path")
    ap.add_argument("--step_splitter", choices=SPLITTERS, default="upstream",
                    help="how candidates are cut into steps (dreamprm.steps; default: upstream's split)")
    args = ap.parse_args(argv)
    if not args.meta_out and not args.test_out:
        ap.error("give --meta_out and/or --test_out")
    outputs = [(flag, Path(v)) for flag, v in (("--meta_out", args.meta_out), ("--test_out", args.test_out)) if v]
    try:
        problem = output_problems(outputs, [Path(q) for q in args.questions] + [Path(args.candidates)])
        if problem:
            raise DataError(problem)
        skipped: set = set()
        skip_counts: Counter = Counter()
        questions = read_questions(args.questions, args.image_root, skipped)
        cands = read_candidates(args.candidates, questions, args.step_splitter, skipped, skip_counts)
        meta, test, counts = build(questions, cands, args.step_splitter)
        counts["questions_skipped_several_images"] = len(skipped)
        counts["candidates_of_skipped_questions"] = skip_counts["candidates_of_skipped_questions"]
        for flag, path in outputs:
            write_json(path, meta if flag == "--meta_out" else test, DataError)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(counts, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
