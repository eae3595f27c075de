"""Sample best-of-N candidates for a benchmark's questions with a policy model.

    python -m dreamprm.generate --questions Q.json --output OUT.json --num_candidates N \\
        (--model PATH|tiny | --base_url URL --model NAME) [--prompt five_stage|plain|FILE] ...

Questions (a JSON list or JSONL): ``{"id", "question", "image"?, "options"?, "answer"?}``; image
paths are relative to the questions file's folder, else to the working directory. ``options``
is a list (``A``, ``B``... in order) or a ``{"A": text}`` dict; ``answer`` the option letter (or
the option's text) for multiple choice, else a string, a number or a list of acceptable answers.

Output: the test format (README, "Data formats"), one record per question in the questions'
order: ``{"id", "question" (with its options as "A. text" lines), "image_path", "candidates",
"true_false"}`` (``true_false`` only when the question has an answer, by
``dreamprm.answers.is_correct``), plus ``options``/``answer`` when given and ``generator`` (the
policy and sampling settings). ``image_path`` is relative to the output's folder where it can be.
``--meta_output`` also writes every answered candidate as a meta record (``meta_records``), for
``train.py --meta_json_file``.

The file is rewritten (atomically) after every finished question, so an interrupted run loses at
most the questions in flight; run the same command again to resume: questions the output already
holds with ``--num_candidates`` candidates (and the same question text and image) are kept, the
others generated. Exit status: 0 done, 2 bad input or flags, an unreachable endpoint, replies
that stay malformed or a model that cannot be loaded (one ``error:`` line), 130 interrupted.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import string
import sys
from pathlib import Path

from .answers import answer_key, is_correct, normalize_options, options_block
from .jsonio import iter_file_records, same_file, write_json
from .policy import Job, PolicyError, add_policy_flags, exit_without_waiting, load_policy, policy_flag_problem
from .prompt import candidate_conversation, with_system_prompt
from .records import IMAGE_TOKENS, DataError, plural, resolve_image
from .steps import extract_answer, split_steps

# The prompt as DreamPRM's candidates are generated: five stages (restate the question, gather the
# image's evidence, recall background knowledge, reason step by step, conclude), written in the
# [Reasoning] / Step k: / Answer: X shape that dreamprm.steps splits.
FIVE_STAGE = """{question}
{options}

Solve this problem about the image by thinking through five stages:
1. Restate the question: say in your own words what is asked and what form the answer takes.
2. Gather evidence from the image: describe the parts of the image that matter (objects, text, numbers, \
labels, axes, relations).
3. Recall background knowledge: name the facts, definitions or formulas the problem needs.
4. Reason step by step from the evidence and the knowledge towards the answer.
5. Conclude: state the result.

Write the solution in exactly this format, one numbered step per line, and nothing after the answer line:
[Reasoning]
Step 1: <the question restated>
Step 2: <the evidence from the image>
Step 3: <the background knowledge>
Step 4: <the first reasoning step>
...
Step K: <the conclusion>
Answer: <the final answer>

If the question has options, the final answer is the letter of the correct option (for example "Answer: B"); \
otherwise it is the number, word or short phrase that answers the question."""

PLAIN = """{question}
{options}

Solve the problem step by step. Write the solution in this format:
[Reasoning]
Step 1: ...
Step 2: ...
...
Answer: <the final answer>

If the question has options, the final answer is the letter of the correct option (for example "Answer: B"); \
otherwise it is the number, word or short phrase that answers the question."""

PROMPTS = {"five_stage": FIVE_STAGE, "plain": PLAIN}
PLACEHOLDERS = ("question", "options")


class UsageError(ValueError):
    """A bad flag or prompt template; the CLI prints ``error: <message>`` and exits 2."""


def check_template(template: str, where: str = "template") -> None:
    """UsageError unless the template's only placeholders are ``{question}`` and ``{options}``
    (``{question}`` required; literal braces are written ``{{`` and ``}}``)."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise UsageError(f"{where}: {exc} (write literal braces as {{{{ and }}}})") from None
    for f in fields:
        if f not in PLACEHOLDERS:
            raise UsageError(f"{where}: unknown placeholder {{{f}}}; a template may use {{question}} and {{options}} "
                             "(write literal braces as {{ and }})")
    if "question" not in fields:
        raise UsageError(f"{where}: the template has no {{question}} placeholder")


def load_template(value: str) -> tuple[str, str]:
    """``(name, template)`` for ``--prompt``: a built-in name or a template file."""
    if value in PROMPTS:
        return value, PROMPTS[value]
    path = Path(value)
    if not path.is_file():
        raise UsageError(f"--prompt {value}: neither {' nor '.join(PROMPTS)} nor a template file")
    try:
        template = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the prompt template ({exc})") from None
    check_template(template, str(path))
    return str(path), template


def render_prompt(template: str, question: str, options: dict[str, str]) -> str:
    """The user prompt: the template with the question and its options ("A. text" lines); without
    options, a line that holds only ``{options}`` is left out."""
    if not options:
        template = re.sub(r"(?m)^\{options\}[ \t]*\n", "", template)
    return template.format(question=question.strip(), options=options_block(options)).strip()


def question_text(question: str, options: dict[str, str]) -> str:
    """The question as the test record holds it (and the PRM reads it): its options appended."""
    text = question.strip()
    return text + "\n" + options_block(options) if options else text


# ----------------------------------------------------------------------------------------------
# questions
# ----------------------------------------------------------------------------------------------
def _bad(where: str, field: str, problem: str) -> DataError:
    return DataError(f"{where}: field '{field}': {problem}")


def read_questions(path: Path) -> list[dict]:
    """The questions, validated; DataError naming the first bad record's line and field."""
    out, seen = [], {}
    for where, rec in iter_file_records(path, DataError):
        if not isinstance(rec, dict):
            raise DataError(f"{where}: must be a JSON object, got {type(rec).__name__}")
        qid = rec.get("id")
        if isinstance(qid, bool) or not isinstance(qid, (str, int)) or (isinstance(qid, str) and not qid.strip()):
            raise _bad(where, "id", "missing, empty or not a string")
        if str(qid) in seen:
            raise _bad(where, "id", f"duplicate of {seen[str(qid)]}")
        seen[str(qid)] = where
        q = rec.get("question")
        if not isinstance(q, str) or not q.strip():
            raise _bad(where, "question", "missing, empty or not a string")
        token = next((t for t in IMAGE_TOKENS if t in q), None)
        if token:
            raise _bad(where, "question", f"holds {token!r}, an image token of the PRM's prompt format")
        image_field = "image" if "image" in rec else "image_path"
        image = rec.get(image_field)
        resolved = None
        if image is not None:
            if not isinstance(image, str) or not image.strip():
                raise _bad(where, image_field, "must be a non-empty string naming an image file")
            try:
                resolved = resolve_image(image, path)
                found = resolved.is_file()
            except (OSError, ValueError) as exc:
                raise _bad(where, image_field, f"not a usable path ({exc})") from None
            if not found:
                raise _bad(where, image_field, f"image not found: {resolved}")
        raw_options = rec.get("options")
        if raw_options is not None and not (
                isinstance(raw_options, list) and all(isinstance(o, str) for o in raw_options)
                or isinstance(raw_options, dict) and all(isinstance(o, str) for o in raw_options.values())):
            raise _bad(where, "options", "must be a list of strings or a {\"A\": text} object")
        try:
            options = normalize_options(raw_options)
        except ValueError as exc:
            raise _bad(where, "options", str(exc)) from None
        answer, key = rec.get("answer"), None
        if answer is not None:
            if isinstance(answer, bool) or not isinstance(answer, (str, int, float, list)) or (
                    isinstance(answer, list) and not all(isinstance(a, (str, int, float)) and not isinstance(a, bool)
                                                         for a in answer)):
                raise _bad(where, "answer", "must be a string, a number or a list of them")
            if answer == "" or answer == [] or (isinstance(answer, str) and not answer.strip()):
                raise _bad(where, "answer", "is empty (leave the field out for a question without a known answer)")
            if isinstance(answer, float) and not math.isfinite(answer):
                raise _bad(where, "answer", "is not a finite number")
            try:
                key = answer_key(answer if not isinstance(answer, list) else [str(a) for a in answer], options)
            except ValueError as exc:
                raise _bad(where, "answer", str(exc)) from None
        out.append({"id": qid, "question": q, "image": resolved, "options": options, "raw_options": raw_options,
                    "answer": answer, "key": key, "where": where})
    if not out:
        raise DataError(f"{path}: no questions")
    return out


def output_image_path(image: Path, output: Path) -> str:
    """The image path as the output file should hold it: relative to the output's folder when the
    two share a folder below the file system's root (the file then works from any working
    directory), else absolute."""
    image_abs = os.path.abspath(image)
    out_dir = os.path.dirname(os.path.abspath(output))
    try:
        common = os.path.commonpath([image_abs, out_dir])
    except ValueError:  # another drive (Windows)
        return image_abs
    if common == os.path.dirname(common):  # only the root in common: ../../.. is no better than absolute
        return image_abs
    return Path(os.path.relpath(image_abs, out_dir)).as_posix()


# ----------------------------------------------------------------------------------------------
# output records
# ----------------------------------------------------------------------------------------------
def make_record(q: dict, candidates: list[str], output: Path, generator: dict | None) -> dict:
    rec = {"id": q["id"], "question": question_text(q["question"], q["options"])}
    if q["image"] is not None:
        rec["image_path"] = output_image_path(q["image"], output)
    rec["candidates"] = list(candidates)
    if q["key"] is not None:
        rec["true_false"] = [is_correct(c, {"options": q["options"], "answer": q["key"]}) for c in candidates]
    if q["raw_options"] is not None:
        rec["options"] = q["raw_options"]
    if q["answer"] is not None:
        rec["answer"] = q["answer"]
    if generator is not None:
        rec["generator"] = generator
    return rec


def meta_records(records: list[dict], output: Path, meta_output: Path) -> tuple[list[dict], int]:
    """The meta set made of the candidates: one record per candidate of every question with an
    answer, ``{"id": "<question id>#<k>", "response", "true_false", "image", "conversations"}``, the
    conversation being the system prompt, the question turn and every step (upstream's splitter)
    with a ``+`` placeholder, as ``data/prepare_meta_test.py`` writes upstream's meta file. Returns
    the records and how many candidates were left out for having no step text."""
    out, empty = [], 0
    for rec in records:
        if "true_false" not in rec or "image_path" not in rec:
            continue
        image = output_image_path(output.parent / rec["image_path"], meta_output)
        for k, (cand, ok) in enumerate(zip(rec["candidates"], rec["true_false"])):
            steps = split_steps(cand, "upstream")
            if not any(step.strip() for step in steps):
                empty += 1
                continue
            conv = with_system_prompt(candidate_conversation(rec["question"], steps))
            out.append({"id": f"{rec['id']}#{k}", "response": cand, "true_false": bool(ok), "image": image,
                        "conversations": conv})
    return out, empty


def read_previous(output: Path, questions: list[dict], n: int) -> dict[str, dict]:
    """Records of an earlier run that can be kept, by id: those with ``n`` candidates whose
    question text and image match. DataError for a file that is no earlier output of these questions."""
    by_id = {str(q["id"]): q for q in questions}
    kept, foreign = {}, []
    for where, rec in iter_file_records(output, DataError):
        if not isinstance(rec, dict) or "candidates" not in rec or "id" not in rec:
            raise DataError(f"{where}: not a record of generate's output; to replace the file, pass --overwrite")
        q = by_id.get(str(rec["id"]))
        if q is None:
            foreign.append(str(rec["id"]))
            continue
        cands = rec.get("candidates")
        image = output_image_path(q["image"], output) if q["image"] is not None else None
        same = rec.get("question") == question_text(q["question"], q["options"]) and rec.get("image_path") == image
        if same and isinstance(cands, list) and len(cands) == n and all(isinstance(c, str) for c in cands):
            kept[str(rec["id"])] = rec
    if foreign:
        shown = ", ".join(repr(f) for f in foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise DataError(f"{output}: holds {plural(len(foreign), 'question')} not in the questions file ({shown}); "
                        "give another --output, or --overwrite to replace it")
    return kept


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m dreamprm.generate",
                                 description="Sample N candidate solutions per question with a policy model "
                                             "(local transformers model or an OpenAI-compatible endpoint).")
    ap.add_argument("--questions", required=True, help="JSON list or JSONL of {id, question, image, options?, answer?}")
    ap.add_argument("--output", required=True, help="test-format JSON to write (resumed when it exists)")
    ap.add_argument("--num_candidates", type=int, required=True, help="candidates per question")
    ap.add_argument("--meta_output", default=None,
                    help="also write the candidates as a meta set (one meta record per candidate of every question "
                         "with an answer, for train.py --meta_json_file)")
    ap.add_argument("--model",
                    help="local: a model folder, a hub id or 'tiny'; with --base_url: the served model's name")
    ap.add_argument("--base_url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    ap.add_argument("--prompt", default="five_stage",
                    help="five_stage (default), plain, or a template file with {question} and {options}")
    ap.add_argument("--no_greedy_first", dest="greedy_first", action="store_false",
                    help="sample every candidate (default: the first candidate is the greedy one)")
    add_policy_flags(ap)
    ap.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming --output")
    ap.add_argument("--no_progress", action="store_true", help="no progress bar")
    return ap


def check_flags(args) -> None:
    if not args.model:
        raise UsageError("give --model: a local model folder, a hub id or 'tiny'; with --base_url, the served "
                         "model's name")
    if args.num_candidates < 1:
        raise UsageError(f"--num_candidates must be at least 1 (got {args.num_candidates})")
    problem = policy_flag_problem(args)
    if problem:
        raise UsageError(problem)
    out, questions = Path(args.output), Path(args.questions)
    if out.is_dir():
        raise UsageError(f"--output {out} is a folder; give a file name, e.g. {out / 'candidates.json'}")
    if same_file(out, questions):
        raise UsageError(f"--output {out} is the questions file; write the candidates to another file")
    if args.meta_output is not None:
        meta = Path(args.meta_output)
        if meta.is_dir():
            raise UsageError(f"--meta_output {meta} is a folder; give a file name, e.g. {meta / 'meta.json'}")
        if meta.resolve() in (out.resolve(), questions.resolve()):
            raise UsageError(f"--meta_output {meta} is the --output or the questions file; give another file")


def run(args) -> int:
    """Generate what ``--output`` lacks; the exit status (UsageError, DataError, PolicyError raised)."""
    check_flags(args)
    prompt_name, template = load_template(args.prompt)
    questions = read_questions(Path(args.questions))
    output = Path(args.output)
    n = args.num_candidates
    if "{options}" not in template and any(q["options"] for q in questions):
        print(f"note: the prompt {prompt_name} has no {{options}} placeholder; the policy will not see the options",
              file=sys.stderr)
    kept = {} if args.overwrite or not output.exists() else read_previous(output, questions, n)
    todo = [q for q in questions if str(q["id"]) not in kept]
    if kept:
        print(f"resuming {output}: {plural(len(kept), 'question')} already {'has' if len(kept) == 1 else 'have'} "
              f"{plural(n, 'candidate')}; generating {len(todo)} of {len(questions)}", file=sys.stderr)
    done = {}  # finished records by id; kept ones are rebuilt, so true_false follows the current answers
    for q in questions:
        old = kept.get(str(q["id"]))
        if old is not None:
            done[str(q["id"])] = make_record(q, old["candidates"], output, old.get("generator"))

    def save():
        write_json(output, [done[str(q["id"])] for q in questions if str(q["id"]) in done], DataError)

    policy = None
    interrupted = False
    try:
        if todo:  # the model loads only when there is something to generate
            policy = load_policy(args.model, args.base_url, api_key_env=args.api_key_env, device=args.device,
                                 precision=args.precision, concurrency=args.concurrency, retries=args.retries,
                                 timeout=args.timeout, seed=args.seed)
            generator = {**policy.describe(), "prompt": prompt_name, "temperature": args.temperature,
                         "top_p": args.top_p, "max_new_tokens": args.max_new_tokens, "greedy_first": args.greedy_first}
            jobs = [Job(image=str(q["image"]) if q["image"] is not None else None,
                        prompt=render_prompt(template, q["question"], q["options"]), n=n) for q in todo]
            for i, texts in policy.sample_many(jobs, temperature=args.temperature, top_p=args.top_p,
                                               greedy_first=args.greedy_first, max_new_tokens=args.max_new_tokens,
                                               progress=not args.no_progress, desc="questions"):
                done[str(todo[i]["id"])] = make_record(todo[i], texts, output, generator)
                save()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if done:  # a run that failed before its first question leaves no empty file behind
            save()
    if interrupted:
        print(f"interrupted: {output} holds {len(done)} of {plural(len(questions), 'question')}; "
              "run the same command again to resume", file=sys.stderr)
        return 130
    records = [done[str(q["id"])] for q in questions]
    print(summary(output, records, len(kept), policy))
    if args.meta_output:
        meta_out = Path(args.meta_output)
        meta, empty = meta_records(records, output, meta_out)
        write_json(meta_out, meta, DataError)
        skipped = f"; {plural(empty, 'candidate')} without step text left out" if empty else ""
        print(f"wrote {meta_out}: {plural(len(meta), 'meta record')}{skipped}")
    return 0


def summary(output: Path, records: list[dict], kept: int, policy) -> str:
    cands = [c for r in records for c in r["candidates"]]
    no_answer = sum(extract_answer(c) is None for c in cands)
    text = (f"wrote {output}: {plural(len(records), 'question')} ({kept} kept from the earlier run), "
            f"{plural(len(cands), 'candidate')}")
    checked = [ok for r in records for ok in r.get("true_false", [])]
    if checked:
        text += f", {sum(checked)} of {len(checked)} correct"
    unchecked = sum(1 for r in records if "true_false" not in r)
    if unchecked:
        text += f", {plural(unchecked, 'question')} without an answer (no true_false)"
    text += f"; {plural(no_answer, 'candidate')} without an 'Answer:' line"
    if policy is not None and policy.stats.get("retries"):
        text += f"; {plural(policy.stats['retries'], 'retry', 'retries')} of failed requests"
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (UsageError, DataError, PolicyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    exit_without_waiting(main())
