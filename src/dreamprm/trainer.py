"""One training run (a ``TrainConfig``): data, PRM, weight model, Betty problems; run; outputs.

Outputs in ``--weights_path`` (every ``--save_every_iterations`` and at the end):
the PRM + processor (safetensors, loadable by ``from_pretrained``), ``instance_weights.json``,
``train_args.json``, ``metrics.jsonl`` (one row per iteration), ``checkpoints/`` and ``figs/``;
with ``--save_best``, ``best/``: the best evaluated model (see below).
The folder belongs to one run (``runfolder.RunFolder``: locked, refused when it holds another
run unless ``--resume``/``--overwrite``); nothing non-finite is ever exported or checkpointed.

Evaluation during training (``--eval_json_file``, every ``--eval_every`` iterations and at the
end): best-of-N on test-format records with the PRM being trained, scored in place as test.py
scores a saved one; the accuracies join that iteration's metrics row as ``eval_*`` keys. It
leaves training as it was: modes are restored, autograd is off, the RNG states are put back and
the data streams are never touched, so the weights equal those of a run without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from betty.configs import EngineConfig
from tqdm.auto import tqdm

from . import distributed
from .batching import BatchStream, ConversationDataset, ExampleBuilder, dataloader_workers, drop_overlong
from .checkpoint import (CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint, read_run_config,
                         read_trainer_state, rng_state, save_checkpoint, set_rng_state, verify_checkpoint)
from .config import TrainConfig
from .distributed import PEER_FAILED
from .hypergradient import all_finite
from .jsonio import atomic_write_text, write_json
from .optim import make_optimizer, make_scheduler
from .prm import ProcessRewardModel
from .problems import IterationEngine, LowerProblem, UpperProblem, problem_config
from .records import DataError, load_records, plural
from .results import BASELINE_NAMES, summarise
from .runfolder import BEST_DIR, BEST_INFO, EXPORT_MANIFEST, RunFolder, RunFolderError, open_append
from .scoring import default_workers, evaluate_in_memory
from .weighting import build_weight_model

STAGES = {"table": "Instance Table", "net": "Instance Net", "domain": "Domain Table"}
BEST_METRIC = "eval_accuracy_mean"  # what --save_best ranks evaluations by


def quiet_libraries() -> None:
    """Keep the terminal for the run's own progress bar: no per-save bars, Betty INFO lines."""
    import logging

    from betty.logging.logger_base import get_logger
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    get_logger().setLevel(logging.WARNING)  # Betty creates its logger at INFO on first use


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT (``signum``): a checkpoint was saved (or, on a second signal, ``at_once``, the
    last one stands and this process stopped without the others)."""

    def __init__(self, message: str, signum: int, at_once: bool = False):
        super().__init__(message)
        self.signum = signum
        self.at_once = at_once


class TrainingDiverged(RuntimeError):
    """Too many non-finite updates in a row, or non-finite parameters/weights."""


class SetupError(Exception):
    """A run that cannot start as asked (a missing device or logger package); one line."""


class ResumeMismatch(Exception):
    """``--resume`` into a checkpoint made with an incompatible configuration (one line)."""


class PeerFailed(SetupError):
    """Data parallel: another rank failed (its own error says why); this rank stops with it."""


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_logger(name: str) -> None:
    """``--logger tensorboard|wandb`` needs its package: say which pip command, before any work."""
    import importlib.util

    package = {"tensorboard": "tensorboard", "wandb": "wandb"}.get(name)
    if package and importlib.util.find_spec(package) is None:
        raise SetupError(f"--logger {name} needs the {package} package: {sys.executable} -m pip install {package}")


def eval_metrics(summary: dict) -> dict:
    """The ``eval_*`` keys of a metrics row from a best-of-N summary (``results.summarise``):
    every aggregation's accuracy, the baselines and the question count."""
    row = {f"eval_accuracy_{name}": value for name, value in summary["accuracy"].items()}
    row.update({f"eval_{name}": summary[name] for name in BASELINE_NAMES})
    row["eval_questions"] = summary["n_questions"]
    return row


def model_signature(model: torch.nn.Module) -> str:
    """A hash of the parameter names and shapes: equal for checkpoints of one architecture."""
    shapes = sorted((name, list(p.shape)) for name, p in model.named_parameters())
    return hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]


class Trainer:
    """One run of ``train.py``, built from a ``TrainConfig``: ``run()`` trains and writes the outputs.

    Building it takes the output folder (locked), loads and checks the data, then the model, and
    sets up the weight model, both Betty problems and the engine."""

    def __init__(self, config: TrainConfig):
        config.validate()
        self.config = config
        self.out = Path(config.weights_path)
        self.bilevel = config.bilevel
        if config.device.startswith("cuda") and not torch.cuda.is_available():
            raise SetupError("--device cuda but no CUDA device is visible; use --device cpu --precision fp32")
        check_logger(config.logger)
        try:
            self.world = distributed.join(config.strategy, config.device, config.backend)
        except distributed.DistributedSetupError as exc:
            raise SetupError(str(exc)) from None
        self.device = self.world.device
        # What the training loop keeps between iterations (run() and _on_iteration fill it in).
        self.net_seen: dict[str, dict] = {}  # Instance Net: the weight each seen id got, and when
        self.metrics_file = None
        self.bar = None
        self._signal = None  # the signal received, once one is
        self._last_time = 0.0
        self._last_meta = None  # the latest meta loss, for the progress bar
        # --save_best: the best evaluation so far ({iteration, accuracy, eval_json_file, questions});
        # part of the checkpointed state, so a resumed run keeps the same best
        self.best_eval: dict | None = None
        self._eval_notes: list[str] = []  # what the latest evaluation's summary counted (truncated, ...)
        # Data parallel: rank 0 alone owns the folder (lock, exports, checkpoints, metrics); the
        # others only read a checkpoint to resume from. The ranks agree that all of them set up
        # before the engine's first collective (DDP's broadcast), so one failure stops them all.
        self.folder = None
        try:
            if self.world.is_main:
                self.folder = RunFolder(self.out).open()
            self._setup()
        except BaseException as exc:
            self._close_folder()
            errors = distributed.gather_objects(self.world, str(exc))
            if self.world.rank > 0 and errors[0] == str(exc):  # rank 0 reports it
                raise PeerFailed(f"{PEER_FAILED} to start") from None
            raise
        if any(distributed.gather_objects(self.world, None)):
            self._close_folder()
            raise PeerFailed(f"{PEER_FAILED} to start (its error says why)")
        try:
            self.engine = self._build_engine()
        except BaseException:
            self._close_folder()
            raise

    def _close_folder(self) -> None:
        if self.folder is not None:
            self.folder.close()

    def _setup(self) -> None:
        config = self.config
        quiet_libraries()
        set_seed(config.seed)
        self.resume_point = self._find_resume_point() if config.resume else None
        self.replace_previous = self._replaces_previous_run()  # removed in run(), once all has loaded
        if self.folder is not None:
            self.folder.clean_temporaries()

        # Data first: a bad record is reported before the (slow) model load.
        train_records, report = load_records(config.train_json_file, "train", skip_bad=config.skip_bad_records)
        print(report.summary())
        meta_records = meta_report = None
        if self.bilevel:
            meta_records, meta_report = load_records(config.meta_json_file, "meta",
                                                     skip_bad=config.skip_bad_records)
            print(meta_report.summary())
        self.eval_records = None
        if config.eval_json_file is not None:
            self.eval_records, eval_report = load_records(config.eval_json_file, "test",
                                                          skip_bad=config.skip_bad_records)
            print(eval_report.summary())

        self.prm = self._load_prm()
        builder = ExampleBuilder(self.prm.processor, config.max_patch_num)
        train_records = self._drop_overlong(train_records, report, config.train_json_file, builder, "train")
        if meta_records is not None:
            meta_records = self._drop_overlong(meta_records, meta_report, config.meta_json_file, builder, "meta")
        if self.resume_point is not None:
            train_records = self._match_checkpoint(train_records, meta_records)

        pad_id = self.prm.processor.tokenizer.pad_token_id or 0
        pin = self.device.startswith("cuda")
        workers = config.num_workers
        if workers is None:  # decode and tile off the training loop's thread on a GPU machine
            workers = dataloader_workers(self.device, most=4)
        self.train_set = ConversationDataset(train_records, config.train_json_file, builder)
        self.train_stream = self._stream(self.train_set, config.train_json_file, "--batch_size", config.batch_size,
                                         config.seed, pad_id, workers, pin)
        self.meta_stream = self.meta_size = None
        if self.bilevel:
            meta_set = ConversationDataset(meta_records, config.meta_json_file, builder,
                                           domains=self.train_set.domains)
            self.meta_size = len(meta_set)
            self.meta_stream = self._stream(meta_set, config.meta_json_file, "--meta_batch_size",
                                            config.meta_batch_size, config.seed + 1, pad_id, workers, pin)
        self.weight_model = self._build_weight_model() if self.bilevel else None

        self.lower = self._lower_problem()
        self.upper = self._upper_problem() if self.bilevel else None

    # -- construction --------------------------------------------------------------------
    def _stream(self, dataset, path, flag: str, batch_size: int, seed: int, pad_id, workers, pin) -> BatchStream:
        """A stream over ``dataset``; data parallel, this rank's share of every global batch."""
        try:
            return BatchStream(dataset, batch_size, seed, pad_id, workers, pin, world_size=self.world.size,
                               rank=self.world.rank, pad_to_multiple_of=self.config.sequence_bucket)
        except ValueError as exc:  # too few records for every process to get a full batch
            raise DataError(f"{path}: {exc} ({flag}); use fewer processes or more records") from None

    def _replaces_previous_run(self) -> bool:
        """Whether this run replaces another run's files (--overwrite); without --resume or
        --overwrite a folder holding another run is refused. Rank 0 decides (the others say no)."""
        if self.folder is None or self.config.resume or not (previous := self.folder.previous_run()):
            return False
        if not self.config.overwrite:
            raise RunFolderError(
                f"--weights_path {self.out} holds another run ({previous}); pass --resume to continue it, "
                "--overwrite to replace it, or choose another folder")
        return True

    def _load_prm(self) -> ProcessRewardModel:
        c = self.config
        prm = ProcessRewardModel.from_pretrained(c.reward_model, device=self.device, precision=c.precision,
                                                 attn_implementation=c.attn_implementation)
        if c.gradient_checkpointing:
            prm.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        prm.model.config.use_cache = False
        if c.compile:
            prm.compile_layers()
        if c.cuda_graphs:
            prm.compile_towers()
        return prm

    def _build_weight_model(self) -> torch.nn.Module:
        c = self.config
        model = build_weight_model(c.reweighting, self.train_set.ids, self.train_set.domains,
                                   activation=c.activation_function, initialization=c.initialization,
                                   hidden_dim=c.hidden_dim, detach_net_input=c.detach_net_input)
        return model.to(self.device)

    def _problem_config(self, upper: bool):
        c = self.config
        return problem_config(upper=upper, unroll_steps=c.unroll_steps, gradient_accumulation=c.gradiant_accumulation,
                              gradient_clipping=c.gradiant_clipping, precision=c.precision,
                              darts_alpha=c.darts_alpha, darts=c.darts)

    def _lower_problem(self) -> LowerProblem:
        c = self.config
        optimizer = make_optimizer(self.prm.parameters(), c.optimizer, c.lr, c.weight_decay, c.momentum,
                                   c.adam_epsilon, self.device)
        scheduler = make_scheduler(optimizer, c.scheduler_type, c.iteration_num, c.warmup_ratio,
                                   c.scheduler_step_size, c.scheduler_gamma)
        return LowerProblem("lower", self._problem_config(upper=False), self.prm, optimizer, scheduler,
                            self.train_stream, c.lower_loss, autocast=not c.no_autocast, world=self.world)

    def _upper_problem(self) -> UpperProblem:
        c = self.config
        upper_steps = max(c.iteration_num // (c.unroll_steps * c.gradiant_accumulation), 1)
        optimizer = make_optimizer(self.weight_model.parameters(), c.optimizer, c.meta_lr, c.meta_weight_decay,
                                   c.meta_momentum, c.adam_epsilon, self.device)
        scheduler = make_scheduler(optimizer, c.meta_scheduler_type or c.scheduler_type, upper_steps,
                                   c.warmup_ratio, c.meta_scheduler_step_size, c.meta_scheduler_gamma)
        return UpperProblem("upper", self._problem_config(upper=True), self.weight_model, optimizer, scheduler,
                            self.meta_stream, c.aggregation_function, c.loss_target, autocast=not c.no_autocast,
                            meta_loss=c.meta_loss, world=self.world)

    def _build_engine(self) -> IterationEngine:
        c = self.config
        if self.upper is None:
            problems, deps = [self.lower], {"l2u": {}, "u2l": {}}
        else:
            problems = [self.upper, self.lower]
            deps = {"l2u": {self.lower: [self.upper]}, "u2l": {self.upper: [self.lower]}}
        strategy = "cpu" if self.device == "cpu" and c.strategy == "default" else c.strategy
        engine_config = EngineConfig(train_iters=c.iteration_num, strategy=strategy, roll_back=c.rollback,
                                     logger_type=c.logger if self.world.is_main else "none")
        return IterationEngine(problems, engine_config, deps, self._on_iteration, world=self.world)

    def _drop_overlong(self, records: list[dict], report, json_path, builder: ExampleBuilder, kind: str) -> list[dict]:
        """Records longer than --max_length (default: the model's context) are an error, or dropped."""
        limit = self.config.max_length or self.prm.max_length
        if limit is None:  # a model config that names no context length: nothing to check against
            return records
        kept, problems = drop_overlong(records, json_path, builder, limit, kind, self.config.skip_bad_records,
                                       indices=report.indices)
        for line in problems:
            print(f"warning: skipped {line}", file=sys.stderr)
        if problems:
            print(f"{json_path}: skipped {plural(len(problems), f'{kind} record')} longer than --max_length "
                  f"{limit}; {len(kept)} left", file=sys.stderr)
        return kept

    def problems(self) -> list:
        return [p for p in (self.lower, self.upper) if p is not None]

    def mode(self) -> str:
        if not self.bilevel:
            return "cold start" if self.config.retrain else "baseline"
        return STAGES[self.config.reweighting]

    # -- resume --------------------------------------------------------------------------------
    def run_config(self) -> dict:
        """What ``--resume`` compares: a checkpoint only continues the same kind of run on the same data."""
        a = self.config
        return {
            "mode": self.mode(),
            "reward_model": str(a.reward_model),
            "model_signature": model_signature(self.prm.model),
            "train_json_file": str(Path(a.train_json_file).resolve()),
            "train_ids": list(self.train_set.ids),
            "domains": list(self.train_set.domains),
            "meta_json_file": str(Path(a.meta_json_file).resolve()) if self.bilevel else None,
            "meta_size": self.meta_size,
            "processes": self.world.size,
            **self._sizes(),
        }

    def _sizes(self) -> dict:
        """The flags a checkpoint's optimizer state and data positions depend on."""
        a = self.config
        return {"batch_size": a.batch_size,
                "meta_batch_size": a.meta_batch_size if self.bilevel else None,
                "hidden_dim": a.hidden_dim if self.bilevel and a.reweighting == "net" else None,
                "optimizer": a.optimizer}

    def _find_resume_point(self):
        """The newest complete checkpoint (verified, readable), falling back past damaged ones."""
        found = list_checkpoints(self.out)
        reasons = []
        for ckpt in reversed(found):
            try:
                verify_checkpoint(ckpt)
                config = read_run_config(ckpt)
                state = read_trainer_state(ckpt, self.bilevel)
            except CheckpointError as exc:
                reasons.append(str(exc))
                print(f"note: skipping checkpoint {exc}; trying an older one", file=sys.stderr)
                continue
            if state["iteration"] > self.config.iteration_num:
                raise ResumeMismatch(f"checkpoint {ckpt.name} is at iteration {state['iteration']}, past "
                                     f"--iteration_num {self.config.iteration_num}; pass a larger --iteration_num")
            if config.get("mode") != self.mode():
                raise ResumeMismatch(f"--resume: {ckpt} belongs to a run of the {config.get('mode')}, and this "
                                     f"command trains the {self.mode()}; use another --weights_path")
            return ckpt, config, state
        if found:
            raise ResumeMismatch(f"--resume: no usable checkpoint in {self.out / 'checkpoints'} "
                                 f"({'; '.join(reasons)}); start again with --overwrite")
        if self.folder is not None and (previous := self.folder.previous_run()):
            raise ResumeMismatch(f"--resume: {self.out} holds a run ({previous}) but no checkpoint; "
                                 "start again with --overwrite")
        print(f"--resume: no checkpoint in {self.out / 'checkpoints'}; starting from the beginning")
        return None

    def _match_checkpoint(self, train_records: list[dict], meta_records) -> list[dict]:
        """Refuse a checkpoint of another configuration; put the training records in its id order.

        The weight table, the data stream and the Instance Net's log are all keyed by position
        in the training file, so a file with the same ids in another order is read in the
        checkpoint's order, and a file with other ids is refused."""
        ckpt, saved, _ = self.resume_point
        a = self.config
        where = f"--resume: {ckpt.name}"
        if saved.get("model_signature") != model_signature(self.prm.model):
            raise ResumeMismatch(f"{where} holds a model of another architecture than --reward_model "
                                 f"{a.reward_model} (it was made from {saved.get('reward_model')})")
        for flag, current in self._sizes().items():
            if saved.get(flag) != current:
                raise ResumeMismatch(f"{where} was made with --{flag} {saved.get(flag)}, not {current}")
        processes = int(saved.get("processes", 1))
        if processes != self.world.size:
            raise ResumeMismatch(f"{where} was made by {plural(processes, 'training process', 'training processes')}"
                                 f" and this run has {self.world.size}; resume with the same number (torchrun "
                                 "--nproc_per_node): the data position and the batch of an update depend on it")
        if self.bilevel and saved.get("meta_size") != len(meta_records):
            raise ResumeMismatch(f"{where} was made with {saved.get('meta_size')} meta records, "
                                 f"{a.meta_json_file} has {len(meta_records)}")
        saved_ids = [str(i) for i in saved.get("train_ids", [])]
        ids = [str(r["id"]) for r in train_records]
        if ids != saved_ids:
            if sorted(ids) != sorted(saved_ids):
                missing = sorted(set(saved_ids) - set(ids))
                new = sorted(set(ids) - set(saved_ids))
                example = (missing or new)[0] if (missing or new) else ""
                raise ResumeMismatch(
                    f"{where} was trained on other records: {len(missing)} of its ids are not in "
                    f"{a.train_json_file} and {len(new)} are new (e.g. {example!r}); resume with the same training data")
            by_id = {str(r["id"]): r for r in train_records}
            train_records = [by_id[i] for i in saved_ids]
            print(f"note: {a.train_json_file} lists the checkpoint's {len(ids)} training ids in another order; "
                  "weights are matched by id", file=sys.stderr)
        domains = sorted({r.get("dataset", "default") for r in train_records})
        if saved.get("domains") is not None and saved["domains"] != domains:
            raise ResumeMismatch(f"{where} was trained with domains {saved['domains']}, the data now has {domains}")
        if saved.get("train_json_file") != str(Path(a.train_json_file).resolve()):
            print(f"note: resuming with {a.train_json_file}; the checkpoint was made with "
                  f"{saved.get('train_json_file')} (same training ids)", file=sys.stderr)
        return train_records

    # -- state -----------------------------------------------------------------------------
    def trainer_state(self) -> dict:
        state = {"train_stream": self.train_stream.state_dict(), "net_seen": self.net_seen,
                 "best_eval": self.best_eval}
        for prob in self.problems():
            state[prob.name] = prob.state_dict()
        if self.meta_stream is not None:
            state["meta_stream"] = self.meta_stream.state_dict()
        return state

    def resume(self) -> int:
        if self.resume_point is None:
            return 0
        ckpt, _, state = self.resume_point
        state = load_checkpoint(ckpt, self.prm, self.weight_model, state)
        try:
            self.train_stream.load_state_dict(state["train_stream"])
            if self.meta_stream is not None:
                self.meta_stream.load_state_dict(state["meta_stream"])
            self.net_seen = dict(state.get("net_seen", {}))
            self.best_eval = self._restored_best(state.get("best_eval"), int(state["iteration"]))
            for prob in self.problems():
                prob.load_state_dict(state[prob.name])
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ResumeMismatch(f"--resume: {ckpt.name} does not fit this run's optimizer or data ({first})") from None
        it = int(state["iteration"])
        print(f"resumed from {ckpt} at iteration {it}")
        return it

    def _restored_best(self, best, start: int) -> dict | None:
        """The checkpoint's best evaluation; forgotten (with a note) when this run evaluates with
        --save_best on other records, whose accuracies do not compare."""
        if not isinstance(best, dict):
            return None
        if self.config.save_best and self.eval_records is not None:
            here = (str(Path(self.config.eval_json_file).resolve()), len(self.eval_records))
            if (best.get("eval_json_file"), best.get("questions")) != here:
                print(f"note: --save_best: the best so far (iteration {best.get('iteration')}) was evaluated on "
                      f"{best.get('eval_json_file')} ({best.get('questions')} questions), not {here[0]} "
                      f"({here[1]}); the next evaluation starts a new best", file=sys.stderr)
                return None
            on_disk = self._best_on_disk()
            if on_disk is not None and on_disk > start:
                print(f"note: {self.out / BEST_DIR} holds iteration {on_disk}, after the checkpoint resumed "
                      f"from; it stays until an evaluation of this run beats iteration {best.get('iteration')}'s",
                      file=sys.stderr)
        return dict(best)

    def _best_on_disk(self) -> int | None:
        """The iteration of the model in best/, or None."""
        try:
            return int(json.loads((self.out / BEST_DIR / BEST_INFO).read_text(encoding="utf-8"))["iteration"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # -- outputs ---------------------------------------------------------------------------
    def instance_weights(self) -> dict | None:
        if self.weight_model is None:
            return None
        if self.config.reweighting == "net":
            return dict(self.net_seen)
        return self.weight_model.effective()

    def nonfinite_state(self) -> str | None:
        """What holds a NaN or an infinity (the PRM, the weight model, the weights), or None."""
        if not all_finite(list(self.prm.parameters())):
            return "the PRM's parameters"
        if self.weight_model is not None and not all_finite(list(self.weight_model.parameters())):
            return "the weight model's parameters"
        for value in (self.instance_weights() or {}).values():
            if not math.isfinite(value["weight"] if isinstance(value, dict) else value):
                return "the instance weights"
        return None

    def last_checkpoint_text(self) -> str:
        ckpt = latest_checkpoint(self.out)
        return f"the last checkpoint (finite) is {ckpt}" if ckpt is not None else "no checkpoint was written"

    def export(self) -> None:
        """Write the usable model and the weights at the top of --weights_path."""
        tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=self.out))
        try:
            self.prm.save_pretrained(tmp)
            names = sorted(f.name for f in tmp.iterdir())
            write_json(self.out / EXPORT_MANIFEST, {"files": names})
            for name in names:
                os.replace(tmp / name, self.out / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        weights = self.instance_weights()
        if weights is not None:
            write_json(self.out / "instance_weights.json", weights)

    def save(self, iteration: int) -> Path:
        """Export and checkpoint (rank 0; the other ranks wait for it and get the path)."""
        bad = self.nonfinite_state()  # the same on every rank: their parameters are equal
        if bad is not None:
            raise TrainingDiverged(f"stopped at iteration {iteration}: {bad} are not finite, so nothing was "
                                   f"written; {self.last_checkpoint_text()}")
        def write():
            self.export()
            return save_checkpoint(self.out, iteration, self.prm, self.weight_model, self.trainer_state(),
                                   self.run_config(), keep=self.config.keep_checkpoints)

        return self._on_main(write, "save a checkpoint")

    # -- evaluation during training ----------------------------------------------------------
    def evaluates_at(self, iteration: int) -> bool:
        """Whether ``iteration`` ends with an evaluation: every --eval_every and the last one."""
        if self.eval_records is None:
            return False
        every = self.config.eval_every
        return iteration == self.config.iteration_num or (every > 0 and iteration % every == 0)

    def evaluate(self) -> dict:
        """Best-of-N on --eval_json_file with the PRM as it is now: the ``eval_*`` values of a
        metrics row (``eval_metrics``) plus ``eval_seconds``. The RNG states are put back after
        scoring, so training goes on exactly as it would have without it."""
        c = self.config
        start = time.perf_counter()
        rng = rng_state()
        try:
            questions, candidates = evaluate_in_memory(self.prm, self.eval_records, c.eval_json_file,
                                                       max_patch_num=c.eval_max_patch_num,
                                                       batch_size=c.eval_batch_size, allow_nonfinite=True,
                                                       world=self.world, workers=default_workers(self.device))
        finally:
            set_rng_state(rng)
        summary = summarise(questions, candidates)
        row = eval_metrics(summary)
        row["eval_seconds"] = round(time.perf_counter() - start, 6)
        self._eval_notes = [f"{summary[key]} {what}" for key, what in (
            ("truncated_candidates", "truncated"), ("unscorable_candidates", "unscorable"),
            ("nonfinite_candidates", "with non-finite scores")) if summary[key]]
        return row

    def _is_new_best(self, row: dict) -> bool:
        return self.best_eval is None or row[BEST_METRIC] > self.best_eval["accuracy"]

    def _eval_line(self, iteration: int, row: dict, best: bool) -> str:
        """One short line per evaluation, printed above the progress bar."""
        pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
        aggs = " ".join(f"{k[len('eval_accuracy_'):]} {pct(v)}" for k, v in row.items()
                        if k.startswith("eval_accuracy_"))
        line = (f"eval at {iteration} ({plural(row['eval_questions'], 'question')}, {row['eval_seconds']:.1f} s): "
                f"{aggs} | pass@1 {pct(row['eval_pass@1'])} oracle {pct(row['eval_oracle'])}")
        notes = list(self._eval_notes)
        if self.config.save_best:
            notes.append(f"new best -> {BEST_DIR}/" if best else f"best: {self.best_eval['iteration']}")
        return line + (" | " + "; ".join(notes) if notes else "")

    def save_best(self, iteration: int, row: dict) -> Path:
        """Write the model as it is now to ``<weights_path>/best/`` (model, processor,
        instance_weights.json, best.json), built in a temporary folder and renamed into place."""
        bad = self.nonfinite_state()
        if bad is not None:
            raise TrainingDiverged(f"stopped at iteration {iteration}: {bad} are not finite, so nothing was "
                                   f"written; {self.last_checkpoint_text()}")
        final = self.out / BEST_DIR
        self.best_eval = {"iteration": iteration, "accuracy": row[BEST_METRIC],
                          "eval_json_file": str(Path(self.config.eval_json_file).resolve()),
                          "questions": row["eval_questions"]}
        return self._on_main(lambda: self._write_best(final, iteration, row), f"write {BEST_DIR}/")

    def _write_best(self, final: Path, iteration: int, row: dict) -> Path:
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-best-", dir=self.out))
        old = None
        try:
            self.prm.save_pretrained(tmp)
            weights = self.instance_weights()
            if weights is not None:
                write_json(tmp / "instance_weights.json", weights)
            write_json(tmp / BEST_INFO, {
                "iteration": iteration,
                "selected_by": f"{BEST_METRIC}, the highest of the evaluations so far (ties keep the earlier)",
                "eval_json_file": str(Path(self.config.eval_json_file).resolve()),
                "questions": row["eval_questions"],
                "accuracy": {k[len("eval_accuracy_"):]: v for k, v in row.items() if k.startswith("eval_accuracy_")},
                "baselines": {name: row[f"eval_{name}"] for name in BASELINE_NAMES},
            })
            if final.is_symlink():
                final.unlink()
            elif final.exists():  # a folder cannot be renamed over a full one: move it aside first
                old = Path(tempfile.mkdtemp(prefix=".tmp-oldbest-", dir=self.out))
                os.replace(final, old)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def _on_main(self, write, what: str) -> Path:
        """``write()`` on rank 0 (the one that writes files); every rank gets its path, or stops
        with it when it fails, so no rank is left waiting for the others."""
        path = failure = error = None
        if self.world.is_main:
            try:
                path = write()
            except Exception as exc:  # noqa: BLE001 - re-raised below, after the others know
                error, failure = exc, f"{type(exc).__name__}: {exc}"
        path, failure = distributed.gather_objects(self.world, (str(path) if path else None, failure))[0]
        if error is not None:
            raise error
        if failure is not None:
            raise PeerFailed(f"{PEER_FAILED}: rank 0 could not {what} ({failure})")
        return Path(path)

    def _record(self, iteration: int, seconds: float, stats: dict) -> dict:
        """The metrics.jsonl row of an iteration, from the stats its problems returned."""
        low = stats["lower"]
        row = {"iteration": iteration, "seconds": round(seconds, 6)}
        row.update({k: v for k, v in low.items() if not k.startswith("instance_")})
        row["skipped_lower"] = self.lower.skipped_updates
        if self.upper is not None:
            row.update(stats["upper"])  # empty in an iteration without an upper step
            row["skipped_upper"] = self.upper.skipped_updates
        if self.config.reweighting == "net" and self.weight_model is not None:
            ids = self.train_set.ids
            for i, w in zip(low.get("instance_index", []), low.get("instance_weight", [])):
                self.net_seen[ids[i]] = {"weight": w, "iteration": iteration}
        return row

    # -- the loop --------------------------------------------------------------------------
    def _on_iteration(self, it: int, stats: dict) -> bool:
        now = time.perf_counter()
        row = self._record(it, now - self._last_time, stats)
        self._last_time = now
        # a signal to any rank stops every rank after this iteration (rank 0 saves)
        signum = distributed.max_int(self.world, self._signal or 0)
        if signum and self._signal is None:
            self._signal = signum
        diverged = self._divergence(it)  # the same on every rank, as are the parameters and the skips
        new_best = False
        if diverged is None and self.evaluates_at(it):
            row.update(self.evaluate())
            new_best = self.config.save_best and self._is_new_best(row)
            if self.world.is_main:
                tqdm.write(self._eval_line(it, row, new_best))
            self._last_time = time.perf_counter()  # the next row's seconds are training time only
        if self.world.is_main:
            self._log(it, row)
        if diverged is not None:
            raise TrainingDiverged(diverged)
        if new_best:
            self.save_best(it, row)
        final = it == self.config.iteration_num
        if it % self.config.save_every_iterations == 0 or final or self._signal is not None:
            path = self.save(it)
            if self._signal is not None:
                name = signal.Signals(self._signal).name
                raise TrainingInterrupted(
                    f"{name} received: saved a checkpoint at iteration {it} in {path}; "
                    f"resume with the same command plus --resume", self._signal)
        return True

    def _log(self, it: int, row: dict) -> None:
        """The metrics row to metrics.jsonl (and the logger), the progress bar (rank 0)."""
        # metrics.jsonl keeps NaN as the JSON-superset token NaN (one row per iteration, as
        # json.loads reads it); every other output file is strict JSON.
        self.metrics_file.write(json.dumps(row) + "\n")
        self.metrics_file.flush()
        if self.config.logger != "none":
            scalars = {k: v for k, v in row.items() if isinstance(v, (int, float))}
            self.engine.logger.log(scalars, tag="train", step=it)
        if self.bar is not None:
            post = {"loss": f"{row.get('lower_loss', float('nan')):.4f}"}
            if "meta_loss" in row:
                self._last_meta = row["meta_loss"]
            if self._last_meta is not None:
                post["meta"] = f"{self._last_meta:.4f}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)

    def _divergence(self, it: int) -> str | None:
        """Why training must stop after iteration ``it`` (a problem's parameters or updates went
        non-finite), or None."""
        for prob in self.problems():
            if not prob.params_finite:
                return (f"stopped at iteration {it}: the {prob.name}-level update made its parameters non-finite "
                        f"(lower the learning rate); {self.last_checkpoint_text()}")
            if prob.bad_in_a_row >= self.config.max_bad_steps:
                return (f"stopped at iteration {it}: {prob.bad_in_a_row} non-finite {prob.name}-level updates in a "
                        f"row (--max_bad_steps {self.config.max_bad_steps}); {self.last_checkpoint_text()}")
        return None

    def _handle_signal(self, signum, frame):
        if self._signal is not None:  # a second signal: stop at once, the last checkpoint stands
            self._signal = signum
            raise TrainingInterrupted(f"{signal.Signals(signum).name} received again: stopped at once; "
                                      f"{self.last_checkpoint_text()}; resume with the same command plus --resume",
                                      signum, at_once=True)
        self._signal = signum
        print(f"\n{signal.Signals(signum).name}: finishing this iteration, then saving a checkpoint ...", flush=True)

    def run(self) -> Path:
        """Train; rank 0 writes the outputs (every rank returns the output folder)."""
        a = self.config
        main = self.world.is_main
        try:
            if self.replace_previous:
                self.folder.remove_previous_run()
            start = self.resume()
            if main:
                if self.resume_point is None:
                    (self.out / "metrics.jsonl").unlink(missing_ok=True)
                else:
                    self._trim_metrics(start)
                write_json(self.out / "train_args.json", dataclasses.asdict(a))
                self.metrics_file = open_append(self.out / "metrics.jsonl")
            self.bar = None if a.no_progress or not main else tqdm(total=a.iteration_num, initial=start,
                                                                   desc=self.mode(), unit="it")
            self._last_time, self._last_meta = time.perf_counter(), None
            previous = {s: signal.signal(s, self._handle_signal) for s in (signal.SIGTERM, signal.SIGINT)}
            try:
                if start < a.iteration_num:
                    self.engine.run(start)
            finally:
                for s, h in previous.items():
                    signal.signal(s, h)
                if self.metrics_file is not None:
                    self.metrics_file.close()
                if self.bar is not None:
                    self.bar.close()
        finally:
            self._close_folder()
        if main and a.save_best and self.best_eval is not None:
            print(f"best model (iteration {self.best_eval['iteration']}, mean-aggregation accuracy "
                  f"{100 * self.best_eval['accuracy']:.2f}%): {self.out / BEST_DIR}")
        return self.out

    def _trim_metrics(self, start: int) -> None:
        """Drop rows logged after the checkpoint resumed from (they are about to be redone)."""
        path = self.out / "metrics.jsonl"
        if not path.exists() or path.is_symlink():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if isinstance(row, dict) and int(row.get("iteration", 0)) <= start:
                kept.append(line)
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def write_figures(trainer: Trainer) -> list[Path]:
    """The run's figures: in ``<weights_path>/figs/`` by default, named after the run with ``--figs_dir``."""
    from .figures import plot_losses, plot_weights

    if trainer.config.figs_dir is None:
        figs, prefix = trainer.out / "figs", ""
    else:
        figs, prefix = Path(trainer.config.figs_dir), trainer.out.resolve().name + "_"
    paths = [plot_losses(trainer.out / "metrics.jsonl", figs / f"{prefix}losses.png")]
    weights = trainer.instance_weights()
    if weights:
        if trainer.config.reweighting == "domain":
            domain_of = {d: d for d in weights}
        else:
            domain_of = {str(r["id"]): r.get("dataset", "default") for r in trainer.train_set.records}
        values = {k: (v["weight"] if isinstance(v, dict) else v) for k, v in weights.items()}
        paths.append(plot_weights(values, domain_of, figs / f"{prefix}weights.png", trainer.mode()))
    return paths
