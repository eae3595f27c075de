"""Best-of-N scoring: step scores p(+) for every candidate of every test question.

:class:`Scorer` is efficient by construction:

* a question's image is tiled and run through the vision tower **once**
  (``ProcessRewardModel.image_features``); every candidate of that question reuses the features;
* the token prefix all candidates of a question share (system prompt, image, question turn) is
  run through the language model once (``ProcessRewardModel.encode_prefix``) and its key/value
  cache is reused by every candidate (``prefix_cache=True``, the default; ``False`` runs each
  candidate's full sequence);
* candidates go through the language model in batches of ``batch_size`` (sorted by length to
  keep padding small; right padding + attention mask; ``ProcessRewardModel.step_probabilities``);
* the LM head runs at the label positions only, with the full-vocabulary softmax the method
  defines;
* candidates whose steps are identical are scored once, so they get identical scores whatever
  batch or position they would have landed in.

Step scores are computed as upstream's test path computes them (``score_dtype="model"``, the
default): the softmax of the label logits in the model's dtype (bf16 for a bf16 model, with no
upcast), and the ``mean`` aggregate in that dtype too (``dreamprm.results``). bf16 rounds scores
near 1 to steps of ~0.004, so ties are common, and the tie rule (``dreamprm.selection``) decides
them. ``score_dtype="fp32"`` computes softmax and mean in fp32 instead (fewer ties; not
upstream's numbers). The scores equal the naive path (one ``ProcessRewardModel.forward`` per
candidate with its own ``pixel_values``) to float tolerance; ``tests/test_scoring.py`` checks this.

Sequence length (``max_length``, tokens; default the language model's
``max_position_embeddings``). Every candidate is tokenised (a list of ids, no tensor) before
anything is built for the model. A candidate longer than ``max_length`` (prompt, image tokens and
steps) is scored over the longest prefix of its steps that fits, which gives those steps exactly
the scores they get in the whole sequence (the model is causal); it is *truncated*. When not even
its first step fits it is *unscorable*: it gets no step score (:class:`StepScores` says which).

The evaluation loop (:func:`iter_evaluate`, :func:`evaluate`) scores test records one question at
a time into ``dreamprm.results.question_result`` dicts. It overlaps the CPU half of a question
(decoding the image file, tiling and normalising it, splitting and tokenising the candidates:
``Scorer.prepare_candidates``, see ``dreamprm.candidates``) with the model's half of the previous
one (``Scorer.score_prepared``): up to ``prefetch`` questions ahead (default 2; 0 = serial) are
prepared in a background thread, or with ``workers`` > 0 in that many worker processes (a
DataLoader), which do not compete with the scoring thread for the interpreter lock. Results and
errors are identical every way. Non-finite step scores (NaN or inf: a diverged model) stop it
with :class:`NonFiniteScoresError` unless ``allow_nonfinite=True``.
"""

from __future__ import annotations

import math
import multiprocessing
import pickle
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .batching import collate, dataloader_workers
from .candidates import PreparedQuestion, QuestionEncoder
from .distributed import World, gather_objects
from .prm import Prefix, ProcessRewardModel
from .records import resolve_image
from .results import question_result

SCORE_DTYPES = ("model", "fp32")


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


class Scorer:
    """Step scores p(+) for the candidates of a question, with the image encoded once.

    ``max_length``: the longest token sequence (prompt + image tokens + steps) a candidate is
    scored over; None = the model's ``max_position_embeddings`` (see the module docstring).
    The CPU half (image pixels, token ids) is ``encoder``'s (``candidates.QuestionEncoder``);
    ``score_prepared`` is the model's half."""

    def __init__(self, prm: ProcessRewardModel, max_patch_num: int = 12, batch_size: int = 8,
                 prefix_cache: bool = True, score_dtype: str = "model", splitter: str = "upstream",
                 max_length: int | None = None):
        if score_dtype not in SCORE_DTYPES:
            raise ValueError(f"score_dtype must be one of {SCORE_DTYPES}, got {score_dtype!r}")
        self.encoder = QuestionEncoder(prm.processor, max_patch_num, splitter,
                                       prm.max_length if max_length is None else max_length)
        self.prm = prm.eval()
        self.batch_size = max(1, int(batch_size))
        self.prefix_cache = bool(prefix_cache)
        self.score_dtype = score_dtype
        tok = prm.processor.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    @property
    def splitter(self) -> str:
        return self.encoder.splitter

    @property
    def max_length(self) -> int | None:
        return self.encoder.max_length

    def describe(self) -> dict:
        """How scores are made, for the report: dtype, splitter, tie rule, length limit."""
        dtype = str(self.dtype).replace("torch.", "")
        how = "the model's dtype, as upstream" if self.score_dtype == "model" else "fp32 (--score_dtype fp32)"
        return {"score_dtype": dtype, "score_dtype_source": how, "step_splitter": self.splitter,
                "ties": "later candidate (upstream's >=)", "max_length": self.max_length}

    @property
    def dtype(self) -> torch.dtype:
        """The dtype step scores (softmax) and the mean aggregate are computed in."""
        return self.prm.dtype if self.score_dtype == "model" else torch.float32

    @property
    def device(self) -> torch.device:
        return self.prm.device

    def prepare_image(self, image, pin_memory: bool = False):
        """The image part of a question's CPU half: ``image`` (a PIL image, a path, or None for
        text only) decoded, tiled and normalised into the (tiles, 3, T, T) pixel tensor that the
        scoring methods take in its place; None stays None. ``pin_memory``: in page-locked memory
        (CUDA only) so the copy to the device can run asynchronously."""
        return self.encoder.prepare_image(image, pin_memory)

    def prepare_candidates(self, image, question: str, candidates: Sequence[str],
                           pin_memory: bool = False) -> PreparedQuestion:
        """A question's whole CPU half (``QuestionEncoder.prepare_candidates``), for ``score_prepared``."""
        return self.encoder.prepare_candidates(image, question, candidates, pin_memory)

    def score_steps(self, image, question: str, steps: Sequence[str]) -> list[float]:
        """p(+) of every step of one candidate already split into ``steps``."""
        return self.score_step_lists(image, question, [list(steps)])[0]

    def score_candidates(self, image, question: str, candidates: Sequence[str]) -> StepScores:
        """Split every candidate into steps (``steps.split_steps`` with this scorer's splitter)
        and score them all."""
        return self.score_prepared(self.encoder.prepare_candidates(image, question, candidates))

    def score_step_lists(self, image, question: str, step_lists: Sequence[Sequence[str]]) -> StepScores:
        """The candidates of one question, already split into steps. ``image`` is a PIL image, a
        path, None (text only), or the pixel tensor ``prepare_image`` made of one (then no image
        work is done here)."""
        return self.score_prepared(self.encoder.prepare(image, question, step_lists))

    def score_prepared(self, question: PreparedQuestion) -> StepScores:
        """The model's half: the step scores of a question ``prepare_candidates`` (or the encoder's
        ``prepare``) made ready."""
        out = StepScores([[] for _ in question.n_steps], question.n_steps)
        items = {i: {"input_ids": torch.tensor(enc.input_ids, dtype=torch.long),
                     "label_positions": torch.tensor(enc.label_positions, dtype=torch.long),
                     "labels": torch.tensor(enc.labels, dtype=torch.float32),
                     "pixel_values": None}  # the features are shared; never concatenate the tiles
                 for i, enc in question.encoded.items()}
        if items:
            pv = question.pixels
            with torch.inference_mode():
                feats = None
                if pv is not None:
                    feats = self.prm.image_features(pv.to(self.device, non_blocking=pv.is_pinned()))
                prefix = None
                if self.prefix_cache:
                    first_label = min(int(item["label_positions"].min()) for item in items.values())
                    prefix = self._encode_prefix([items[i]["input_ids"] for i in sorted(items)], feats, first_label)
                order = sorted(items, key=lambda i: len(items[i]["input_ids"]))
                for start in range(0, len(order), self.batch_size):
                    chunk = order[start : start + self.batch_size]
                    probs = self._score_batch([items[i] for i in chunk], feats, prefix)
                    for i, p in zip(chunk, probs):
                        out[i] = p
        for i, first in enumerate(question.scored_as):
            if first is not None:
                out[i] = list(out[first])
        return out

    def _encode_prefix(self, id_lists, feats, first_label: int) -> Prefix | None:
        """Run the token prefix shared by all candidates once; None when there is none to share.

        The prefix stops before the first label position, so every position whose hidden
        state is read is computed in the (batched) suffix pass."""
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
        return self.prm.encode_prefix(ids, feats)

    def _score_batch(self, items, feats, prefix: Prefix | None) -> list[list[float]]:
        """p(+) of every step of a batch of candidates, one list per candidate."""
        batch = collate(items, self.pad_id)
        label_batch = batch.label_batch.to(self.device)
        p = self.prm.step_probabilities(
            batch.input_ids.to(self.device),
            batch.attention_mask.to(self.device),
            label_batch,
            batch.label_pos.to(self.device),
            image_features=feats if prefix is None else None,  # with a prefix the image is in its cache
            prefix=prefix,
            dtype=self.dtype,
        ).float().cpu()  # bf16 -> fp32 is exact
        lb = label_batch.cpu()
        return [p[lb == b].tolist() for b in range(len(items))]


def default_device() -> str:
    """test.py's device: cuda when available, else cpu."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_workers(device) -> int:
    """test.py's question-preparing worker processes (``batching.dataloader_workers``): up to 2 on
    cuda (one question's 13 tiles take about as long to prepare as its 8 candidates take to
    score on an H100; two leave slack); 0 (a background thread) elsewhere."""
    return dataloader_workers(device, most=2)


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
    device = device or default_device()
    precision = precision or default_precision(device)
    prm = ProcessRewardModel.from_pretrained(name_or_path, device=device, precision=precision)
    return Scorer(prm, max_patch_num=max_patch_num, batch_size=batch_size, prefix_cache=prefix_cache,
                  score_dtype=score_dtype, splitter=splitter, max_length=max_length)


# -- the evaluation loop ------------------------------------------------------------------------
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


class _Failed:
    """An exception a worker process met while preparing a question's image, carried back as a
    value so the loop raises that very exception at that question (a DataLoader would re-raise a
    copy of another message). One that cannot cross the process boundary travels as a
    RuntimeError naming its type and message."""

    def __init__(self, exc: Exception):
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:
            exc = RuntimeError(f"{type(exc).__name__}: {exc}")
        self.exc = exc


class _PreparedQuestions(Dataset):
    """The records prepared for scoring (``QuestionEncoder.prepare_candidates``), for DataLoader
    workers (``_ahead_in_workers``)."""

    def __init__(self, encoder: QuestionEncoder, records: Sequence[dict], json_path):
        self.encoder, self.records, self.json_path = encoder, records, json_path

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        rec = self.records[index]
        try:
            return self.encoder.prepare_candidates(resolve_image(rec["image_path"], self.json_path), rec["question"],
                                                   rec["candidates"])
        except Exception as exc:
            return _Failed(exc)


def _quiet_handover_errors(worker_id: int) -> None:
    """A worker process's ``worker_init_fn``. Its tensors reach the main process through a thread
    that hands over file descriptors; when the main process stops in the middle of a handover
    (Ctrl-C, SIGTERM: test.py then saves the partial results) that thread prints a traceback of
    the broken connection. That is no error of the worker's, so it goes unprinted; every other
    exception still prints."""
    hook = sys.excepthook

    def excepthook(kind, value, traceback):
        if not issubclass(kind, (EOFError, ConnectionError, multiprocessing.AuthenticationError)):
            hook(kind, value, traceback)

    sys.excepthook = excepthook


def _ahead_in_workers(encoder: QuestionEncoder, records: Sequence[dict], json_path, workers: int, depth: int,
                      pin_memory: bool):
    """The records as prepared questions, in order, up to ``depth`` ahead, made by ``workers``
    processes (their pixels pinned in this process when ``pin_memory``); a question that fails
    raises its exception here, at its place. Close the generator to stop the workers early."""
    loader = DataLoader(_PreparedQuestions(encoder, records, json_path), batch_size=None, num_workers=workers,
                        prefetch_factor=max(1, math.ceil(depth / workers)), pin_memory=pin_memory,
                        worker_init_fn=_quiet_handover_errors)
    it = iter(loader)
    try:
        for prepared in it:
            if isinstance(prepared, _Failed):
                raise prepared.exc
            yield prepared
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)  # at once, not whenever the iterator is collected
        if shutdown is not None:
            shutdown()


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
    positions: Sequence[int] | None = None,
    workers: int = 0,
):
    """Yield ``(question_result, candidates)`` for every record, in order, as each is scored
    (see ``evaluate``); a caller stopped part-way keeps what it was given. ``positions``: the
    records' places in their file (default 0, 1, ...), which name a question without an id."""
    pin = prefetch > 0 and torch.device(scorer.device).type == "cuda"

    def prepare(rec):
        return scorer.prepare_candidates(resolve_image(rec["image_path"], json_path), rec["question"],
                                         rec["candidates"], pin_memory=pin)

    if prefetch > 0 and workers > 0 and records:
        ahead = _ahead_in_workers(scorer.encoder, records, json_path, workers, prefetch, pin)
    else:
        ahead = _ahead(prepare, records, prefetch)
    with closing(ahead) as prepared:
        bar = tqdm(records, desc="best-of-N", unit="question", disable=not progress)
        try:
            for index, (rec, ready) in enumerate(zip(bar, prepared)):
                step_scores = scorer.score_prepared(ready)
                place = index if positions is None else positions[index]
                q = question_result(rec.get("id", place), rec["true_false"], step_scores, scorer.dtype,
                                    n_steps=getattr(step_scores, "n_steps", None))
                if q["nonfinite"] and not allow_nonfinite:
                    raise NonFiniteScoresError(place, q["id"], len(q["nonfinite"]), len(q["true_false"]))
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
    positions: Sequence[int] | None = None,
    workers: int = 0,
) -> tuple[list[dict], list[list[str]]]:
    """Score every record's candidates; return the per-question results and the candidates.

    While a question is scored, the next ``prefetch`` questions are prepared (images decoded and
    tiled, pinned memory on CUDA; candidates tokenised: ``Scorer.prepare_candidates``): in a
    background thread, or in ``workers`` worker processes when ``workers`` > 0; ``prefetch`` 0
    does it serially. The results are the same every way, in record order, and an unreadable
    image or a bad candidate raises the same exception at the same question. Non-finite step
    scores raise ``NonFiniteScoresError`` unless ``allow_nonfinite``."""
    questions, candidates = [], []
    for q, cands in iter_evaluate(scorer, records, json_path, progress, prefetch, allow_nonfinite, positions,
                                  workers):
        questions.append(q)
        candidates.append(cands)
    return questions, candidates


@contextmanager
def scoring_mode(module: torch.nn.Module):
    """``module`` in eval mode under ``torch.inference_mode`` while inside; on the way out every
    submodule gets back its own train/eval flag, so a model in training can be scored in place
    and train on as before."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.inference_mode():
            yield module
    finally:
        for m, training in modes:
            m.training = training


def evaluate_in_memory(
    prm: ProcessRewardModel,
    records: Sequence[dict],
    json_path,
    max_patch_num: int = 12,
    batch_size: int = 8,
    prefetch: int = 2,
    allow_nonfinite: bool = False,
    world: World = World(),
    workers: int = 0,
    **scorer_options,
) -> tuple[list[dict], list[list[str]]]:
    """``evaluate`` with a PRM already in memory (the one being trained: no reload), scored as
    test.py scores a loaded one (a ``Scorer`` with these options, no progress bar; ``workers``
    image-preparing processes, 0 = a thread); the PRM's
    train/eval modes are as they were afterwards (``scoring_mode``). In a data-parallel ``world``
    every rank scores its share (``shard``) and all get the merged results (``merge_shards``)."""
    positions = shard(len(records), world)
    with scoring_mode(prm):
        scorer = Scorer(prm, max_patch_num=max_patch_num, batch_size=batch_size, **scorer_options)
        questions, candidates = evaluate(scorer, [records[i] for i in positions], json_path, progress=False,
                                         prefetch=prefetch, allow_nonfinite=allow_nonfinite, positions=positions,
                                         workers=workers)
    return merge_shards(gather_objects(world, (positions, questions, candidates)))


def shard(n_records: int, world: World) -> list[int]:
    """The positions of the records this rank scores: every ``world.size``-th from its rank. A
    question's results depend on that question alone, so the shards merge into exactly what
    one process would write (``merge_shards``)."""
    return list(range(world.rank, n_records, world.size))


def merge_shards(parts) -> tuple[list[dict], list[list[str]]]:
    """``[(positions, questions, candidates) of each rank]`` as one ``(questions, candidates)``,
    in record order (positions missing from every part, as in a stopped run, are left out)."""
    by_position = {}
    for positions, questions, candidates in parts:
        for position, q, c in zip(positions, questions, candidates):
            by_position[position] = (q, c)
    ordered = [by_position[p] for p in sorted(by_position)]
    return [q for q, _ in ordered], [c for _, c in ordered]
