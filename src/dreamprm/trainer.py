"""One training run: build data, PRM, weight model, Betty problems; run; write the outputs.

Outputs in ``--weights_path`` (every ``--save_every_iterations`` and at the end):
the PRM + processor (safetensors, loadable by ``from_pretrained``), ``instance_weights.json``,
``train_args.json``, ``metrics.jsonl`` (one row per iteration) and ``checkpoints/``.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import torch
from betty.configs import EngineConfig
from tqdm.auto import tqdm

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .data import load_records
from .examples import BatchStream, ConversationDataset, ExampleBuilder
from .optim import make_optimizer, make_scheduler
from .prm import ProcessRewardModel
from .problems import IterationEngine, LowerProblem, UpperProblem, problem_config
from .weighting import build_weight_model


def quiet_libraries() -> None:
    """Keep the terminal for the run's own progress bar: no per-save bars, Betty INFO lines."""
    import logging

    from betty.logging.logger_base import get_logger
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    get_logger().setLevel(logging.WARNING)  # Betty creates its logger at INFO on first use


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT: a checkpoint was saved; the message says how to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class TrainingDiverged(RuntimeError):
    """Too many non-finite updates in a row."""


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _atomic_write_text(path: Path, text: str) -> None:
    """Write beside ``path`` and rename over it: a kill mid-write never leaves a torn file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _atomic_json(path: Path, data) -> None:
    _atomic_write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


class Trainer:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.weights_path)
        self.bilevel = not (args.baseline or args.retrain)
        self.device = args.device
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise SystemExit("error: --device cuda but no CUDA device is visible; use --device cpu --precision fp32")
        quiet_libraries()
        set_seed(args.seed)
        self.prm = ProcessRewardModel.from_pretrained(
            args.reward_model, device=self.device, precision=args.precision,
            attn_implementation=args.attn_implementation,
        )
        if args.gradient_checkpointing:
            self.prm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.prm.model.config.use_cache = False
        if args.compile:
            self.prm.compile_layers()
        builder = ExampleBuilder(self.prm.processor, args.max_patch_num)
        pad_id = self.prm.processor.tokenizer.pad_token_id or 0
        pin = self.device.startswith("cuda")
        workers = args.num_workers
        if workers is None:  # decode and tile off the training loop's thread on a GPU machine
            workers = min(4, max((os.cpu_count() or 1) - 1, 0)) if pin else 0

        train_records, report = load_records(args.train_json_file, "train", skip_bad=args.skip_bad_records)
        print(report.summary())
        self.train_set = ConversationDataset(train_records, args.train_json_file, builder)
        self.train_stream = BatchStream(self.train_set, args.batch_size, args.seed, pad_id, workers, pin)

        self.weight_model = None
        self.meta_stream = None
        if self.bilevel:
            meta_records, meta_report = load_records(args.meta_json_file, "meta", skip_bad=args.skip_bad_records)
            print(meta_report.summary())
            meta_set = ConversationDataset(meta_records, args.meta_json_file, builder, domains=self.train_set.domains)
            self.meta_stream = BatchStream(meta_set, args.meta_batch_size, args.seed + 1, pad_id, workers, pin)
            self.weight_model = build_weight_model(
                args.reweighting, self.train_set.ids, self.train_set.domains, args.activation_function,
                args.initialization, args.hidden_dim, args.detach_net_input)
            self.weight_model.to(self.device)
        self.net_seen: dict[str, dict] = {}
        self.metrics_file = None
        self._signal = None
        self.engine = self._build_engine()

    # -- construction --------------------------------------------------------------------
    def _build_engine(self) -> IterationEngine:
        a = self.args
        lower_opt = make_optimizer(self.prm.parameters(), a.optimizer, a.lr, a.weight_decay, a.momentum,
                                   a.adam_epsilon, self.device)
        lower_sched = make_scheduler(lower_opt, a.scheduler_type, a.iteration_num, a.warmup_ratio,
                                     a.scheduler_step_size, a.scheduler_gamma)
        self.lower = LowerProblem("lower", problem_config(a, upper=False), self.prm, lower_opt, lower_sched,
                                  self.train_stream, a.lower_loss, autocast=not a.no_autocast)
        problems, deps = [self.lower], {"l2u": {}, "u2l": {}}
        self.upper = None
        if self.bilevel:
            upper_steps = max(a.iteration_num // (a.unroll_steps * a.gradiant_accumulation), 1)
            meta_opt = make_optimizer(self.weight_model.parameters(), a.optimizer, a.meta_lr, a.meta_weight_decay,
                                      a.meta_momentum, a.adam_epsilon, self.device)
            meta_sched = make_scheduler(meta_opt, a.meta_scheduler_type or a.scheduler_type, upper_steps, a.warmup_ratio,
                                        a.meta_scheduler_step_size, a.meta_scheduler_gamma)
            self.upper = UpperProblem("upper", problem_config(a, upper=True), self.weight_model, meta_opt,
                                      meta_sched, self.meta_stream, a.aggregation_function, a.loss_target,
                                      autocast=not a.no_autocast)
            problems = [self.upper, self.lower]
            deps = {"l2u": {self.lower: [self.upper]}, "u2l": {self.upper: [self.lower]}}
        strategy = "cpu" if self.device == "cpu" and a.strategy == "default" else a.strategy
        config = EngineConfig(train_iters=a.iteration_num, valid_step=a.save_every_iterations,
                              strategy=strategy, roll_back=a.rollback, logger_type=a.logger)
        return IterationEngine(problems, config, deps, self._on_iteration)

    def problems(self) -> list:
        return [p for p in (self.lower, self.upper) if p is not None]

    # -- state -----------------------------------------------------------------------------
    def trainer_state(self) -> dict:
        state = {"train_stream": self.train_stream.state_dict(), "net_seen": self.net_seen}
        for prob in self.problems():
            state[prob.name] = {
                "optimizer": prob.optimizer.state_dict(),
                "scheduler": prob.scheduler.state_dict() if prob.scheduler is not None else None,
                "count": prob._count,
                "skipped_updates": prob.skipped_updates,
            }
        if self.meta_stream is not None:
            state["meta_stream"] = self.meta_stream.state_dict()
        return state

    def resume(self) -> int:
        ckpt = latest_checkpoint(self.out)
        if ckpt is None:
            print(f"--resume: no checkpoint in {self.out / 'checkpoints'}; starting from the beginning")
            return 0
        state = load_checkpoint(ckpt, self.prm, self.weight_model)
        self.train_stream.load_state_dict(state["train_stream"])
        if self.meta_stream is not None:
            self.meta_stream.load_state_dict(state["meta_stream"])
        self.net_seen = dict(state.get("net_seen", {}))
        for prob in self.problems():
            saved = state[prob.name]
            prob.optimizer.load_state_dict(saved["optimizer"])
            if prob.scheduler is not None and saved["scheduler"] is not None:
                prob.scheduler.load_state_dict(saved["scheduler"])
            prob._count = int(saved["count"])
            prob.skipped_updates = int(saved["skipped_updates"])
        it = int(state["iteration"])
        print(f"resumed from {ckpt} at iteration {it}")
        return it

    # -- outputs ---------------------------------------------------------------------------
    def instance_weights(self) -> dict | None:
        if self.weight_model is None:
            return None
        if self.args.reweighting == "net":
            return dict(self.net_seen)
        return self.weight_model.effective()

    def export(self) -> None:
        """Write the usable model and the weights at the top of --weights_path."""
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / ".export-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.prm.save_pretrained(tmp)
        for f in tmp.iterdir():
            os.replace(f, self.out / f.name)
        tmp.rmdir()
        weights = self.instance_weights()
        if weights is not None:
            _atomic_json(self.out / "instance_weights.json", weights)

    def save(self, iteration: int) -> Path:
        self.export()
        return save_checkpoint(self.out, iteration, self.prm, self.weight_model, self.trainer_state(),
                               keep=self.args.keep_checkpoints)

    def _record(self, iteration: int, seconds: float) -> dict:
        low = self.lower.stats
        row = {"iteration": iteration, "seconds": round(seconds, 6)}
        row.update({k: v for k, v in low.items() if not k.startswith("instance_")})
        row["skipped_lower"] = self.lower.skipped_updates
        if self.upper is not None:
            if self.upper.stats:
                row.update(self.upper.stats)
                self.upper.stats = {}
            row["skipped_upper"] = self.upper.skipped_updates
        if self.args.reweighting == "net" and self.weight_model is not None:
            ids = self.train_set.ids
            for i, w in zip(low.get("instance_index", []), low.get("instance_weight", [])):
                self.net_seen[ids[i]] = {"weight": w, "iteration": iteration}
        return row

    # -- the loop --------------------------------------------------------------------------
    def _on_iteration(self, it: int) -> bool:
        now = time.perf_counter()
        row = self._record(it, now - self._last_time)
        self._last_time = now
        self.metrics_file.write(json.dumps(row) + "\n")
        self.metrics_file.flush()
        if self.args.logger != "none":
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
        for prob in self.problems():
            if prob.bad_in_a_row >= self.args.max_bad_steps:
                raise TrainingDiverged(
                    f"stopped at iteration {it}: {prob.bad_in_a_row} non-finite {prob.name}-level updates in a row "
                    f"(--max_bad_steps {self.args.max_bad_steps}); the last checkpoint is in {self.out / 'checkpoints'}"
                )
        final = it == self.args.iteration_num
        if it % self.args.save_every_iterations == 0 or final or self._signal is not None:
            path = self.save(it)
            if self._signal is not None:
                name = signal.Signals(self._signal).name
                raise TrainingInterrupted(
                    f"{name} received: saved a checkpoint at iteration {it} in {path}; "
                    f"resume with the same command plus --resume", self._signal)
        return True

    def _handle_signal(self, signum, frame):
        if self._signal is not None:  # a second signal: stop at once
            raise KeyboardInterrupt
        self._signal = signum
        print(f"\n{signal.Signals(signum).name}: finishing this iteration, then saving a checkpoint ...", flush=True)

    def run(self) -> Path:
        a = self.args
        self.out.mkdir(parents=True, exist_ok=True)
        start = self.resume() if a.resume else 0
        if not a.resume:
            (self.out / "metrics.jsonl").unlink(missing_ok=True)
        else:
            self._trim_metrics(start)
        _atomic_json(self.out / "train_args.json", vars(a))
        self.engine.start_iteration = start
        self.metrics_file = open(self.out / "metrics.jsonl", "a", encoding="utf-8")
        self.bar = None if a.no_progress else tqdm(total=a.iteration_num, initial=start, desc=self._stage(), unit="it")
        self._last_time, self._last_meta = time.perf_counter(), None
        previous = {s: signal.signal(s, self._handle_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            if start < a.iteration_num:
                self.engine.run()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            self.metrics_file.close()
            if self.bar is not None:
                self.bar.close()
        return self.out

    def _trim_metrics(self, start: int) -> None:
        """Drop rows logged after the checkpoint resumed from (they are about to be redone)."""
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if isinstance(row, dict) and int(row.get("iteration", 0)) <= start:
                kept.append(line)
        _atomic_write_text(path, "".join(line + "\n" for line in kept))

    def _stage(self) -> str:
        if not self.bilevel:
            return "cold start" if self.args.retrain else "baseline"
        return {"table": "Instance Table", "net": "Instance Net", "domain": "Domain Table"}[self.args.reweighting]


def write_figures(trainer: Trainer) -> list[Path]:
    from .figures import plot_losses, plot_weights

    figs = Path(trainer.args.figs_dir)
    name = trainer.out.resolve().name
    paths = [plot_losses(trainer.out / "metrics.jsonl", figs / f"{name}_losses.png")]
    weights = trainer.instance_weights()
    if weights:
        if trainer.args.reweighting == "domain":
            domain_of = {d: d for d in weights}
        else:
            domain_of = {str(r["id"]): r.get("dataset", "default") for r in trainer.train_set.records}
        values = {k: (v["weight"] if isinstance(v, dict) else v) for k, v in weights.items()}
        paths.append(plot_weights(values, domain_of, figs / f"{name}_weights.png", trainer._stage()))
    return paths
