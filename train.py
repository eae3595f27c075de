"""Train a DreamPRM-1.5 process reward model: cold start, Instance Table/Net, Domain Table.

    python train.py --retrain 1 ...          # cold-start SFT (lower level alone)
    python train.py --reweighting table ...  # bi-level instance reweighting (default)
See README.md for every flag group and the output files.
"""

from __future__ import annotations

import sys

from arguments import FlagError, check_train_args, default_weights_path, train_parser


def main(argv=None) -> int:
    args = train_parser().parse_args(argv)
    try:
        check_train_args(args)
    except FlagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.weights_path is None:
        args.weights_path = default_weights_path(args)
    try:
        return _train(args)
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (loading data or the model)
        print("interrupted (Ctrl-C)", file=sys.stderr)
        return 130


def _train(args) -> int:
    from dreamprm.checkpoint import CheckpointError
    from dreamprm.data import DataError
    from dreamprm.prm import ModelLoadError
    from dreamprm.runfolder import RunFolderError
    from dreamprm.trainer import (ResumeMismatch, SetupError, Trainer, TrainingDiverged, TrainingInterrupted,
                                  write_figures)

    try:
        trainer = Trainer(args)
        out = trainer.run()
    except (DataError, ModelLoadError, RunFolderError, ResumeMismatch, CheckpointError, SetupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
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
