"""One rank of a data-parallel tiny-model run, for tests/test_distributed.py (run under torchrun).

    torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py STATE_DIR WEIGHTS_DIR \
        [--stop RANK:ITERATION] [--nan RANK:ITERATION] [--fail_save] -- <train.py flags>

Trains in-process (tests/runs.py's flags plus the ones after ``--``) and saves what the rank ended
with to ``STATE_DIR/rank<R>.pt``: the PRM's and the weight model's parameters, the skipped-update
counts, how the run ended (``done``, ``interrupted`` or the exception's name, with its message),
and which output-writing functions this rank called. ``--stop`` sends this run's SIGTERM handler
a signal on one rank at one iteration; ``--nan`` makes that rank's lower loss NaN at one
iteration; ``--fail_save`` makes writing a checkpoint fail (a full disk) wherever it is tried.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]  # runs, arguments

import dreamprm.problems as problems  # noqa: E402
import dreamprm.trainer as trainer_mod  # noqa: E402
from dreamprm import distributed  # noqa: E402
from runs import train_config  # noqa: E402

WRITERS = ("save_checkpoint", "write_json", "open_append", "RunFolder")


def rank_iteration(text: str | None):
    return None if text is None else tuple(int(x) for x in text.split(":"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("state_dir")
    p.add_argument("weights")
    p.add_argument("--stop")
    p.add_argument("--nan")
    p.add_argument("--fail_save", action="store_true")
    own, extra = p.parse_known_args()
    extra = [a for a in extra if a != "--"]
    rank = distributed.env_rank()
    calls: list[str] = []
    for name in WRITERS:  # observe (not replace) the functions that write into the run folder
        real = getattr(trainer_mod, name)

        def observed(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            if own.fail_save and _name == "save_checkpoint":
                raise OSError(28, "No space left on device")
            return _real(*args, **kwargs)

        setattr(trainer_mod, name, observed)

    box: dict = {}
    nan = rank_iteration(own.nan)
    real_losses = problems.instance_losses

    def losses(*args, **kwargs):
        out = real_losses(*args, **kwargs)
        t = box.get("trainer")
        if nan is not None and t is not None and rank == nan[0] and t.engine.global_step == nan[1]:
            out = out * float("nan")
        return out

    problems.instance_losses = losses
    trainer = box["trainer"] = trainer_mod.Trainer(train_config(Path(own.weights), *extra))
    stop = rank_iteration(own.stop)
    inner = trainer.engine.on_iteration

    def on_iteration(it, stats):
        if stop is not None and rank == stop[0] and it == stop[1]:
            trainer._handle_signal(signal.SIGTERM, None)
        return inner(it, stats)

    trainer.engine.on_iteration = on_iteration
    ended = "done"
    try:
        trainer.run()
    except trainer_mod.TrainingInterrupted:
        ended = "interrupted"
    except Exception as exc:  # noqa: BLE001 - recorded for the test to check
        ended = f"{type(exc).__name__}: {exc}"
    state = {
        "prm": {k: v.detach().clone() for k, v in trainer.prm.state_dict().items()},
        "weights": ({k: v.detach().clone() for k, v in trainer.weight_model.state_dict().items()}
                    if trainer.weight_model is not None else {}),
        "skipped": [prob.skipped_updates for prob in trainer.problems()],
        "ended": ended,
        "writes": calls,
        "world_size": trainer.world.size,
    }
    torch.save(state, Path(own.state_dir) / f"rank{rank}.pt")
    distributed.leave()


if __name__ == "__main__":
    main()
