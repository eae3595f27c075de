"""Train a DreamPRM-1.5 process reward model: cold start, Instance Table/Net, Domain Table.

    python train.py --retrain 1 ...          # cold-start SFT (lower level alone)
    python train.py --reweighting table ...  # bi-level instance reweighting (default)
See README.md for every flag group and the output files.

A thin CLI: the flags are ``dreamprm.config.TrainConfig`` (parsed by ``arguments``), the work is
``dreamprm.trainer.Trainer``. Exit status: 0 done; 2 bad input (a flag, the data, the model, the
output folder, a resume mismatch); 3 diverged; 128 + the signal number after SIGTERM/SIGINT.
"""

from __future__ import annotations

import sys

from arguments import FlagError, TrainConfig, parse_train_args


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_train_args(argv)
    except FlagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return _train(config)
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (loading data or the model)
        print("interrupted (Ctrl-C)", file=sys.stderr)
        return 130


def _train(config: TrainConfig) -> int:
    from dreamprm.checkpoint import CheckpointError
    from dreamprm.prm import ModelLoadError
    from dreamprm.records import DataError
    from dreamprm.runfolder import RunFolderError
    from dreamprm.trainer import (ResumeMismatch, SetupError, Trainer, TrainingDiverged, TrainingInterrupted,
                                  write_figures)

    try:
        trainer = Trainer(config)
        out = trainer.run()
    except (DataError, ModelLoadError, RunFolderError, ResumeMismatch, CheckpointError, SetupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return 128 + exc.signum
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    print(f"model, processor and weights: {out}")
    print(f"metrics: {out / 'metrics.jsonl'}; checkpoints: {out / 'checkpoints'}")
    try:
        figs = write_figures(trainer)
    except OSError as exc:  # the run's outputs are safe; a figure folder problem only costs the figures
        print(f"warning: figures not written: {exc}", file=sys.stderr)
    else:
        print("figures: " + ", ".join(str(p) for p in figs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
