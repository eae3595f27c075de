"""Turn VisualPRM400K annotations (Monte-Carlo step scores) into DreamPRM training records.

Usage::

    python data/prepare_visualprm.py ANNOTATIONS... --output train.json
        [--preset table|net|coldstart | --num_samples N] [--seed 0] [--mc_threshold 0.0]
        [--image_root DIR] [--no_balance]

ANNOTATIONS are ``.jsonl`` files (one record a line), ``.json`` files (a list of records), or
folders (every ``*.jsonl``/``*.json`` inside, sorted).

Input schema (what was found, and where)
----------------------------------------
``OpenGVLab/VisualPRM400K-v1.1-Raw`` (and ``VisualPRM400K-Raw``) publish, per source dataset, an
``annotations/<source>.jsonl`` file whose records have (dataset card "Data fields",
https://huggingface.co/datasets/OpenGVLab/VisualPRM400K-v1.1-Raw, README.md):

* ``image`` -- image path (relative to the unpacked ``images/`` folder; a one-path list is
  accepted too; a record with several images is skipped and counted, since a training record
  holds one image),
* ``question`` -- the input query, ``answer`` -- the ground truth, ``response`` -- the sampled
  solution, ``num_mc_sequences`` -- continuations sampled per step,
* ``steps_with_score`` -- the response split into steps, each ``{"step": text, "score": mc}``
  where ``score`` is the step's expected accuracy (the fraction of Monte-Carlo continuations from
  that step that reach the right answer). Third-party copies of the same layout also carry
  ``num_mc_correct``/``num_mc_total`` per step; when ``score`` is absent it is computed from them.

The non-Raw ``VisualPRM400K``/``-v1.1`` releases are already multi-turn conversations with the MC
score turned into ``+``/``-`` (same card: "the expected accuracy mc_i has been converted into
correctness token c_i"); they carry no scores, so this script rejects them (use the -Raw files).

Source dataset: the record's ``dataset``, ``data_source`` or ``source`` field when present, else the
annotation file's stem (the Raw release has one file per source, e.g. ``mavis_geo_depth3_...``).

Rules
-----
* **Label.** A step is ``+`` iff its MC score > ``--mc_threshold`` (default ``0.0``: VisualPRM's rule,
  "a step is correct if mc_i > 0", from the same dataset card and the VisualPRM paper,
  arXiv:2503.10291), else ``-``. All steps are kept (no truncation after the first ``-``).
* **Format** (the training format of README "Data formats"): ``{"id", "image",
  "conversations": [{"from": "human", "value": "### Question:\\n{q}"}, then per step
  {"from": "human", "value": step}, {"from": "gpt", "value": "+"|"-"}], "dataset"}``.
  A leading ``<image>`` tag in the question is removed (the
  prompt builder places the image). ``id`` is the record's ``id`` when it has one, else
  ``<file stem>:<line>``. ``image`` is ``--image_root``/path when that option is given.
* **Balance** (DreamPRM-1.5: "positives and negatives balanced"; our reading, at the instance
  level): an instance is *positive* when every step is ``+`` and *negative* when at least one step
  is ``-``; the output holds the same number of each, ``min(N/2, #positive, #negative)`` per side
  (N = ``--num_samples``, or all data when no N is given). ``--no_balance`` samples N uniformly.
* **Sampling.** Candidates are sorted by id, then drawn with ``random.Random(--seed)``; the same
  inputs and seed always give the same ids, in the same (shuffled) order.
* **Presets**: ``table`` 12,000 (Instance Table), ``net`` 100,000 (Instance Net), ``coldstart``
  20,000 (cold-start SFT) -- DreamPRM-1.5 paper, App. B.

Counts (records, instances kept, steps, ``+``/``-`` steps, per dataset, records skipped for
holding several images) are printed as JSON on stdout. A malformed record stops the run with
``error: FILE:LINE: FIELD: problem`` on stderr (exit 2); so does any other bad input or flag
(an unreadable or non-UTF-8 file, an output that is a folder or one of the inputs, an output
that cannot be written), always as one ``error:`` line.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

PRESETS = {"table": 12_000, "net": 100_000, "coldstart": 20_000}
DEFAULT_MC_THRESHOLD = 0.0
_IMAGE_TAG = re.compile(r"^\s*(<image>\s*)+")

try:
    from dreamprm.records import DataError
    from dreamprm.jsonio import iter_file_records, same_file, write_json
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from dreamprm.records import DataError
    from dreamprm.jsonio import iter_file_records, same_file, write_json


def _err(where: str, field: str, problem: str) -> DataError:
    return DataError(f"{where}: {field}: {problem}")


def input_files(paths) -> list[Path]:
    """The annotation files named by ``paths`` (folders: their ``*.jsonl``/``*.json``, sorted)."""
    files = []
    for p in map(Path, paths):
        try:
            if p.is_dir():
                found = sorted(f for f in p.iterdir() if f.suffix in (".jsonl", ".json") and not f.is_dir())
                if not found:
                    raise DataError(f"{p}: a folder without .jsonl or .json files")
                files += found
            elif p.exists():
                files.append(p)
            else:
                raise DataError(f"{p}: no such file")
        except (OSError, ValueError) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(f"{p}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    return files


def iter_records(paths):
    """Yield (where, file stem, record) from .jsonl/.json files or folders of them."""
    for f in input_files(paths):
        for where, rec in iter_file_records(f, DataError):
            yield where, f.stem, rec


def _step_score(step, where: str, i: int) -> tuple[str, float]:
    field = f"steps_with_score[{i}]"
    if not isinstance(step, dict):
        raise _err(where, field, "expected an object with 'step' and 'score'")
    text = step.get("step")
    if not isinstance(text, str) or not text.strip():
        raise _err(where, field + ".step", "missing or empty text")
    score = step.get("score")
    if score is None and "num_mc_correct" in step and "num_mc_total" in step:
        try:
            score = float(step["num_mc_correct"]) / float(step["num_mc_total"])
        except (TypeError, ValueError, ZeroDivisionError, OverflowError):
            raise _err(where, field + ".num_mc_total", "cannot compute a score") from None
    try:
        finite = not isinstance(score, bool) and isinstance(score, (int, float)) and math.isfinite(score)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite:
        raise _err(where, field + ".score", f"not a finite number ({str(score)[:40]})")
    return text.strip(), float(score)


def convert_record(rec, where: str, stem: str, mc_threshold: float = DEFAULT_MC_THRESHOLD,
                   image_root: str | None = None) -> dict | None:
    """One VisualPRM400K-Raw record -> one training record (see module docstring); None for a
    record with several images (a training record holds one)."""
    if not isinstance(rec, dict):
        raise _err(where, "<record>", "expected a JSON object")
    if "steps_with_score" not in rec:
        hint = " (a conversation-form release; use the -Raw annotations)" if "conversations" in rec else ""
        raise _err(where, "steps_with_score", "missing" + hint)
    q = rec.get("question")
    if not isinstance(q, str) or not q.strip():
        raise _err(where, "question", "missing or empty")
    image = rec.get("image")
    if isinstance(image, list) and image and all(isinstance(x, str) and x for x in image):
        if len(set(image)) > 1:
            return None
        image = image[0]
    elif not isinstance(image, str) or not image:
        raise _err(where, "image", "missing or not a path (string or list of strings)")
    if image_root:
        image = str(Path(image_root) / image)
    steps = rec["steps_with_score"]
    if not isinstance(steps, list) or not steps:
        raise _err(where, "steps_with_score", "expected a non-empty list")
    dataset = next((rec[k] for k in ("dataset", "data_source", "source") if isinstance(rec.get(k), str) and rec[k]), stem)
    rid = rec.get("id", f"{stem}:{where.rsplit(':', 1)[1]}")
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise _err(where, "id", "expected a string or a number")
    conv = [{"from": "human", "value": "### Question:\n" + _IMAGE_TAG.sub("", q).strip()}]
    scores = []
    for i, s in enumerate(steps):
        text, score = _step_score(s, where, i)
        scores.append(score)
        conv += [{"from": "human", "value": text}, {"from": "gpt", "value": "+" if score > mc_threshold else "-"}]
    return {"id": rid, "image": image, "conversations": conv, "dataset": dataset}


def is_positive(rec: dict) -> bool:
    """True when every step label is '+'."""
    return all(t["value"] == "+" for t in rec["conversations"] if t["from"] == "gpt")


def select(records: list[dict], num_samples: int | None, seed: int, balance: bool = True) -> list[dict]:
    """Deterministic (balanced) subset; see the module docstring."""
    rng = random.Random(seed)
    ordered = sorted(records, key=lambda r: str(r["id"]))
    if not balance:
        n = len(ordered) if num_samples is None else min(num_samples, len(ordered))
        return rng.sample(ordered, n)
    pos = [r for r in ordered if is_positive(r)]
    neg = [r for r in ordered if not is_positive(r)]
    k = min(len(pos), len(neg)) if num_samples is None else min(num_samples // 2, len(pos), len(neg))
    chosen = rng.sample(pos, k) + rng.sample(neg, k)
    rng.shuffle(chosen)
    return chosen


def stats(records_read: int, chosen: list[dict], several_images: int = 0) -> dict:
    per = defaultdict(Counter)
    total = Counter()
    for r in chosen:
        labels = [t["value"] for t in r["conversations"] if t["from"] == "gpt"]
        c = Counter(instances=1, positive_instances=int(is_positive(r)), negative_instances=int(not is_positive(r)),
                    steps=len(labels), positive_steps=labels.count("+"), negative_steps=labels.count("-"))
        per[r["dataset"]].update(c)
        total.update(c)
    keys = ("instances", "positive_instances", "negative_instances", "steps", "positive_steps", "negative_steps")
    return {"records_read": records_read, "skipped_several_images": several_images,
            **{k: total[k] for k in keys},
            "per_dataset": {d: {k: per[d][k] for k in keys} for d in sorted(per)}}


def prepare(paths, num_samples: int | None = None, seed: int = 0, mc_threshold: float = DEFAULT_MC_THRESHOLD,
            balance: bool = True, image_root: str | None = None) -> tuple[list[dict], dict]:
    """Read, convert, check ids, select. Returns (records, counts)."""
    out, seen, n, several = [], {}, 0, 0
    for where, stem, rec in iter_records(paths):
        n += 1
        r = convert_record(rec, where, stem, mc_threshold, image_root)
        if r is None:
            several += 1
            continue
        key = str(r["id"])
        if key in seen:
            raise _err(where, "id", f"duplicate id {r['id']!r} (first at {seen[key]})")
        seen[key] = where
        out.append(r)
    if n == 0:
        raise DataError(f"{' '.join(map(str, paths))}: no records in the input")
    chosen = select(out, num_samples, seed, balance)
    return chosen, stats(n, chosen, several)


def output_problem(output: Path, inputs: list[Path]) -> str | None:
    """Why ``output`` cannot be written as the result of reading ``inputs`` (None: it can)."""
    try:
        if output.is_dir():
            return f"{output}: is a folder; give the output a file name, e.g. {output / 'train.json'}"
    except (OSError, ValueError) as exc:
        return f"{output!r}: not a usable path ({exc})"
    for f in inputs:
        if same_file(output, f):
            return f"{output}: is also an input file; write the output to another file"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="VisualPRM400K(-Raw) annotations -> DreamPRM training JSON")
    ap.add_argument("inputs", nargs="+", help=".jsonl/.json annotation files or folders of them")
    ap.add_argument("--output", "-o", required=True, help="training JSON (a list of records) to write")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--preset", choices=sorted(PRESETS), help="table=12k, net=100k, coldstart=20k instances")
    g.add_argument("--num_samples", type=int, help="instances to keep (default: all, balanced)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mc_threshold", type=float, default=DEFAULT_MC_THRESHOLD,
                    help="a step is '+' iff its MC score is greater than this (VisualPRM: 0)")
    ap.add_argument("--no_balance", action="store_true", help="sample uniformly instead of balancing +/- instances")
    ap.add_argument("--image_root", default=None, help="prefix joined to every image path")
    args = ap.parse_args(argv)
    n = PRESETS[args.preset] if args.preset else args.num_samples
    if n is not None and n <= 0:
        ap.error("--num_samples must be positive")
    if not math.isfinite(args.mc_threshold):
        print(f"error: --mc_threshold must be a finite number, got {args.mc_threshold}", file=sys.stderr)
        return 2
    output = Path(args.output)
    try:
        problem = output_problem(output, input_files(args.inputs))
        if problem:
            raise DataError(problem)
        records, counts = prepare(args.inputs, n, args.seed, args.mc_threshold, not args.no_balance, args.image_root)
        write_json(output, records, DataError)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if n is not None and len(records) < n:
        counts["shortfall"] = n - len(records)
    counts["output"] = args.output
    print(json.dumps(counts, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
