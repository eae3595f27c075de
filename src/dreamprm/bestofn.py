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

Sequence length (``max_length``, tokens; default the language model's
``max_position_embeddings``). Every candidate is tokenised (a list of ids, no tensor) before
anything is built for the model. A candidate longer than ``max_length`` (prompt, image tokens and
steps) is scored over the longest prefix of its steps that fits, which gives those steps exactly
the scores they get in the whole sequence (the model is causal); it is *truncated*. When not even
its first step fits it is *unscorable*: it gets no step score and is never selected. The report
lists both per question and counts them in the summary.

Non-finite step scores (NaN or inf: a diverged model) stop ``evaluate`` with
``NonFiniteScoresError`` unless ``allow_nonfinite=True``; then such a candidate's aggregates are
NaN, it is never selected, and the report lists and counts it. The JSON report is strict JSON:
every non-finite number is written as ``null``.

``evaluate`` overlaps the CPU half of a question (decoding the image file, tiling and normalising
it: ``Scorer.prepare_image``) with the scoring of the previous one: a background thread prepares
up to ``prefetch`` questions ahead (default 2; 0 = serial), with identical results and errors.

Aggregation of a candidate's step scores (``dreamprm.aggregation``, the function the meta loss
trains with, so the report shows the values the meta loss sees): ``mean`` in the scoring dtype
(upstream's score), ``log_mean`` (geometric mean), ``max``, ``min`` and ``log_odds`` (DreamPRM's
sigmoid of the mean step log-odds) in float64; all in [0, 1].

* A candidate with no step (empty text under the ``clean`` splitter) aggregates to −inf, so it is
  never selected unless no other candidate has a number; it is written as ``null`` in the JSON.
* An unscorable candidate, or one with a non-finite step score, aggregates to NaN (``null``).

Selection (``select``): the candidate with the highest aggregate; **ties go to the later
candidate**, as upstream's ``if score >= max_score`` does; a NaN (or None) aggregate is never
selected, except that when every candidate has one the first is (as upstream's loop does).
Equivalently, ``selection_order`` ranks a question's candidates: numbers by (aggregate, index)
descending, then the NaN ones by ascending index; ``select`` returns the first of that order.

Baselines, on the same questions, with c correct candidates out of a question's k:

* ``pass@1``: the expected accuracy of one candidate drawn uniformly at random, estimated
  without bias as c/k per question and averaged over questions. It is also the "random choice"
  baseline: picking a candidate at random *is* drawing one sample, so the two are one number
  (the report keeps the name ``pass@1``);
* ``first_candidate``: the accuracy of always taking the first candidate (the sample a
  generator returned first; not an unbiased pass@1, since candidate files are often ordered);
* ``oracle``: at least one candidate is correct (pass@k over all k candidates);
* ``self_consistency``: majority vote over ``extract_answer`` texts normalised by case-folding
  and collapsing whitespace. Candidates without an answer do not vote. A tie in votes goes to
  the answer whose first occurrence (lowest candidate index) is earliest; the selected
  candidate is the first one carrying the winning answer. When no candidate has an answer the
  first candidate is selected.

Accuracy vs N (``accuracy_vs_n``): for N = 1 … the largest k, each question keeps a uniformly
random subset of min(N, k) of its candidates (in their original order), a method selects one of
them, and the curve is the *expected* accuracy of that choice, averaged over questions:

* every PRM aggregation, exactly: with r_i the number of candidates ranked above candidate i in
  ``selection_order``, candidate i is chosen with probability C(k−1−r_i, N−1) / C(k, N);
* ``random``: a uniformly random candidate of the subset, c/k at every N (= pass@1);
* ``oracle``: pass@N = 1 − C(k−c, N) / C(k, N) (the unbiased pass@N estimator);
* ``self_consistency``: exact, by enumerating every subset, where a question has at most
  ``exact_limit`` subsets of size N (always at N = 1 and N = k); otherwise the mean over
  ``draws`` random subsets drawn with ``random.Random(seed)`` (``self_consistency_exact`` in the
  curve data says which N are exact).

So the N = 1 point of every method equals pass@1, and the N = k point of a PRM aggregation
equals its accuracy in the summary, exactly (per-question values are exact ratios of integers,
averaged with ``math.fsum``).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import re
import signal
import sys
import textwrap
import threading
from bisect import bisect_right
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from functools import lru_cache
from itertools import combinations
from pathlib import Path
from typing import Callable, Sequence

from .aggregation import AGGREGATIONS, aggregate_lists

SCORE_DTYPES = ("model", "fp32")
AGGREGATION_NAMES = AGGREGATIONS
BASELINE_NAMES = ("pass@1", "first_candidate", "oracle", "self_consistency")
CURVE_BASELINES = ("random", "oracle", "self_consistency")
EXACT_LIMIT = 256  # self-consistency: subsets enumerated per question and N before sampling instead

# Exit codes of test.py (``run``).
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_DIVERGED = 0, 1, 2, 3

DEFINITIONS = {
    "pass@1": "expected accuracy of one uniformly random candidate: c/k per question (c correct of k), "
              "averaged over questions; the same number as a random pick",
    "first_candidate": "accuracy of always taking each question's first candidate",
    "oracle": "a question counts when at least one of its candidates is correct (pass@k)",
    "self_consistency": "majority vote over the normalised 'Answer:' texts; ties to the earliest answer",
    "accuracy_vs_n": "expected accuracy when each question keeps a uniformly random subset of min(N, k) "
                     "candidates: exact for the PRM aggregations (C(k-1-r, N-1)/C(k, N) for the candidate "
                     "with r candidates ranked above it), random (c/k) and oracle (1 - C(k-c, N)/C(k, N)); "
                     "self-consistency exact where a question has at most exact_limit subsets, else the mean "
                     "over `draws` random subsets",
}


def aggregate(step_scores: Sequence[Sequence[float]], name: str, dtype=None) -> list[float]:
    """One aggregate per candidate (``dreamprm.aggregation``, the meta loss's own function):
    ``mean`` in the scoring ``dtype`` when one is given (upstream's score), the others in float64."""
    import torch

    return aggregate_lists(step_scores, name, dtype if (name == "mean" and dtype is not None) else torch.float64)


def _no_number(s) -> bool:
    return s is None or math.isnan(s)


def select(scores: Sequence[float]) -> int:
    """Index of the highest score; ties go to the LATER candidate (upstream's ``>=``); a NaN or
    None score is never selected, and when every score is one the first candidate is."""
    if not scores:
        raise ValueError("select() needs at least one candidate")
    best = None
    for i, s in enumerate(scores):
        if _no_number(s):
            continue
        if best is None or s >= scores[best]:  # >=: a tie moves on to the later candidate
            best = i
    return 0 if best is None else best


def selection_order(scores: Sequence[float]) -> list[int]:
    """The candidates ranked as ``select`` prefers them, best first: the ones with a number by
    (score, index) descending (a tie goes to the later candidate), then the NaN/None ones by
    ascending index. ``select`` on any subset returns the subset's first in this order."""
    ranked = sorted((i for i, s in enumerate(scores) if not _no_number(s)), key=lambda i: (scores[i], i), reverse=True)
    return ranked + [i for i, s in enumerate(scores) if _no_number(s)]


# -- baselines ----------------------------------------------------------------------------------
def pass_at_1(true_false: Sequence[bool]) -> float:
    """Expected accuracy of one uniformly random candidate: c/k (unbiased pass@1)."""
    return sum(bool(x) for x in true_false) / len(true_false)


random_pick = pass_at_1  # a random pick is one random sample: the same number


def first_candidate(true_false: Sequence[bool]) -> float:
    return float(bool(true_false[0]))


def oracle(true_false: Sequence[bool]) -> float:
    return float(any(true_false))


def normalise_answer(answer: str) -> str:
    return " ".join(answer.split()).casefold()


def _normalised_votes(answers: Sequence[str | None]) -> list[str | None]:
    return [normalise_answer(a) if a is not None and normalise_answer(a) else None for a in answers]


def _majority_of_normalised(norm: Sequence[str | None]) -> int:
    votes = Counter(a for a in norm if a is not None)
    if not votes:
        return 0
    first = {}
    for i, a in enumerate(norm):
        if a is not None and a not in first:
            first[a] = i
    winner = max(votes, key=lambda a: (votes[a], -first[a]))
    return first[winner]


def majority_index(answers: Sequence[str | None]) -> int:
    """Self-consistency selection over already extracted answers (None = no vote).

    The most frequent normalised answer wins; a tie goes to the answer that occurs first;
    the first candidate carrying it is returned; 0 when nobody votes.
    """
    return _majority_of_normalised(_normalised_votes(answers))


def self_consistency_index(candidates: Sequence[str]) -> int:
    from .steps import extract_answer

    return majority_index([extract_answer(c) for c in candidates])


def _mean(values) -> float:
    values = list(values)
    return math.fsum(values) / len(values)


# -- scoring --------------------------------------------------------------------------------
class StepScores(list):
    """What ``Scorer.score_step_lists`` returns: a list with one list of step scores per candidate,
    plus ``n_steps``, each candidate's step count before any ``max_length`` truncation. A
    candidate scored over fewer steps than it has is truncated; one scored over none although it
    has steps is unscorable."""

    def __init__(self, scores=(), n_steps: Sequence[int] = ()):
        super().__init__(scores)
        self.n_steps = list(n_steps)

    @property
    def truncated(self) -> list[int]:
        return [i for i, (ps, n) in enumerate(zip(self, self.n_steps)) if 0 < len(ps) < n]

    @property
    def unscorable(self) -> list[int]:
        return [i for i, (ps, n) in enumerate(zip(self, self.n_steps)) if n > 0 and not ps]


def model_max_length(prm) -> int | None:
    """The longest sequence the language model was built for (``max_position_embeddings`` of its
    text config), or None when the config does not say."""
    config = prm.model.config
    for cfg in (getattr(config, "text_config", None), getattr(config, "llm_config", None), config):
        n = getattr(cfg, "max_position_embeddings", None) if cfg is not None else None
        if isinstance(n, int) and n > 0:
            return n
    return None


class Scorer:
    """Step scores p(+) for the candidates of a question, with the image encoded once.

    ``max_length``: the longest token sequence (prompt + image tokens + steps) a candidate is
    scored over; None = the model's ``max_position_embeddings`` (see the module docstring)."""

    def __init__(self, prm, max_patch_num: int = 12, batch_size: int = 8, prefix_cache: bool = True,
                 score_dtype: str = "model", splitter: str = "upstream", max_length: int | None = None):
        from .examples import ExampleBuilder
        from .steps import SPLITTERS

        if score_dtype not in SCORE_DTYPES:
            raise ValueError(f"score_dtype must be one of {SCORE_DTYPES}, got {score_dtype!r}")
        if splitter not in SPLITTERS:
            raise ValueError(f"splitter must be one of {SPLITTERS}, got {splitter!r}")
        if max_length is not None and int(max_length) < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        self.prm = prm.eval()
        self.builder = ExampleBuilder(prm.processor, max_patch_num)
        self.batch_size = max(1, int(batch_size))
        self.prefix_cache = bool(prefix_cache)
        self.score_dtype = score_dtype
        self.splitter = splitter
        self.max_length = int(max_length) if max_length is not None else model_max_length(prm)
        tok = prm.processor.tokenizer
        self.tokenizer = tok
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        # Over-long candidates are measured and truncated here, so the tokenizer's own warning
        # ("... will result in indexing errors") would be wrong; it is one flag per tokenizer.
        warned = getattr(tok, "deprecation_warnings", None)
        if isinstance(warned, dict):
            warned["sequence-length-is-longer-than-the-specified-maximum"] = True

    def describe(self) -> dict:
        """How scores are made, for the report: dtype, splitter, tie rule, length limit."""
        dtype = str(self.dtype).replace("torch.", "")
        how = "the model's dtype, as upstream" if self.score_dtype == "model" else "fp32 (--score_dtype fp32)"
        return {"score_dtype": dtype, "score_dtype_source": how, "step_splitter": self.splitter,
                "ties": "later candidate (upstream's >=)", "max_length": self.max_length}

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

    def score_candidates(self, image, question: str, candidates: Sequence[str]) -> StepScores:
        """Split every candidate into steps (``steps.split_steps`` with this scorer's splitter)
        and score them all."""
        from .steps import split_steps

        return self.score_step_lists(image, question, [split_steps(c, self.splitter) for c in candidates])

    def fit(self, question: str, steps: Sequence[str], num_image_tokens: int):
        """``(encoding, kept)``: the token ids of the conversation over the first ``kept`` steps,
        the most that fit in ``max_length`` tokens (all of them when the whole fits); ``(None, 0)``
        when not even the first step fits. Only id lists are built, never a tensor."""
        from .prompt import candidate_conversation, encode_conversation

        steps = list(steps)
        enc = encode_conversation(self.tokenizer, candidate_conversation(question, steps), num_image_tokens)
        limit = self.max_length
        if limit is None or len(enc.input_ids) <= limit:
            return enc, len(steps)
        # Every step turn ends the same way (label, end of turn), so the conversation over the first
        # j steps is the prefix of these ids that ends as many tokens after label j's position as
        # the whole ends after the last label's.
        tail = len(enc.input_ids) - enc.label_positions[-1]
        kept = bisect_right([p + tail for p in enc.label_positions], limit)
        while kept > 0:  # re-encoded to be sure: the ids of exactly what is scored
            enc = encode_conversation(self.tokenizer, candidate_conversation(question, steps[:kept]), num_image_tokens)
            if len(enc.input_ids) <= limit:
                return enc, kept
            kept -= 1
        return None, 0

    def score_step_lists(self, image, question: str, step_lists: Sequence[Sequence[str]]) -> StepScores:
        """The core: ``image`` is a PIL image, a path, None (text only), or the pixel tensor
        ``prepare_image`` made of one (then no image work is done here)."""
        import torch

        from .prompt import PromptError

        out = StepScores([[] for _ in step_lists], [len(steps) for steps in step_lists])
        first_of: dict[tuple, int] = {}  # identical step lists are scored once
        for i, steps in enumerate(step_lists):
            if len(steps) > 0:
                first_of.setdefault(tuple(steps), i)
        todo = sorted(first_of.values())
        if not todo:
            return out
        pv = self.prepare_image(image)
        n_img = 0 if pv is None else pv.shape[0] * self.builder.tokens_per_tile
        items = {}
        for i in todo:
            try:
                enc, kept = self.fit(question, step_lists[i], n_img)
            except PromptError as exc:
                raise PromptError(f"candidate {i}: {exc}") from exc
            if enc is None:
                continue  # unscorable: not even the first step fits in max_length
            items[i] = {"input_ids": torch.tensor(enc.input_ids, dtype=torch.long),
                        "label_positions": torch.tensor(enc.label_positions, dtype=torch.long),
                        "labels": torch.tensor(enc.labels, dtype=torch.float32),
                        "pixel_values": None}  # the features are shared; never concatenate the tiles
        todo = [i for i in todo if i in items]
        if todo:
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


def default_device() -> str:
    """test.py's device: cuda when available, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_precision(device) -> str:
    """test.py's precision: bf16 on cuda, fp32 elsewhere."""
    return "bf16" if str(device).startswith("cuda") else "fp32"


def load_scorer(
    name_or_path,
    device: str | None = None,
    precision: str | None = None,
    max_patch_num: int = 12,
    batch_size: int = 8,
    prefix_cache: bool = True,
    score_dtype: str = "model",
    splitter: str = "upstream",
    max_length: int | None = None,
) -> Scorer:
    """Load a PRM (a folder, ``tiny`` or a hub id) and wrap it in a ``Scorer``. ``device`` and
    ``precision`` default as test.py's do: cuda when available (else cpu), bf16 on cuda (else
    fp32); ``max_length`` defaults to the model's ``max_position_embeddings``."""
    from .prm import ProcessRewardModel

    device = device or default_device()
    precision = precision or default_precision(device)
    prm = ProcessRewardModel.from_pretrained(name_or_path, device=device, precision=precision)
    return Scorer(prm, max_patch_num=max_patch_num, batch_size=batch_size, prefix_cache=prefix_cache,
                  score_dtype=score_dtype, splitter=splitter, max_length=max_length)


# -- evaluation and report ----------------------------------------------------------------------
def strict_json(obj):
    """``obj`` with every non-finite float replaced by None, so ``json.dumps(allow_nan=False)``
    writes it (as ``null``) instead of the bare ``NaN``/``Infinity`` no JSON parser must accept."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def write_json(path, obj) -> Path:
    """Write ``obj`` as strict JSON (non-finite numbers as null) to ``path``, atomically: a reader,
    or a run stopped mid-write, never sees half a file. The folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(strict_json(obj), indent=1, allow_nan=False) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    return path


def question_result(qid, true_false: Sequence[bool], step_scores: Sequence[Sequence[float]], dtype=None,
                    n_steps: Sequence[int] | None = None) -> dict:
    """Aggregates and selections of one question; ``dtype``: the scoring dtype (for ``mean``);
    ``n_steps``: each candidate's step count before truncation (default: as scored).

    ``truncated``/``unscorable`` list the candidates scored over a prefix of their steps / over
    none (``max_length``); ``nonfinite`` those with a NaN or infinite step score. The last two
    get NaN aggregates, so they are never selected."""
    step_scores = [[float(p) for p in ps] for ps in step_scores]
    n_steps = [len(ps) for ps in step_scores] if n_steps is None else [int(n) for n in n_steps]
    truncated = [i for i, (ps, n) in enumerate(zip(step_scores, n_steps)) if 0 < len(ps) < n]
    unscorable = [i for i, (ps, n) in enumerate(zip(step_scores, n_steps)) if n > 0 and not ps]
    nonfinite = [i for i, ps in enumerate(step_scores) if not all(math.isfinite(p) for p in ps)]
    scores = {name: aggregate(step_scores, name, dtype) for name in AGGREGATION_NAMES}
    for i in unscorable + nonfinite:
        for name in AGGREGATION_NAMES:
            scores[name][i] = math.nan
    return {
        "id": qid,
        "true_false": [bool(x) for x in true_false],
        "step_scores": step_scores,
        "n_steps": n_steps,
        "truncated": truncated,
        "unscorable": unscorable,
        "nonfinite": nonfinite,
        "scores": scores,
        "selected": {name: select(scores[name]) for name in AGGREGATION_NAMES},
    }


def summarise(questions: Sequence[dict], candidates: Sequence[Sequence[str]]) -> dict:
    """The summary block: accuracies of every aggregation and the baselines, as fractions, and
    how many candidates were truncated, unscorable or had non-finite scores."""
    n = len(questions)
    if n == 0:
        raise ValueError("no questions to summarise")
    acc = {name: _mean(float(q["true_false"][q["selected"][name]]) for q in questions) for name in AGGREGATION_NAMES}
    return {
        "n_questions": n,
        "n_candidates": sum(len(q["true_false"]) for q in questions),
        "accuracy": acc,
        "pass@1": _mean(pass_at_1(q["true_false"]) for q in questions),
        "first_candidate": _mean(first_candidate(q["true_false"]) for q in questions),
        "oracle": _mean(oracle(q["true_false"]) for q in questions),
        "self_consistency": _mean(float(q["true_false"][self_consistency_index(c)])
                                  for q, c in zip(questions, candidates)),
        "truncated_candidates": sum(len(q.get("truncated", ())) for q in questions),
        "unscorable_candidates": sum(len(q.get("unscorable", ())) for q in questions),
        "nonfinite_candidates": sum(len(q.get("nonfinite", ())) for q in questions),
        "definitions": dict((k, DEFINITIONS[k]) for k in BASELINE_NAMES),
    }


def build_report(questions: Sequence[dict], candidates: Sequence[Sequence[str]], scoring: dict | None = None,
                 partial: dict | None = None) -> dict:
    """``{"partial": ..., "summary": ..., "questions": ...}``, ready for strict JSON (non-finite
    numbers as None). ``scoring`` (``Scorer.describe()``) says how the scores were made;
    ``partial`` (questions_scored, questions_total, stopped_by) marks a run stopped early."""
    summary = summarise(questions, candidates)
    if scoring is not None:
        summary["scoring"] = dict(scoring)
    report = {"partial": partial is not None}
    if partial is not None:
        report.update(partial)
    report["summary"] = summary
    report["questions"] = [dict(q) for q in questions]
    return strict_json(report)


@lru_cache(maxsize=4096)
def _picks(k: int, n: int) -> tuple[tuple[int, ...], int]:
    """For subsets of size n of k ranked candidates: how many of them pick the candidate of rank
    r (it is in, the r above it are not: C(k−1−r, n−1)), for every r, and how many there are."""
    return tuple(math.comb(k - 1 - r, n - 1) for r in range(k)), math.comb(k, n)


def expected_accuracy(order: Sequence[int], true_false: Sequence[bool], n: int) -> float:
    """Probability that the candidate a ranking picks from a uniformly random subset of
    min(n, k) of the k candidates is correct: candidate ``order[r]`` is picked when it is in the
    subset and none of the r ranked above it is, C(k−1−r, n−1) of the C(k, n) subsets."""
    k = len(order)
    picks, total = _picks(k, min(n, k))
    return sum(picks[r] for r, i in enumerate(order) if true_false[i]) / total


def oracle_at(true_false: Sequence[bool], n: int) -> float:
    """pass@n: probability that a uniformly random subset of min(n, k) candidates holds a correct
    one, 1 − C(k−c, n)/C(k, n)."""
    k, c = len(true_false), sum(bool(x) for x in true_false)
    n = min(n, k)
    total = math.comb(k, n)
    return (total - math.comb(k - c, n)) / total


def accuracy_vs_n(
    questions: Sequence[dict],
    candidates: Sequence[Sequence[str]],
    draws: int = 20,
    seed: int = 0,
    exact_limit: int = EXACT_LIMIT,
) -> dict:
    """Expected accuracy of every aggregation and of random/oracle/self-consistency vs the number
    N of candidates per question (see the module docstring): exact, except self-consistency where
    a question has more than ``exact_limit`` subsets of size N (mean over ``draws`` random ones)."""
    from .steps import extract_answer

    votes = [_normalised_votes([extract_answer(c) for c in cands]) for cands in candidates]
    orders = [{name: selection_order(q["scores"][name]) for name in AGGREGATION_NAMES} for q in questions]
    max_n = max(len(q["true_false"]) for q in questions)
    curve = {"n": list(range(1, max_n + 1))}
    curve.update({k: [] for k in (*AGGREGATION_NAMES, *CURVE_BASELINES)})
    curve["self_consistency_exact"] = []
    rng = random.Random(seed)
    for n in curve["n"]:
        for name in AGGREGATION_NAMES:
            curve[name].append(_mean(expected_accuracy(o[name], q["true_false"], n) for q, o in zip(questions, orders)))
        curve["random"].append(_mean(pass_at_1(q["true_false"]) for q in questions))
        curve["oracle"].append(_mean(oracle_at(q["true_false"], n) for q in questions))
        values, exact = [], True
        for q, vote in zip(questions, votes):
            tf = q["true_false"]
            k = len(tf)
            if n == 1:
                values.append(pass_at_1(tf))
            elif n >= k:
                values.append(float(tf[_majority_of_normalised(vote)]))
            elif math.comb(k, n) <= exact_limit:
                hits = sum(tf[idx[_majority_of_normalised([vote[i] for i in idx])]]
                           for idx in combinations(range(k), n))
                values.append(hits / math.comb(k, n))
            else:
                exact = False
                hits = 0
                for _ in range(draws):
                    idx = sorted(rng.sample(range(k), n))
                    hits += tf[idx[_majority_of_normalised([vote[i] for i in idx])]]
                values.append(hits / draws)
        curve["self_consistency"].append(_mean(values))
        curve["self_consistency_exact"].append(exact)
    curve.update({"draws": draws, "seed": seed, "exact_limit": exact_limit,
                  "definition": DEFINITIONS["accuracy_vs_n"]})
    return curve


# (marker, line style, colour) per aggregation: each line stays visible where others coincide
_AGG_STYLES = {
    "mean": ("o", "-", "tab:blue"),
    "log_mean": ("s", (0, (5, 2)), "tab:orange"),
    "max": ("^", "-.", "tab:green"),
    "min": ("v", ":", "tab:red"),
    "log_odds": ("D", (0, (6, 2, 1, 2, 1, 2)), "tab:purple"),
}
_BASE_STYLES = {
    "random": dict(linestyle=(0, (1, 2)), color="0.45", linewidth=1.6, label="random pick (= pass@1)"),
    "oracle": dict(linestyle=(0, (4, 2)), color="black", linewidth=1.4, label="oracle (pass@N)"),
    "self_consistency": dict(linestyle="-", color="tab:brown", linewidth=1.2, marker="x", markersize=6,
                             label="self-consistency"),
}


def curve_figure(curve: dict, aggregations: Sequence[str] = AGGREGATION_NAMES):
    """The accuracy-vs-N figure (a matplotlib Figure). The PRM aggregations get distinct markers
    and line styles and are shifted apart horizontally by a fraction of one N, so a line that
    coincides with another (often: mean, log_mean, log_odds) still shows; a curve equal to an
    earlier one says so in the legend."""
    from matplotlib.ticker import FixedLocator, MaxNLocator, PercentFormatter

    from .figures import plt  # figures selects the Agg backend

    xs = list(curve["n"])
    max_n = xs[-1] if xs else 1
    fig, ax = plt.subplots(figsize=(9, 4.8))
    names = [a for a in aggregations if a in curve]
    width = 0.36 if len(names) > 1 else 0.0  # total horizontal spread of the shifted lines, in N
    for j, name in enumerate(names):
        marker, style, color = _AGG_STYLES.get(name, ("o", "-", None))
        shift = (j / (len(names) - 1) - 0.5) * width if len(names) > 1 else 0.0
        ys = [100 * v for v in curve[name]]
        same = next((other for other in names[:j] if curve[other] == curve[name]), None)
        label = f"PRM {name}" + (f" (same as {same})" if same else "")
        ax.plot([x + shift for x in xs], ys, marker=marker, linestyle=style, color=color, label=label,
                markersize=6, markerfacecolor="none", markeredgewidth=1.4, linewidth=1.4,
                markevery=max(1, len(xs) // 24))
    for name, style in _BASE_STYLES.items():
        if name in curve:
            ax.plot(xs, [100 * v for v in curve[name]], **style)
    ax.set_xlabel("N (candidates per question, a uniformly random subset)")
    ax.set_ylabel("accuracy (expected)")
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    if max_n <= 16:
        ax.xaxis.set_major_locator(FixedLocator(xs))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=12, integer=True))
    ax.set_xlim(0.5, max_n + 0.5)
    ax.grid(alpha=0.3)
    exact = curve.get("self_consistency_exact", [])
    if exact and all(exact):
        sc = "self-consistency: exact too (every subset enumerated)"
    else:
        sc = (f"self-consistency: mean of {curve.get('draws')} random subsets (seed {curve.get('seed')}) where a "
              f"question has over {curve.get('exact_limit')} subsets of N, exact elsewhere")
    note = "exact expectations for the PRM aggregations, random pick and oracle; " + sc
    ax.set_title("Best-of-N accuracy vs N\n" + "\n".join(textwrap.wrap(note, 95)), fontsize=9.5)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, title_fontsize=7,
              title="PRM lines are shifted\nsideways to stay visible" if width else None)
    return fig


def plot_curve(curve: dict, path, aggregations: Sequence[str] = AGGREGATION_NAMES) -> Path:
    """Write ``curve_figure`` to ``path`` (PNG; the folder is created)."""
    from .figures import save_figure

    return save_figure(curve_figure(curve, aggregations), path)


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


class NonFiniteScoresError(ValueError):
    """The PRM gave NaN or infinite step scores (a diverged model?); ``evaluate`` raises it at the
    first such question unless ``allow_nonfinite``. ``index``: the record's position; ``qid``:
    its id; ``count`` of ``total`` candidates were hit."""

    def __init__(self, index: int, qid, count: int, total: int):
        self.index, self.qid, self.count, self.total = index, qid, count, total
        super().__init__(f"question {qid!r}: the reward model gave non-finite step scores (NaN or inf) to "
                         f"{count} of {total} candidates")


def iter_evaluate(
    scorer: Scorer,
    records: Sequence[dict],
    json_path,
    progress: bool = True,
    prefetch: int = 2,
    allow_nonfinite: bool = False,
):
    """Yield ``(question_result, candidates)`` for every record, in order, as each is scored
    (see ``evaluate``); a caller stopped part-way keeps what it was given."""
    import torch
    from tqdm import tqdm

    from .data import resolve_image

    pin = prefetch > 0 and torch.device(scorer.device).type == "cuda"

    def prepare(rec):
        return scorer.prepare_image(resolve_image(rec["image_path"], json_path), pin_memory=pin)

    with closing(_ahead(prepare, records, prefetch)) as pixels:
        bar = tqdm(records, desc="best-of-N", unit="question", disable=not progress)
        try:
            for index, (rec, pv) in enumerate(zip(bar, pixels)):
                step_scores = scorer.score_candidates(pv, rec["question"], rec["candidates"])
                q = question_result(rec.get("id", index), rec["true_false"], step_scores, scorer.dtype,
                                    n_steps=getattr(step_scores, "n_steps", None))
                if q["nonfinite"] and not allow_nonfinite:
                    raise NonFiniteScoresError(index, q["id"], len(q["nonfinite"]), len(q["true_false"]))
                yield q, list(rec["candidates"])
        finally:
            bar.close()


def evaluate(
    scorer: Scorer,
    records: Sequence[dict],
    json_path,
    progress: bool = True,
    prefetch: int = 2,
    allow_nonfinite: bool = False,
) -> tuple[list[dict], list[list[str]]]:
    """Score every record's candidates; return the per-question results and the candidates.

    While a question is scored, the images of the next ``prefetch`` questions are decoded and
    tiled in a background thread (``Scorer.prepare_image``; pinned memory on CUDA); 0 does it
    serially. The results are the same either way, in record order, and an unreadable image
    raises the same exception at the same question. Non-finite step scores raise
    ``NonFiniteScoresError`` unless ``allow_nonfinite``."""
    questions, candidates = [], []
    for q, cands in iter_evaluate(scorer, records, json_path, progress, prefetch, allow_nonfinite):
        questions.append(q)
        candidates.append(cands)
    return questions, candidates


def format_table(summary: dict, aggregations: Sequence[str] = AGGREGATION_NAMES) -> str:
    rows = [(f"PRM {name}", summary["accuracy"][name]) for name in aggregations]
    labels = {"pass@1": "pass@1 (random pick)", "first_candidate": "first candidate",
              "oracle": "oracle (any correct)", "self_consistency": "self_consistency"}
    rows += [(labels[name], summary[name]) for name in BASELINE_NAMES]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'method':<{width}}  accuracy", f"{'-' * width}  --------"]
    lines += [f"{name:<{width}}  {100 * v:7.2f}%" for name, v in rows]
    lines.append(f"{'questions':<{width}}  {summary['n_questions']:8d}")
    return "\n".join(lines)


def data_error_lines(message: str) -> list[str]:
    """A DataError message as ``error: <file>: record i (id ..): <problem>`` lines."""
    lines = [l for l in str(message).splitlines() if l.strip()]
    if len(lines) > 1 and re.search(r"\d+ bad records?\b", lines[0]):  # the header line: the count
        out = [f"error: {l}" for l in lines[1:]]
        out[-1] += " (use --skip_bad_records to drop bad records)"
        return out
    return [f"error: {l}" for l in lines]


# -- the test.py command ------------------------------------------------------------------------
class ScoringInterrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT) during ``run``; a KeyboardInterrupt, so code that handles Ctrl-C
    handles it too. ``signum``: the signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _signal_of(exc: BaseException) -> int:
    return getattr(exc, "signum", signal.SIGINT)


@contextmanager
def _sigterm_interrupts():
    """SIGTERM raises ``ScoringInterrupted`` while inside (main thread, default handler only);
    SIGINT already raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        raise ScoringInterrupted(signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def _signals_ignored():
    """SIGINT and SIGTERM ignored while inside (main thread only): a second Ctrl-C does not cut
    short the saving of partial results."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in saved:
        signal.signal(s, signal.SIG_IGN)
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def output_path_problem(out: Path) -> str | None:
    """Why the results cannot be written to ``out``, or None: it is a folder, lies under a regular
    file, or its folder (or the nearest existing one) does not accept new files. Checked before
    any work, so a scoring run never ends unable to save."""
    if out.is_dir():
        return f"--output_file {out} is a folder; pass a file path such as {out / 'bestofn.json'}"
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        if folder.is_symlink():
            return f"--output_file {out}: {folder} is a broken symbolic link"
        folder = folder.parent
    if not folder.is_dir():
        return f"--output_file {out}: {folder} is a file, not a folder"
    if out.exists():
        try:
            with open(out, "ab"):
                pass
        except OSError as exc:
            return f"--output_file {out} is not writable ({exc.strerror or exc})"
    probe = folder / f".{out.name}.{os.getpid()}.probe"
    try:
        probe.open("x").close()
        probe.unlink()
    except OSError as exc:
        return f"--output_file {out}: cannot create files in {folder} ({exc.strerror or exc})"
    return None


def _record_label(records, report, index: int) -> str:
    indices = getattr(report, "indices", None)
    where = indices[index] if indices and index < len(indices) else index
    rec = records[index]
    rid = rec.get("id") if isinstance(rec, dict) else None
    return f"record {where}" + (f" (id {rid!r})" if rid is not None else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _first_line(exc: BaseException) -> str:
    lines = [l.strip() for l in str(exc).splitlines() if l.strip()]
    return lines[0] if lines else type(exc).__name__


def _is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text or "can't allocate memory" in text


def run(args) -> int:
    """The ``test.py`` command; returns the exit code: 0 done, 1 out of memory, 2 bad input
    (flags, paths, data, model), 3 non-finite step scores, 130 / 143 interrupted by SIGINT /
    SIGTERM. A run stopped while scoring saves the questions scored so far (``"partial": true``)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the terminal is for the scoring bar (no per-load bars)
    with _sigterm_interrupts():
        try:
            return _run(args)
        except KeyboardInterrupt as exc:  # outside the scoring loop: nothing scored to save
            signum = _signal_of(exc)
            print(f"interrupted ({signal.Signals(signum).name}) before any question was scored; nothing written",
                  file=sys.stderr)
            return 128 + signum


def _run(args) -> int:
    import torch

    from .data import DataError, load_records
    from .prm import ModelLoadError
    from .prompt import PromptError

    out = Path(args.output_file).expanduser()
    problem = output_path_problem(out)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    figs = Path(args.figs_dir).expanduser() if args.figs_dir else out.parent / "figs"

    device = args.device or default_device()
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError) as exc:
        print(f"error: --device {device}: {_first_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if kind == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {device}: CUDA is not available on this machine (use --device cpu)", file=sys.stderr)
        return EXIT_BAD_INPUT
    precision = args.precision or default_precision(device)

    try:
        records, report = load_records(args.test_json_file, "test", skip_bad=args.skip_bad_records)
    except DataError as exc:
        for line in data_error_lines(str(exc)):
            print(line, file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"error: {args.test_json_file}: cannot read the test file ({exc.strerror or _first_line(exc)})",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    if report.skipped:
        for line in report.problems:
            print(f"warning: skipped {line}", file=sys.stderr)
        print(f"skipped {_plural(report.skipped, 'bad record')}; evaluating {len(records)}", file=sys.stderr)

    model = str(args.reward_model)
    try:
        scorer = load_scorer(model, device=device, precision=precision, max_patch_num=args.max_patch_num,
                             batch_size=args.batch_size, score_dtype=args.score_dtype, splitter=args.step_splitter,
                             max_length=args.max_length)
    except ModelLoadError as exc:
        print(f"error: {_first_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # whatever the named model's files make transformers raise
        print(f"error: cannot load reward model {model!r} on {device} ({precision}): "
              f"{type(exc).__name__}: {_first_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    scoring = scorer.describe()

    questions: list[dict] = []
    candidates: list[list[str]] = []
    stop = None  # (exit code, stderr line, why) when scoring stops early
    results = iter_evaluate(scorer, records, args.test_json_file, prefetch=args.prefetch,
                            allow_nonfinite=args.allow_nonfinite)
    try:
        with closing(results):
            for q, cands in results:
                questions.append(q)
                candidates.append(cands)
    except KeyboardInterrupt as exc:
        signum = _signal_of(exc)
        name = signal.Signals(signum).name
        stop = (128 + signum, f"interrupted ({name})", name)
    except NonFiniteScoresError as exc:
        stop = (EXIT_DIVERGED,
                f"error: {args.test_json_file}: {_record_label(records, report, exc.index)}: the reward model gave "
                f"non-finite step scores (NaN or inf) to {exc.count} of {exc.total} candidates; has it diverged? "
                "(pass --allow_nonfinite to evaluate anyway: such candidates are never selected)",
                "non-finite step scores")
    except PromptError as exc:
        where = _record_label(records, report, len(questions))
        stop = (EXIT_BAD_INPUT, f"error: {args.test_json_file}: {where}: {_first_line(exc)}", "bad record")
    except OSError as exc:  # an image that passed validation but cannot be decoded
        where = _record_label(records, report, len(questions))
        stop = (EXIT_BAD_INPUT, f"error: {args.test_json_file}: {where}: cannot read the image "
                f"({type(exc).__name__}: {_first_line(exc)})", "unreadable image")
    except RuntimeError as exc:
        if not _is_out_of_memory(exc):
            raise
        where = _record_label(records, report, len(questions))
        stop = (EXIT_FAILED, f"error: out of memory while scoring {where}: {_first_line(exc)} (try a smaller "
                "--batch_size or --max_length)", "out of memory")
    n_done = min(len(questions), len(candidates))
    del questions[n_done:], candidates[n_done:]

    if stop is not None:
        code, line, why = stop
        if not n_done:
            print(f"{line}; no question was scored, nothing written", file=sys.stderr)
            return code
        with _signals_ignored():
            partial = {"questions_scored": n_done, "questions_total": len(records), "stopped_by": why}
            write_json(out, build_report(questions, candidates, scoring, partial=partial))
        if code >= 128:
            print(f"{line} after {n_done} of {len(records)} questions: partial results saved to {out} "
                  '("partial": true)', file=sys.stderr)
        else:
            print(line, file=sys.stderr)
            print(f"partial results ({n_done} of {len(records)} questions) saved to {out}")
        return code

    result = build_report(questions, candidates, scoring)
    with _signals_ignored():
        write_json(out, result)
    try:
        return _report(args, out, figs, result, questions, candidates, report, f"{model} on {device} ({precision})")
    except KeyboardInterrupt as exc:  # the results are saved; only the console report or the figure is cut short
        print(f"interrupted ({signal.Signals(_signal_of(exc)).name}); the results are in {out}", file=sys.stderr)
        return 128 + _signal_of(exc)


def _report(args, out: Path, figs: Path, result: dict, questions, candidates, report, model: str) -> int:
    """The console report of a finished run and the accuracy-vs-N figure (a warning if it cannot
    be written: the results are saved already)."""
    summary, scoring = result["summary"], result["summary"]["scoring"]
    chosen = list(AGGREGATION_NAMES) if args.aggregation_function == "all" else [args.aggregation_function]
    print(f"{report.summary()}; reward model {model}")
    print(f"scores: softmax and mean in {scoring['score_dtype']} ({scoring['score_dtype_source']}); "
          f"steps: {scoring['step_splitter']} splitter; ties: {scoring['ties']}; "
          f"max length: {scoring['max_length']} tokens")
    print(format_table(summary, chosen))
    limit = scoring["max_length"]
    if summary["truncated_candidates"]:
        n = summary["truncated_candidates"]
        print(f"note: {_plural(n, 'candidate')} longer than {limit} tokens (--max_length) "
              f"{'was' if n == 1 else 'were'} scored over the steps that fit")
    if summary["unscorable_candidates"]:
        n = summary["unscorable_candidates"]
        print(f"note: {_plural(n, 'candidate')} could not be scored: not even the first step fits in {limit} tokens "
              "(--max_length); never selected")
    if summary["nonfinite_candidates"]:
        n = summary["nonfinite_candidates"]
        print(f"note: {_plural(n, 'candidate')} got non-finite step scores (--allow_nonfinite); never selected")
    print(f"results: {out}")
    try:
        curve = accuracy_vs_n(questions, candidates)
        fig = plot_curve(curve, figs / "bestofn_accuracy_vs_n.png", chosen)
        data = write_json(figs / "bestofn_accuracy_vs_n.json", curve)
        print(f"figure:  {fig} (curve data: {data})")
    except OSError as exc:
        print(f"warning: figure not written: cannot write in {figs} ({exc.strerror or _first_line(exc)}); "
              f"the results are in {out}", file=sys.stderr)
    if report.skipped:
        print(f"skipped {_plural(report.skipped, 'bad record')}")
    return EXIT_OK
