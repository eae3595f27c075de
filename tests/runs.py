"""Shared by the tests that train the tiny model in-process (test_resume.py, test_nonfinite.py)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from arguments import parse_train_args
from dreamprm.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


def train_argv(weights: Path, *extra: str) -> list[str]:
    return ["--reward_model", "tiny", "--device", "cpu", "--precision", "fp32", "--weights_path", str(weights),
            "--meta_lr", "5e-3", "--figs_dir", str(weights / "figs"), "--no_progress",
            "--train_json_file", str(DATA / "train.json"), "--meta_json_file", str(DATA / "meta.json"), *extra]


def train_config(weights: Path, *extra: str):
    return parse_train_args(train_argv(weights, *extra))


def run_trainer(weights: Path, *extra: str, stop_at: int | None = None, each=None):
    """Run a Trainer in-process; ``stop_at`` delivers SIGTERM (via the handler) during that iteration."""

    trainer = Trainer(train_config(weights, *extra))
    inner = trainer.engine.on_iteration

    def on_iteration(it, stats):
        if stop_at is not None and it == stop_at:
            trainer._handle_signal(signal.SIGTERM, None)
        if each is not None:
            each(trainer, it)
        return inner(it, stats)

    trainer.engine.on_iteration = on_iteration
    trainer.run()
    return trainer


def read_metrics(weights: Path) -> list[dict]:
    return [json.loads(line) for line in (weights / "metrics.jsonl").read_text().splitlines()]
