"""Train a DreamPRM-1.5 process reward model: cold start, Instance Table/Net, Domain Table.

    python train.py --retrain 1 ...          # cold-start SFT (lower level alone)
    python train.py --reweighting table ...  # bi-level instance reweighting (default)
See README.md for every flag group and the output files.

A thin CLI: the flags are ``dreamprm.config.TrainConfig`` (parsed by ``arguments``), the work is
``dreamprm.trainer.Trainer``. Exit status: 0 done; 2 bad input (a flag, the data, the model, the
output folder, a resume mismatch); 3 diverged; 128 + the signal number after SIGTERM/SIGINT.

Under ``torchrun ... train.py --strategy distributed`` every process runs this file; rank 0 prints
and writes, the others stay quiet except for an error of their own (``[rank N] error: ...``).
"""

from __future__ import annotations

import sys
import warnings

from arguments import FlagError, TrainConfig, parse_train_args


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_train_args(argv)
    except FlagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if config.strategy != "distributed":
        return _main_process(config)
    # DDP notes a parameter whose gradient comes strided (a slice of the vision embeddings); harmless
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    try:
        from dreamprm.distributed import PEER_FAILED, env_rank, quiet_unless_main
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    return quiet_unless_main(env_rank(), lambda: _main_process(config), echo=lambda line: PEER_FAILED not in line)


def _main_process(config: TrainConfig) -> int:
    try:
        return _train(config)
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (loading data or the model)
        print("interrupted (Ctrl-C)", file=sys.stderr)
        return 130


def _train(config: TrainConfig) -> int:
    from dreamprm import distributed
    from dreamprm.checkpoint import CheckpointError
    from dreamprm.prm import ModelLoadError
    from dreamprm.records import DataError
    from dreamprm.runfolder import RunFolderError
    from dreamprm.trainer import ResumeMismatch, SetupError, Trainer, TrainingDiverged, TrainingInterrupted

    together = True
    try:
        trainer = Trainer(config)
        out = trainer.run()
    except (DataError, ModelLoadError, RunFolderError, ResumeMismatch, CheckpointError, SetupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except TrainingInterrupted as exc:
        print(str(exc), file=sys.stderr)
        code = 128 + exc.signum
        together = not exc.at_once
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 3
    else:
        code = 0
    if code != 0:
        # these errors stop every rank at the same point (the trainer has them agree), so all
        # leave the group together; a second signal stops one process at once, without waiting
        distributed.leave(wait=together)
        return code
    try:
        if trainer.world.is_main:
            _report(trainer, out)
    finally:
        distributed.leave()  # the other ranks wait for rank 0's figures
    return 0


def _report(trainer, out) -> None:
    from dreamprm.trainer import write_figures

    print(f"model, processor and weights: {out}")
    print(f"metrics: {out / 'metrics.jsonl'}; checkpoints: {out / 'checkpoints'}")
    try:
        figs = write_figures(trainer)
    except OSError as exc:  # the run's outputs are safe; a figure folder problem only costs the figures
        print(f"warning: figures not written: {exc}", file=sys.stderr)
    else:
        print("figures: " + ", ".join(str(p) for p in figs))


if __name__ == "__main__":
    sys.exit(main())
