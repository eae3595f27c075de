"""Best-of-N evaluation of a PRM: ``python test.py --reward_model ./weights/table``.

A thin CLI: the flags live in ``arguments.test_parser``, the work in ``dreamprm.bestofn.run``.
Exit codes: 0 done; 1 out of memory while scoring; 2 bad input (a flag, an output path that
cannot be written, an invalid test record, a model that cannot be loaded); 3 non-finite step
scores (a diverged model; ``--allow_nonfinite`` scores anyway); 130 / 143 interrupted by Ctrl-C
(SIGINT) / SIGTERM. A run stopped while scoring saves the questions scored so far to
``--output_file``, marked ``"partial": true``.
"""

from __future__ import annotations

import signal
import sys

from arguments import FlagError, check_test_args, test_parser


def main(argv: list[str] | None = None) -> int:
    args = test_parser().parse_args(argv)
    try:
        check_test_args(args)
    except FlagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        from dreamprm.bestofn import run  # imports torch: seconds, and Ctrl-C may come meanwhile
    except KeyboardInterrupt:
        print("interrupted (SIGINT) before any question was scored; nothing written", file=sys.stderr)
        return 128 + signal.SIGINT
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
