"""Step labels by Monte-Carlo rollouts: questions with answers -> PRM training records.

Usage::

    python -m dreamprm.mc_label --questions Q.json --output TRAIN.json --rollouts K \\
        (--policy PATH|tiny | --base_url URL --model NAME) [--mc_threshold 0.0] [--dataset TAG]
        [--num_solutions S] [--prompt five_stage|plain|FILE] [--max_steps 12] [--cache FILE]
        [sampling, endpoint and device options]

Questions (JSON list or JSONL): ``{"id", "question", "image", "options"?, "answer",
"solutions"?}``, read as ``dreamprm.generate`` reads them (``answer`` required). The estimate is
Math-Shepherd's and OmegaPRM's, with VisualPRM's settings (16 rollouts per step, at most 12
steps, a step is ``+`` iff its value exceeds 0):

1. **Solutions.** A question's ``solutions`` (texts in the ``[Reasoning]\nStep 1: ...\nAnswer:
   X`` form), else ``--num_solutions`` samples from the policy with ``dreamprm.generate``'s
   solving prompt (``--prompt``, default ``five_stage``).
2. **Steps.** ``dreamprm.steps.split_steps(text, "upstream")`` with empty steps dropped (a
   training turn needs text); the last step is normally ``Answer: X``. The first ``--max_steps``
   are kept, the rest dropped and counted.
3. **Values.** For every prefix (steps 1..i) the policy writes K continuations: the prompt is
   the solving prompt, an instruction to continue, and the prefix as ``[Reasoning]\nStep 1: ...``.
   The step's value is the fraction of continuations whose completed solution (prefix +
   continuation) ``dreamprm.answers.is_correct`` accepts. The last step of a solution needs no
   rollout: the solution ends there, so its value is 1.0 or 0.0 by checking the solution's own
   answer (a solution cut by ``--max_steps`` has no such step; all its kept steps are rolled out).
4. **Labels.** ``+`` iff value > ``--mc_threshold``, else ``-``.

Output: the training format (README "Data formats"; the conversation as
``data/prepare_visualprm.py`` builds it), one record per solution with id ``{question id}-s{k}``,
the ``dataset`` tag, and ``mc_values`` (one value per step). Image paths are written relative to
the output's folder (absolute ones stay absolute), so output and images can move together.

Cache. Every finished request (a question's generated solutions, or one prefix's K rollouts) is
appended at once to a JSON-lines file (default: the output's name with ``.rollouts.jsonl``),
keyed by question id, solution hash, prefix length and a hash of the prompt sent; a rerun takes
what it finds there and requests only the rest, so an interrupted run resumes where it stopped.
The cache belongs to one policy and sampling setup: give another model another ``--cache``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

from . import generate
from .answers import answer_key, is_correct, normalize_options
from .jsonio import iter_file_records, same_file, write_json
from .policy import Job, Policy, PolicyError, add_policy_flags, exit_without_waiting, load_policy, policy_flag_problem
from .records import IMAGE_PLACEHOLDER, IMAGE_TOKENS, DataError, resolve_image
from .steps import split_steps

DEFAULT_MC_THRESHOLD = 0.0  # VisualPRM: a step is correct iff mc > 0
DEFAULT_MAX_STEPS = 12  # VisualPRM
# What label_questions counts, in the order the CLI prints it.
COUNTS = ("questions", "solutions_given", "solutions_sampled", "solutions_skipped", "solutions_truncated",
          "steps_dropped", "records", "all_positive_records", "steps", "positive_steps", "negative_steps",
          "requests_made", "requests_cached", "texts_generated")
DEFAULT_TEMPLATE = generate.PROMPTS["five_stage"]  # as dreamprm.generate samples best-of-N candidates
_IMAGE_TAG = re.compile(r"^\s*(<image>\s*)+")  # a leading <image> tag: the prompt builder places the image

CONTINUE_INSTRUCTION = (
    "Below is the beginning of a solution. Continue it from where it stops: write only the "
    "remaining steps, numbered on from the last one, in the same format, and end with the final "
    "answer on its own line as \"Answer: X\"."
)


# ----------------------------------------------------------------------------------------------
# questions
# ----------------------------------------------------------------------------------------------
def question_text(question: dict) -> str:
    """The question as the PRM reads it: its text (a leading ``<image>`` tag removed: the prompt
    builder places the image), then one ``A. text`` line per option."""
    return generate.question_text(_IMAGE_TAG.sub("", question["question"]), normalize_options(question.get("options")))


def _where_error(where: str, field: str, problem: str) -> DataError:
    return DataError(f"{where}: field '{field}': {problem}")


def solution_steps(text: str, max_steps: int = DEFAULT_MAX_STEPS) -> tuple[list[str], int]:
    """(the first ``max_steps`` non-empty steps of ``text``, how many further steps were dropped)."""
    steps = [s for s in split_steps(text, "upstream") if s.strip()]
    return steps[:max_steps], max(0, len(steps) - max_steps)


def unusable_text(text: str) -> bool:
    """Whether ``text`` holds image markup, which a training record may not (``dreamprm.records``)."""
    return any(token in text for token in (*IMAGE_TOKENS, IMAGE_PLACEHOLDER))


def read_questions(path: str | os.PathLike) -> list[dict]:
    """The questions of ``path`` (.json list or .jsonl), checked, with ``options`` and ``answer``
    normalised (``dreamprm.answers``), ``image`` resolved (beside the file, else the working
    directory) to an absolute path that exists, and ``image_given`` as the file gave it. Raises
    one-line DataErrors."""
    out, seen = [], {}
    for where, rec in iter_file_records(Path(path), DataError):
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected a JSON object")
        qid = rec.get("id")
        if qid is None or isinstance(qid, bool) or not isinstance(qid, (str, int)):
            raise _where_error(where, "id", "missing or not a string/number")
        if str(qid) in seen:
            raise _where_error(where, "id", f"duplicate of the question at {seen[str(qid)]}")
        seen[str(qid)] = where
        if not isinstance(rec.get("question"), str) or not rec["question"].strip():
            raise _where_error(where, "question", "missing or empty")
        token = next((t for t in IMAGE_TOKENS if t in rec["question"]), None)
        if token:
            raise _where_error(where, "question", f"holds {token!r}, an image token of the PRM's prompt format")
        try:
            options = normalize_options(rec.get("options"))
        except ValueError as exc:
            raise _where_error(where, "options", str(exc)) from None
        try:
            answer = answer_key(rec.get("answer"), options)
        except ValueError as exc:
            raise _where_error(where, "answer", f"{exc} (the labels are measured against the right answer)") from None
        image = rec.get("image")
        if not isinstance(image, str) or not image.strip():
            raise _where_error(where, "image", "missing or not a path")
        try:
            resolved = resolve_image(image, path)
            found = resolved.is_file()
        except (OSError, ValueError) as exc:
            raise _where_error(where, "image", f"not a usable path ({exc})") from None
        if not found:
            raise _where_error(where, "image", f"image not found: {resolved}")
        solutions = rec.get("solutions")
        if solutions is not None:
            if not isinstance(solutions, list) or not all(isinstance(s, str) for s in solutions):
                raise _where_error(where, "solutions", "must be a list of solution texts")
            for k, s in enumerate(solutions):
                if not solution_steps(s)[0]:
                    raise _where_error(where, f"solutions[{k}]", "no non-empty step after splitting")
                if unusable_text(s):
                    raise _where_error(where, f"solutions[{k}]", "holds image markup ("
                                       + ", ".join((*IMAGE_TOKENS, IMAGE_PLACEHOLDER)) + ")")
        # absolute: the local policy seeds a request from its image path, which must not depend on
        # the working directory of a resumed run
        out.append({**rec, "options": options, "answer": answer, "image": os.path.abspath(resolved),
                    "image_given": image, "where": where})
    if not out:
        raise DataError(f"{path}: no questions")
    return out


# ----------------------------------------------------------------------------------------------
# prompts
# ----------------------------------------------------------------------------------------------
def solve_prompt(question: dict, template: str = DEFAULT_TEMPLATE) -> str:
    """The prompt that asks the policy for a whole solution (``dreamprm.generate``'s)."""
    return generate.render_prompt(template, _IMAGE_TAG.sub("", question["question"]),
                                  normalize_options(question.get("options")))


def prefix_text(steps: list[str]) -> str:
    """A solution's first steps in the ``[Reasoning]`` format (no answer line)."""
    return "[Reasoning]\n" + "\n".join(f"Step {j}: {s}" for j, s in enumerate(steps, 1))


def rollout_prompt(question: dict, steps: list[str], template: str = DEFAULT_TEMPLATE) -> str:
    """The prompt that asks the policy to finish a solution that starts with ``steps``: the
    solving prompt, the instruction to continue, and the steps so far."""
    return f"{solve_prompt(question, template)}\n\n{CONTINUE_INSTRUCTION}\n\n{prefix_text(steps)}"


# ----------------------------------------------------------------------------------------------
# Monte-Carlo values
# ----------------------------------------------------------------------------------------------
def rollout_correct(question: dict, steps: list[str], continuation: str) -> bool:
    """Whether the solution ``steps`` + ``continuation`` reaches the right answer."""
    return is_correct(prefix_text(steps) + "\n" + continuation.strip(), question)


def mc_values(question: dict, steps: list[str], rollouts: list[list[str]],
              final_correct: bool | None = None) -> list[float]:
    """Per-step Monte-Carlo values of one solution.

    ``rollouts[i]`` holds the continuations of ``steps[:i + 1]``; the value is the fraction of
    them that end right. With ``final_correct`` (the solution ends at its last step, whose value
    is then 1.0 or 0.0 from it) ``rollouts`` covers the other steps."""
    n_rolled = len(steps) - (final_correct is not None)
    if len(rollouts) != n_rolled:
        raise ValueError(f"{len(rollouts)} rollout sets for {n_rolled} steps")
    values = []
    for i, texts in enumerate(rollouts):
        if not texts:
            raise ValueError(f"step {i + 1}: no rollouts")
        values.append(sum(rollout_correct(question, steps[:i + 1], t) for t in texts) / len(texts))
    if final_correct is not None:
        values.append(1.0 if final_correct else 0.0)
    return values


def training_record(rid: str, question: dict, steps: list[str], values: list[float],
                    mc_threshold: float = DEFAULT_MC_THRESHOLD, dataset: str = "default") -> dict:
    """A training record (the conversation as ``data/prepare_visualprm.py`` builds it)."""
    conv = [{"from": "human", "value": "### Question:\n" + question_text(question)}]
    for step, value in zip(steps, values):
        conv += [{"from": "human", "value": step}, {"from": "gpt", "value": "+" if value > mc_threshold else "-"}]
    return {"id": rid, "image": question["image"], "conversations": conv, "dataset": dataset,
            "mc_values": values}


# ----------------------------------------------------------------------------------------------
# the cache
# ----------------------------------------------------------------------------------------------
def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


class RolloutCache:
    """Finished requests, one JSON line each: ``{"question", "solution", "prefix", "prompt",
    "texts"}`` (``solution`` null and ``prefix`` 0 for a question's generated solutions).

    Lines are appended and flushed as requests finish; a line cut short by a killed run, or any
    other unreadable line, is skipped (and counted), and a later line for the same key wins.
    ``path=None`` keeps everything in memory."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else None
        self.entries: dict[tuple, list[str]] = {}
        self.bad_lines = 0
        self._file = None
        if self.path is not None and self.path.exists():
            self._read()

    @staticmethod
    def key(question_id, solution: str | None, prefix: int, prompt: str) -> tuple:
        return (str(question_id), None if solution is None else text_hash(solution), prefix, text_hash(prompt))

    def _read(self) -> None:
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise DataError(f"{self.path}: cannot read the cache ({exc.strerror or exc})") from None
        for line in raw.decode("utf-8", "replace").splitlines():
            if not line.strip():
                continue
            try:
                e = json.loads(line)
                key = (str(e["question"]), e["solution"], int(e["prefix"]), e["prompt"])
                texts = e["texts"]
                if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                self.bad_lines += 1
                continue
            self.entries[key] = texts

    def get(self, key: tuple, n: int) -> list[str] | None:
        """The first ``n`` cached texts for ``key``, or None when fewer are cached."""
        texts = self.entries.get(key)
        return texts[:n] if texts is not None and len(texts) >= n else None

    def put(self, key: tuple, texts: list[str]) -> None:
        self.entries[key] = list(texts)
        if self.path is None:
            return
        try:
            self._append(key, texts)
        except OSError as exc:
            raise DataError(f"{self.path}: cannot write the cache ({exc.strerror or exc})") from None

    def _append(self, key: tuple, texts: list[str]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            cut = self.path.exists() and self.path.stat().st_size > 0 and not self.path.read_bytes().endswith(b"\n")
            self._file = self.path.open("a", encoding="utf-8")
            if cut:  # a line cut short by a killed run: start on a fresh line
                self._file.write("\n")
        qid, solution, prefix, prompt = key
        line = {"question": qid, "solution": solution, "prefix": prefix, "prompt": prompt, "texts": list(texts)}
        self._file.write(json.dumps(line, ensure_ascii=False) + "\n")
        self._file.flush()  # a killed run keeps every request that finished

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# ----------------------------------------------------------------------------------------------
# labelling
# ----------------------------------------------------------------------------------------------
def _run_requests(policy: Policy, requests: list[tuple[tuple, Job]], cache: RolloutCache,
                  stats: Counter, sampling: dict) -> dict[tuple, list[str]]:
    """Texts per cache key: cached ones, then the rest requested in one ``sample_many`` batch,
    each cached the moment it returns."""
    results: dict[tuple, list[str]] = {}
    todo: dict[tuple, Job] = {}  # a repeated key (two identical solutions) is asked once
    for key, job in requests:
        if key in results or key in todo:
            continue
        cached = cache.get(key, job.n)
        if cached is not None:
            results[key] = cached
            stats["requests_cached"] += 1
        else:
            todo[key] = job
    if todo:
        keys = list(todo)
        for index, texts in policy.sample_many(list(todo.values()), progress=False, **sampling):
            key, job = keys[index], todo[keys[index]]
            texts = list(texts)
            if len(texts) != job.n:
                raise PolicyError(f"the policy returned {len(texts)} texts for a request of {job.n}")
            cache.put(key, texts)
            results[key] = texts
            stats["requests_made"] += 1
            stats["texts_generated"] += len(texts)
    return results


def sample_solutions(policy: Policy, question: dict, n: int, cache: RolloutCache | None = None,
                     stats: Counter | None = None, template: str = DEFAULT_TEMPLATE, **sampling) -> list[str]:
    """``n`` solutions of ``question`` sampled with the solving prompt (cached like rollouts)."""
    cache = RolloutCache() if cache is None else cache
    stats = Counter() if stats is None else stats
    prompt = solve_prompt(question, template)
    key = RolloutCache.key(question["id"], None, 0, prompt)
    job = Job(image=question.get("image"), prompt=prompt, n=n)
    return _run_requests(policy, [(key, job)], cache, stats, sampling)[key]


def label_question(policy: Policy, question: dict, solutions: list[str], rollouts: int,
                   mc_threshold: float = DEFAULT_MC_THRESHOLD, *, max_steps: int = DEFAULT_MAX_STEPS,
                   dataset: str = "default", cache: RolloutCache | None = None,
                   stats: Counter | None = None, template: str = DEFAULT_TEMPLATE, temperature: float = 0.7,
                   top_p: float = 0.95, max_new_tokens: int = 1024) -> list[dict]:
    """Training records for ``solutions`` of ``question`` (``id``, ``question``, ``image``,
    ``answer``, optional ``options``), their steps labelled by ``rollouts`` continuations per
    prefix; record k (id ``{id}-s{k}``) is solution k. All prefixes of all solutions go to the
    policy as one ``sample_many`` batch. A solution without a non-empty step, or holding the
    prompt format's image markup, is skipped (counted in ``stats["solutions_skipped"]``)."""
    if rollouts < 1:
        raise ValueError("rollouts must be at least 1")
    cache = RolloutCache() if cache is None else cache
    stats = Counter() if stats is None else stats
    sampling = dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    plans, requests = [], []
    for k, text in enumerate(solutions):
        steps, dropped = solution_steps(text, max_steps)
        if not steps or unusable_text(text):
            stats["solutions_skipped"] += 1
            continue
        stats["solutions_truncated"] += dropped > 0
        stats["steps_dropped"] += dropped
        # The solution ends at its last step, so that step's value is its own answer checked
        # (no rollout); a truncated solution has no such step.
        final = is_correct(text, question) if dropped == 0 else None
        keys = []
        for i in range(1, len(steps) + 1 - (final is not None)):
            prompt = rollout_prompt(question, steps[:i], template)
            key = RolloutCache.key(question["id"], text, i, prompt)
            keys.append(key)
            requests.append((key, Job(image=question.get("image"), prompt=prompt, n=rollouts)))
        plans.append((k, steps, final, keys))
    results = _run_requests(policy, requests, cache, stats, sampling)
    records = []
    for k, steps, final, keys in plans:
        values = mc_values(question, steps, [results[key] for key in keys], final)
        records.append(training_record(f"{question['id']}-s{k}", question, steps, values, mc_threshold, dataset))
    return records


def missing_solutions(question: dict) -> str:
    return (f"{question.get('where', question['id'])}: field 'solutions': missing; "
            "give --num_solutions S to sample them")


def label_questions(policy: Policy, questions: Iterable[dict], rollouts: int,
                    mc_threshold: float = DEFAULT_MC_THRESHOLD, *, num_solutions: int | None = None,
                    max_steps: int = DEFAULT_MAX_STEPS, dataset: str = "default",
                    cache: RolloutCache | None = None, progress: bool = True, template: str = DEFAULT_TEMPLATE,
                    temperature: float = 0.7, top_p: float = 0.95,
                    max_new_tokens: int = 1024) -> tuple[list[dict], Counter]:
    """``label_question`` over ``questions``: their own ``solutions``, else ``num_solutions``
    sampled ones. Returns (records, counts: ``COUNTS``)."""
    questions = list(questions)
    cache = RolloutCache() if cache is None else cache
    stats: Counter = Counter({key: 0 for key in COUNTS})
    sampling = dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    records = []
    for q in tqdm(questions, desc="questions", unit="q", disable=not progress, dynamic_ncols=True):
        solutions = q.get("solutions")
        if solutions is None:
            if not num_solutions:
                raise DataError(missing_solutions(q))
            solutions = sample_solutions(policy, q, num_solutions, cache, stats, template, **sampling)
            stats["solutions_sampled"] += len(solutions)
        else:
            stats["solutions_given"] += len(solutions)
        recs = label_question(policy, q, solutions, rollouts, mc_threshold, max_steps=max_steps, dataset=dataset,
                              cache=cache, stats=stats, template=template, **sampling)
        records += recs
        stats["questions"] += 1
    for r in records:
        labels = [t["value"] for t in r["conversations"] if t["from"] == "gpt"]
        stats["steps"] += len(labels)
        stats["positive_steps"] += labels.count("+")
        stats["negative_steps"] += labels.count("-")
        stats["all_positive_records"] += "-" not in labels
    stats["records"] = len(records)
    return records, stats


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
class LazyPolicy(Policy):
    """A policy loaded at its first request, so that a rerun whose requests are all cached
    loads no model (and needs no GPU or endpoint)."""

    def __init__(self, load, name: str):
        super().__init__()
        self._load, self.name, self.policy = load, name, None

    def sample_many(self, jobs, **kwargs):
        if self.policy is None:
            self.policy = self._load()
        return self.policy.sample_many(jobs, **kwargs)

    def describe(self) -> dict:
        return self.policy.describe() if self.policy is not None else {"model": self.name, "loaded": False}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m dreamprm.mc_label",
        description="Questions with answers -> step-labelled PRM training records, by Monte-Carlo rollouts "
                    "of a policy model (local transformers model or an OpenAI-compatible endpoint).")
    ap.add_argument("--questions", required=True, help="JSON list or JSONL of {id, question, image, options?, "
                    "answer, solutions?}; images relative to this file, else the working directory")
    ap.add_argument("--output", "-o", required=True, help="training JSON to write")
    ap.add_argument("--rollouts", type=int, required=True, help="continuations per step (VisualPRM: 16)")
    ap.add_argument("--policy", help="local policy model: a folder, a hub id or 'tiny' (--model also works)")
    ap.add_argument("--base_url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (with --model)")
    ap.add_argument("--model", help="with --base_url: the served model's name; alone: as --policy")
    ap.add_argument("--mc_threshold", type=float, default=DEFAULT_MC_THRESHOLD,
                    help="a step is '+' iff its Monte-Carlo value is greater than this (default, as VisualPRM: 0)")
    ap.add_argument("--dataset", default=None, help="the records' dataset tag (default: the questions file's stem)")
    ap.add_argument("--num_solutions", type=int, default=None,
                    help="solutions to sample for each question without 'solutions'")
    ap.add_argument("--prompt", default="five_stage",
                    help="solving prompt, as dreamprm.generate: five_stage (default), plain, or a template file")
    ap.add_argument("--max_steps", type=int, default=DEFAULT_MAX_STEPS,
                    help="steps kept per solution, the rest dropped (default, as VisualPRM: %(default)s)")
    ap.add_argument("--cache", default=None, help="rollout cache (default: the output's name with .rollouts.jsonl)")
    add_policy_flags(ap)
    ap.add_argument("--no_progress", action="store_true", help="no progress bar")
    return ap


def flag_problem(args) -> str | None:
    """What is wrong with the flags, or None."""
    if args.base_url and args.policy:
        return "give --policy (a local model) or --base_url with --model, not both"
    if args.base_url and not args.model:
        return "--base_url needs --model NAME (the served model's name)"
    if not args.base_url and bool(args.policy) == bool(args.model):
        return ("give the policy: --policy PATH|tiny, or --base_url URL --model NAME" if not args.policy
                else "give --policy or --model, not both")
    for flag in ("rollouts", "max_steps"):
        if getattr(args, flag) < 1:
            return f"--{flag} must be at least 1, got {getattr(args, flag)}"
    if args.num_solutions is not None and args.num_solutions < 1:
        return f"--num_solutions must be at least 1, got {args.num_solutions}"
    if not math.isfinite(args.mc_threshold):
        return f"--mc_threshold must be a finite number, got {args.mc_threshold}"
    return policy_flag_problem(args)


def _check_paths(output: Path, questions: Path, cache: Path) -> None:
    if output.is_dir():
        raise DataError(f"{output}: is a folder; give the output a file name, e.g. {output / 'train.json'}")
    if cache.is_dir():
        raise DataError(f"{cache}: the cache is a folder; give --cache a file name")
    for a, b, what in ((output, questions, "output and questions file"), (output, cache, "output and cache"),
                       (cache, questions, "cache and questions file")):
        if same_file(a, b) or a.resolve() == b.resolve():
            raise DataError(f"{a}: the {what} are the same file")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    problem = flag_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    questions_path, output = Path(args.questions), Path(args.output)
    cache_path = Path(args.cache) if args.cache else output.with_suffix(".rollouts.jsonl")
    cache = None
    try:
        _check_paths(output, questions_path, cache_path)
        _, template = generate.load_template(args.prompt)
        questions = read_questions(questions_path)
        lacking = next((q for q in questions if q.get("solutions") is None), None)
        if lacking is not None and not args.num_solutions:
            raise DataError(missing_solutions(lacking))
        cache = RolloutCache(cache_path)
        if cache.bad_lines:
            print(f"warning: {cache_path}: skipped {cache.bad_lines} unreadable line(s)", file=sys.stderr)
        name = args.policy or args.model
        policy = LazyPolicy(lambda: load_policy(name, args.base_url, api_key_env=args.api_key_env, device=args.device,
                                                precision=args.precision, concurrency=args.concurrency,
                                                retries=args.retries, timeout=args.timeout, seed=args.seed), name)
        records, stats = label_questions(
            policy, questions, args.rollouts, args.mc_threshold, num_solutions=args.num_solutions,
            max_steps=args.max_steps, dataset=args.dataset or questions_path.stem, cache=cache,
            progress=not args.no_progress, template=template, temperature=args.temperature, top_p=args.top_p,
            max_new_tokens=args.max_new_tokens)
        for r in records:  # as generate writes them: relative to the output's folder where they can be
            r["image"] = generate.output_image_path(Path(r["image"]), output)
        write_json(output, records, DataError)
    except (DataError, PolicyError, generate.UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = len(cache.entries) if cache is not None else 0
        print(f"interrupted: {cache_path} keeps {kept} finished request(s); run the same command again to resume",
              file=sys.stderr)
        return 130
    finally:
        if cache is not None:
            cache.close()
    print(json.dumps({**stats, "output": str(output), "cache": str(cache_path), "policy": policy.describe()},
                     indent=2, default=str))
    return 0


if __name__ == "__main__":
    exit_without_waiting(main())
