"""Train a DreamPRM-1.5 process reward model: cold start, Instance Table/Net, Domain Table.

    python train.py --retrain 1 ...          # cold-start SFT (lower level alone)
    python train.py --reweighting table ...  # bi-level instance reweighting (default)
See README.md for every flag group and the output files.
"""

from __future__ import annotations

import sys

from arguments import FlagError, check_train_args, train_parser


def main(argv=None) -> int:
    args = train_parser().parse_args(argv)
    try:
        check_train_args(args)
    except FlagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from dreamprm.data import DataError
    from dreamprm.trainer import Trainer, TrainingDiverged, TrainingInterrupted, write_figures

    try:
        trainer = Trainer(args)
        out = trainer.run()
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    figs = write_figures(trainer)
    print(f"model, processor and weights: {out}")
    print(f"metrics: {out / 'metrics.jsonl'}; checkpoints: {out / 'checkpoints'}")
    print("figures: " + ", ".join(str(p) for p in figs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
