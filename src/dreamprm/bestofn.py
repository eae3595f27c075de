"""Best-of-N evaluation: score every candidate's steps, aggregate, select, report.

Scoring (``Scorer``) is efficient by construction:

* a question's image is tiled and run through the vision tower **once**
  (``ProcessRewardModel.image_features``); every candidate of that question reuses the features;
* the token prefix all candidates of a question share (system prompt, image, question turn) is
  run through the language model once and its key/value cache is reused by every candidate
  (``prefix_cache=True``, the default; ``False`` runs each candidate's full sequence);
* candidates go through the language model in batches of ``batch_size`` (sorted by length to
  keep padding small; right padding + attention mask);
* the LM head runs at the label positions only, with the full-vocabulary softmax the method
  defines;
* candidates whose steps are identical are scored once, so they get identical scores whatever
  batch or position they would have landed in.

Step scores are computed as upstream's test path computes them (``score_dtype="model"``, the
default): the softmax of the label logits in the model's dtype (bf16 for a bf16 model, with no
upcast), and the ``mean`` aggregate in that dtype too. bf16 rounds scores near 1 to steps of
~0.004, so ties are common, and the tie rule below decides them. ``score_dtype="fp32"`` computes
softmax and mean in fp32 instead (fewer ties; not upstream's numbers).

The scores equal the naive path (one ``ProcessRewardModel.forward`` per candidate with its own
``pixel_values``) to float tolerance; ``tests/test_bestofn.py`` checks this.

``evaluate`` overlaps the CPU half of a question (decoding the image file, tiling and normalising
it: ``Scorer.prepare_image``) with the scoring of the previous one: a background thread prepares
up to ``prefetch`` questions ahead (default 2; 0 = serial), with identical results and errors.

Aggregation of a candidate's step scores p₁…pₙ (``AGGREGATIONS``):

* ``mean``: Σp/n, in the scoring dtype (upstream's score);  ``max``/``min``: max/min p;
* ``log_mean``: Σlog p/n;  ``log_odds`` (DreamPRM): Σ log(p/(1−p)) / n, both in float64 on the
  step scores (upstream's test path has neither).
* For ``log_mean`` and ``log_odds`` p is clamped to [1e-6, 1 − 1e-6] first (``EPS``).
* A candidate with no step (empty text) aggregates to −inf, so it is never selected unless
  every candidate is empty; it is written as ``null`` in the JSON.

Selection: the candidate with the highest aggregate; **ties go to the later candidate**, as
upstream's ``if score >= max_score`` does; a NaN score is never selected (all NaN: the first).

Baselines, on the same questions:

* ``pass@1``: the first candidate is correct;
* ``random``: the expected accuracy of a uniformly random pick = fraction of correct candidates;
* ``oracle``: at least one candidate is correct;
* ``self_consistency``: majority vote over ``extract_answer`` texts normalised by case-folding
  and collapsing whitespace. Candidates without an answer do not vote. A tie in votes goes to
  the answer whose first occurrence (lowest candidate index) is earliest; the selected
  candidate is the first one carrying the winning answer. When no candidate has an answer the
  first candidate is selected (= pass@1 for that question).

Accuracy vs N: for each N = 1 … max candidates, each question keeps a uniformly random subset of
min(N, its candidate count) candidates (in their original order, so ties still go to the
later one); accuracies are averaged over ``draws`` subsets drawn with ``random.Random(seed)``.
"""

from __future__ import annotations

import copy
import math
import os
import random
import sys
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Callable, Sequence

EPS = 1e-6
SCORE_DTYPES = ("model", "fp32")
AGGREGATION_NAMES = ("mean", "log_mean", "max", "min", "log_odds")
BASELINE_NAMES = ("pass@1", "random", "oracle", "self_consistency")


# -- aggregation ------------------------------------------------------------------------------
def _clamp(p: float) -> float:
    return min(max(float(p), EPS), 1.0 - EPS)


def agg_mean(ps: Sequence[float], dtype=None) -> float:
    """Σp/n; with ``dtype`` (a torch dtype) as ``torch.mean`` computes it in that dtype."""
    if not ps:
        return -math.inf
    if dtype is None:
        return sum(ps) / len(ps)
    import torch

    return float(torch.tensor(list(ps), dtype=dtype).mean())


def agg_log_mean(ps: Sequence[float]) -> float:
    return sum(math.log(_clamp(p)) for p in ps) / len(ps) if ps else -math.inf


def agg_max(ps: Sequence[float]) -> float:
    return float(max(ps)) if ps else -math.inf


def agg_min(ps: Sequence[float]) -> float:
    return float(min(ps)) if ps else -math.inf


def agg_log_odds(ps: Sequence[float]) -> float:
    if not ps:
        return -math.inf
    return sum(math.log(_clamp(p) / (1.0 - _clamp(p))) for p in ps) / len(ps)


AGGREGATIONS: dict[str, Callable[[Sequence[float]], float]] = {
    "mean": agg_mean,
    "log_mean": agg_log_mean,
    "max": agg_max,
    "min": agg_min,
    "log_odds": agg_log_odds,
}


def aggregate(step_scores: Sequence[Sequence[float]], name: str, dtype=None) -> list[float]:
    """One aggregate per candidate; ``dtype`` is the scoring dtype, used by ``mean``."""
    if name == "mean":
        return [agg_mean(list(ps), dtype) for ps in step_scores]
    fn = AGGREGATIONS[name]
    return [fn(list(ps)) for ps in step_scores]


def select(scores: Sequence[float]) -> int:
    """Index of the highest score; ties go to the LATER candidate (upstream's ``>=``); a NaN or
    None score is never selected, and when every score is one the first candidate is."""
    if not scores:
        raise ValueError("select() needs at least one candidate")
    best = None
    for i, s in enumerate(scores):
        if s is None or math.isnan(s):
            continue
        if best is None or s >= scores[best]:  # >=: a tie moves on to the later candidate
            best = i
    return 0 if best is None else best


# -- baselines ----------------------------------------------------------------------------------
def pass_at_1(true_false: Sequence[bool]) -> float:
    return float(bool(true_false[0]))


def random_pick(true_false: Sequence[bool]) -> float:
    return sum(bool(x) for x in true_false) / len(true_false)


def oracle(true_false: Sequence[bool]) -> float:
    return float(any(true_false))


def normalise_answer(answer: str) -> str:
    return " ".join(answer.split()).casefold()


def majority_index(answers: Sequence[str | None]) -> int:
    """Self-consistency selection over already extracted answers (None = no vote).

    The most frequent normalised answer wins; a tie goes to the answer that occurs first;
    the first candidate carrying it is returned; 0 when nobody votes.
    """
    norm = [normalise_answer(a) if a is not None and normalise_answer(a) else None for a in answers]
    votes = Counter(a for a in norm if a is not None)
    if not votes:
        return 0
    first = {}
    for i, a in enumerate(norm):
        if a is not None and a not in first:
            first[a] = i
    winner = max(votes, key=lambda a: (votes[a], -first[a]))
    return first[winner]


def self_consistency_index(candidates: Sequence[str]) -> int:
    from .steps import extract_answer

    return majority_index([extract_answer(c) for c in candidates])


# -- scoring --------------------------------------------------------------------------------
class Scorer:
    """Step scores p(+) for the candidates of a question, with the image encoded once."""

    def __init__(self, prm, max_patch_num: int = 12, batch_size: int = 8, prefix_cache: bool = True,
                 score_dtype: str = "model", splitter: str = "upstream"):
        from .examples import ExampleBuilder
        from .steps import SPLITTERS

        if score_dtype not in SCORE_DTYPES:
            raise ValueError(f"score_dtype must be one of {SCORE_DTYPES}, got {score_dtype!r}")
        if splitter not in SPLITTERS:
            raise ValueError(f"splitter must be one of {SPLITTERS}, got {splitter!r}")
        self.prm = prm.eval()
        self.builder = ExampleBuilder(prm.processor, max_patch_num)
        self.batch_size = max(1, int(batch_size))
        self.prefix_cache = bool(prefix_cache)
        self.score_dtype = score_dtype
        self.splitter = splitter
        tok = prm.processor.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    def describe(self) -> dict:
        """How scores are made, for the report: dtype, splitter, tie rule."""
        dtype = str(self.dtype).replace("torch.", "")
        how = "the model's dtype, as upstream" if self.score_dtype == "model" else "fp32 (--score_dtype fp32)"
        return {"score_dtype": dtype, "score_dtype_source": how, "step_splitter": self.splitter,
                "ties": "later candidate (upstream's >=)"}

    @property
    def dtype(self):
        """The dtype step scores (softmax) and the mean aggregate are computed in."""
        import torch

        return self.prm.model.dtype if self.score_dtype == "model" else torch.float32

    @property
    def device(self):
        return self.prm.device

    def prepare_image(self, image, pin_memory: bool = False):
        """The CPU half of scoring a question: ``image`` (a PIL image, a path, or None for text
        only) decoded, tiled and normalised into the (tiles, 3, T, T) pixel tensor that
        ``score_step_lists`` takes in its place; None stays None. ``pin_memory``: in page-locked
        memory (CUDA only) so the copy to the device can run asynchronously."""
        import torch
        from PIL import Image

        from .examples import load_rgb

        if image is None or isinstance(image, torch.Tensor):
            pv = image
        else:
            if isinstance(image, (str, os.PathLike)):
                image = load_rgb(image)
            elif isinstance(image, Image.Image):
                image = image.convert("RGB")
            pv = self.builder.pixel_values(image)
        if pin_memory and pv is not None and not pv.is_pinned():
            pv = pv.pin_memory()
        return pv

    def score_steps(self, image, question: str, steps: Sequence[str]) -> list[float]:
        """p(+) of every step of one candidate already split into ``steps``."""
        return self.score_step_lists(image, question, [list(steps)])[0]

    def score_candidates(self, image, question: str, candidates: Sequence[str]) -> list[list[float]]:
        """Split every candidate into steps (``steps.split_steps`` with this scorer's splitter)
        and score them all."""
        from .steps import split_steps

        return self.score_step_lists(image, question, [split_steps(c, self.splitter) for c in candidates])

    def score_step_lists(self, image, question: str, step_lists: Sequence[Sequence[str]]) -> list[list[float]]:
        """The core: ``image`` is a PIL image, a path, None (text only), or the pixel tensor
        ``prepare_image`` made of one (then no image work is done here)."""
        import torch

        from .prompt import candidate_conversation

        out: list[list[float]] = [[] for _ in step_lists]
        first_of: dict[tuple, int] = {}  # identical step lists are scored once
        for i, steps in enumerate(step_lists):
            if len(steps) > 0:
                first_of.setdefault(tuple(steps), i)
        todo = sorted(first_of.values())
        if not todo:
            return out
        pv = self.prepare_image(image)
        items = {}
        for i in todo:
            item = self.builder.build(candidate_conversation(question, list(step_lists[i])), pixel_values=pv)
            item["pixel_values"] = None  # the features are shared; never concatenate the tiles
            items[i] = item
        with torch.inference_mode():
            feats = None
            if pv is not None:
                feats = self.prm.image_features(pv.to(self.device, non_blocking=pv.is_pinned()))
            prefix = None
            if self.prefix_cache:
                first_label = min(int(items[i]["label_positions"].min()) for i in todo)
                prefix = self._encode_prefix([items[i]["input_ids"] for i in todo], feats, first_label)
            order = sorted(todo, key=lambda i: len(items[i]["input_ids"]))
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                probs = self._score_batch([items[i] for i in chunk], feats, prefix)
                for i, p in zip(chunk, probs):
                    out[i] = p
        for i, steps in enumerate(step_lists):
            if len(steps) > 0:
                out[i] = list(out[first_of[tuple(steps)]])
        return out

    def _encode_prefix(self, id_lists, feats, first_label: int):
        """Run the token prefix shared by all candidates once; return (length, cache) or None.

        The prefix stops before the first label position, so every position whose hidden
        state is read is computed in the (batched) suffix pass."""
        import torch

        first = id_lists[0]
        n = len(first)
        for ids in id_lists[1:]:
            m = min(n, len(ids))
            diff = (first[:m] != ids[:m]).nonzero()
            n = int(diff[0]) if len(diff) else m
        n = min(n, first_label)
        if n <= 0:
            return None
        ids = first[:n].unsqueeze(0).to(self.device)
        n_img = int((ids == self.prm.image_token_id).sum())
        if feats is not None and n_img != feats.shape[0]:
            return None  # the image is not wholly inside the shared prefix: no prefix reuse
        embeds = self.prm.embed(ids, feats)
        lm = self.prm.model.model.language_model
        out = lm(inputs_embeds=embeds, attention_mask=torch.ones_like(ids), use_cache=True)
        return n, out.past_key_values

    def _score_batch(self, items, feats, prefix) -> list[list[float]]:
        import torch

        from .examples import collate

        batch = collate(items, self.pad_id)
        ids = batch.input_ids.to(self.device)
        mask = batch.attention_mask.to(self.device)
        bsz = ids.shape[0]
        label_batch = batch.label_batch.to(self.device)
        label_pos = batch.label_pos.to(self.device)
        if prefix is None:
            f = feats.repeat(bsz, 1) if feats is not None else None
            hidden = self.prm.hidden_states(ids, mask, image_features=f)
        else:
            n, cache = prefix
            if int(label_pos.min()) < n:
                raise AssertionError("a label position falls inside the shared prefix")
            cache = copy.deepcopy(cache)
            if bsz > 1:
                cache.batch_repeat_interleave(bsz)
            suffix = ids[:, n:]
            embeds = self.prm.embed(suffix, None)
            length = suffix.shape[1]
            positions = torch.arange(n, n + length, device=self.device).unsqueeze(0).expand(bsz, -1)
            lm = self.prm.model.model.language_model
            hidden = lm(
                inputs_embeds=embeds,
                attention_mask=mask,  # full length: prefix (all ones) + suffix
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            ).last_hidden_state
            label_pos = label_pos - n
        # upstream: softmax over the full vocabulary in the model's dtype, p(+) at each label
        logits = self.prm.model.lm_head(hidden[label_batch, label_pos]).to(self.dtype)
        p = logits.softmax(-1)[:, self.prm.plus_id].float().cpu()  # bf16 -> fp32 is exact
        lb = label_batch.cpu()
        return [p[lb == b].tolist() for b in range(bsz)]


def load_scorer(
    name_or_path,
    device: str = "cpu",
    precision: str = "fp32",
    max_patch_num: int = 12,
    batch_size: int = 8,
    prefix_cache: bool = True,
    score_dtype: str = "model",
    splitter: str = "upstream",
) -> Scorer:
    """Load a PRM (a folder, ``tiny`` or a hub id) and wrap it in a ``Scorer``."""
    from .prm import ProcessRewardModel

    prm = ProcessRewardModel.from_pretrained(name_or_path, device=device, precision=precision)
    return Scorer(prm, max_patch_num=max_patch_num, batch_size=batch_size, prefix_cache=prefix_cache,
                  score_dtype=score_dtype, splitter=splitter)


# -- evaluation and report ----------------------------------------------------------------------
def _json_float(x: float):
    return x if math.isfinite(x) else None


def question_result(qid, true_false: Sequence[bool], step_scores: Sequence[Sequence[float]], dtype=None) -> dict:
    """Aggregates and selections of one question; ``dtype``: the scoring dtype (for ``mean``)."""
    scores = {name: aggregate(step_scores, name, dtype) for name in AGGREGATION_NAMES}
    return {
        "id": qid,
        "true_false": [bool(x) for x in true_false],
        "step_scores": [[float(p) for p in ps] for ps in step_scores],
        "scores": scores,
        "selected": {name: select(scores[name]) for name in AGGREGATION_NAMES},
    }


def summarise(questions: Sequence[dict], candidates: Sequence[Sequence[str]]) -> dict:
    """The summary block: accuracies of every aggregation and the baselines, as fractions."""
    n = len(questions)
    if n == 0:
        raise ValueError("no questions to summarise")
    acc = {
        name: sum(q["true_false"][q["selected"][name]] for q in questions) / n for name in AGGREGATION_NAMES
    }
    sc = sum(q["true_false"][self_consistency_index(c)] for q, c in zip(questions, candidates)) / n
    return {
        "n_questions": n,
        "accuracy": acc,
        "pass@1": sum(pass_at_1(q["true_false"]) for q in questions) / n,
        "random": sum(random_pick(q["true_false"]) for q in questions) / n,
        "oracle": sum(oracle(q["true_false"]) for q in questions) / n,
        "self_consistency": sc,
    }


def build_report(questions: Sequence[dict], candidates: Sequence[Sequence[str]], scoring: dict | None = None) -> dict:
    """``{"summary": ..., "questions": ...}`` with non-finite aggregates written as None;
    ``scoring`` (``Scorer.describe()``) says how the scores were made."""
    out_q = []
    for q in questions:
        q = dict(q)
        q["scores"] = {k: [_json_float(v) for v in vals] for k, vals in q["scores"].items()}
        out_q.append(q)
    summary = summarise(questions, candidates)
    if scoring is not None:
        summary["scoring"] = dict(scoring)
    return {"summary": summary, "questions": out_q}


def accuracy_vs_n(
    questions: Sequence[dict],
    candidates: Sequence[Sequence[str]],
    draws: int = 20,
    seed: int = 0,
) -> dict:
    """Accuracy of every aggregation and of random/oracle/self-consistency vs the number N of
    candidates, each question keeping a random subset of min(N, its count), averaged over draws."""
    from .steps import extract_answer

    answers = [[extract_answer(c) for c in cands] for cands in candidates]
    max_n = max(len(q["true_false"]) for q in questions)
    names = list(AGGREGATION_NAMES) + ["random", "oracle", "self_consistency"]
    curve = {"n": list(range(1, max_n + 1)), "draws": draws, "seed": seed}
    curve.update({k: [] for k in names})
    rng = random.Random(seed)
    for n in range(1, max_n + 1):
        totals = dict.fromkeys(names, 0.0)
        for _ in range(draws):
            for q, ans in zip(questions, answers):
                k = len(q["true_false"])
                idx = sorted(rng.sample(range(k), min(n, k)))
                tf = [q["true_false"][i] for i in idx]
                for name in AGGREGATION_NAMES:
                    totals[name] += tf[select([q["scores"][name][i] for i in idx])]
                totals["random"] += random_pick(tf)
                totals["oracle"] += oracle(tf)
                totals["self_consistency"] += tf[majority_index([ans[i] for i in idx])]
        denom = draws * len(questions)
        for name in names:
            curve[name].append(totals[name] / denom)
    return curve


def plot_curve(curve: dict, path, aggregations: Sequence[str] = AGGREGATION_NAMES) -> Path:
    """Accuracy vs N figure (matplotlib, Agg backend)."""
    from .figures import plt, save_figure  # figures selects the Agg backend

    fig, ax = plt.subplots(figsize=(7.5, 4))
    xs = curve["n"]
    for name in aggregations:
        ax.plot(xs, [100 * v for v in curve[name]], marker="o", label=f"PRM {name}")
    styles = {"random": (":", "gray"), "oracle": ("--", "black"), "self_consistency": ("-.", "tab:brown")}
    for name, (style, color) in styles.items():
        ax.plot(xs, [100 * v for v in curve[name]], linestyle=style, color=color, label=name.replace("_", "-"))
    ax.set_xlabel("N (candidates per question)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Best-of-N accuracy ({curve['draws']} random subsets per N)")
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(fig, path)


def _ahead(fn, items, depth: int):
    """``fn(item)`` for every item, in order. With ``depth`` > 0 one background thread computes up
    to ``depth`` items ahead of the one being consumed; an exception raised by ``fn`` is raised
    here, at its item. Close the generator to stop the thread early (pending items are dropped)."""
    if depth <= 0:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bestofn-prefetch")
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)


def evaluate(
    scorer: Scorer,
    records: Sequence[dict],
    json_path,
    progress: bool = True,
    prefetch: int = 2,
) -> tuple[list[dict], list[list[str]]]:
    """Score every record's candidates; return the per-question results and the candidates.

    While a question is scored, the images of the next ``prefetch`` questions are decoded and
    tiled in a background thread (``Scorer.prepare_image``; pinned memory on CUDA); 0 does it
    serially. The results are the same either way, in record order, and an unreadable image
    raises the same exception at the same question."""
    import torch
    from tqdm import tqdm

    from .data import resolve_image

    pin = prefetch > 0 and torch.device(scorer.device).type == "cuda"

    def prepare(rec):
        return scorer.prepare_image(resolve_image(rec["image_path"], json_path), pin_memory=pin)

    questions, candidates = [], []
    with closing(_ahead(prepare, records, prefetch)) as pixels:
        bar = tqdm(records, desc="best-of-N", unit="question", disable=not progress)
        for index, (rec, pv) in enumerate(zip(bar, pixels)):
            step_scores = scorer.score_candidates(pv, rec["question"], rec["candidates"])
            questions.append(question_result(rec.get("id", index), rec["true_false"], step_scores, scorer.dtype))
            candidates.append(list(rec["candidates"]))
    return questions, candidates


def format_table(summary: dict, aggregations: Sequence[str] = AGGREGATION_NAMES) -> str:
    rows = [(f"PRM {name}", summary["accuracy"][name]) for name in aggregations]
    rows += [(name, summary[name]) for name in BASELINE_NAMES]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'method':<{width}}  accuracy", f"{'-' * width}  --------"]
    lines += [f"{name:<{width}}  {100 * v:7.2f}%" for name, v in rows]
    lines.append(f"{'questions':<{width}}  {summary['n_questions']:8d}")
    return "\n".join(lines)


def data_error_lines(message: str) -> list[str]:
    """A DataError message as ``error: <file>: record i (id ..): <problem>`` lines."""
    lines = [l for l in str(message).splitlines() if l.strip()]
    if len(lines) > 1 and "bad records" in lines[0]:
        out = [f"error: {l}" for l in lines[1:]]
        out[-1] += " (use --skip_bad_records to drop bad records)"
        return out
    return [f"error: {l}" for l in lines]


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run(args) -> int:
    """The ``test.py`` command: returns the exit code (2 for bad input)."""
    import json

    from .data import DataError, load_records

    try:
        records, report = load_records(args.test_json_file, "test", skip_bad=args.skip_bad_records)
    except DataError as exc:
        for line in data_error_lines(str(exc)):
            print(line, file=sys.stderr)
        return 2
    if report.skipped:
        for line in report.problems:
            print(f"warning: skipped {line}", file=sys.stderr)
        print(f"skipped {report.skipped} bad records; evaluating {len(records)}", file=sys.stderr)

    model = str(args.reward_model)
    looks_local = model.startswith((".", "/", "~")) or Path(model).expanduser().exists()
    if model != "tiny" and looks_local and not (Path(model).expanduser() / "config.json").exists():
        print(f"error: reward model folder not found or without config.json: {model} "
              "(pass --reward_model a trained folder, a hub id, or 'tiny')", file=sys.stderr)
        return 2

    device = args.device or _default_device()
    precision = args.precision or ("bf16" if str(device).startswith("cuda") else "fp32")
    try:
        scorer = load_scorer(model, device=device, precision=precision, max_patch_num=args.max_patch_num,
                             batch_size=args.batch_size, score_dtype=args.score_dtype, splitter=args.step_splitter)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: cannot load reward model {model!r}: {first}", file=sys.stderr)
        return 2
    questions, candidates = evaluate(scorer, records, args.test_json_file, prefetch=args.prefetch)
    scoring = scorer.describe()
    result = build_report(questions, candidates, scoring)

    out = Path(args.output_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    chosen = list(AGGREGATION_NAMES) if args.aggregation_function == "all" else [args.aggregation_function]
    curve = accuracy_vs_n(questions, candidates)
    figs = Path(args.figs_dir)
    fig = plot_curve(curve, figs / "bestofn_accuracy_vs_n.png", chosen)
    with open(figs / "bestofn_accuracy_vs_n.json", "w", encoding="utf-8") as f:
        json.dump(curve, f, indent=1)

    print(f"{report.summary()}; reward model {model} on {device} ({precision})")
    print(f"scores: softmax and mean in {scoring['score_dtype']} ({scoring['score_dtype_source']}); "
          f"steps: {scoring['step_splitter']} splitter; ties: {scoring['ties']}")
    print(format_table(result["summary"], chosen))
    print(f"results: {out}")
    print(f"figure:  {fig} (curve data: {figs / 'bestofn_accuracy_vs_n.json'})")
    if report.skipped:
        print(f"skipped {report.skipped} bad records")
    return 0
