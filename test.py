"""Best-of-N evaluation of a PRM: ``python test.py --reward_model ./weights``.

A thin CLI: the flags live in ``arguments.test_parser``, the work in ``dreamprm.bestofn.run``.
Exit code 0 on success, 2 on bad input (an invalid test record, a missing model folder).
"""

from __future__ import annotations

import sys

from arguments import FlagError, check_test_args, test_parser


def main(argv: list[str] | None = None) -> int:
    args = test_parser().parse_args(argv)
    try:
        check_test_args(args)
    except FlagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from dreamprm.bestofn import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
