"""Command-line flags of the project's entry points, built from the typed configs.

Every flag is a field of ``dreamprm.config.TrainConfig`` (``train.py``) or ``TestConfig``
(``test.py``): its name, default, help, choices and group live there. This module turns those
fields into argparse parsers and back: ``parse_train_args(argv)`` and ``parse_test_args(argv)``
return a validated config, or raise ``FlagError`` for a value out of range (argparse itself
exits 2 on an unknown flag or a bad choice, as before).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

from dreamprm.config import FlagError, TestConfig, TrainConfig

__all__ = ["FlagError", "TestConfig", "TrainConfig", "parse_test_args", "parse_train_args", "test_parser",
           "train_parser"]

TRAIN_DESCRIPTION = ("DreamPRM-1.5 training: cold-start SFT (--retrain 1 / --baseline) or bi-level "
                     "instance reweighting (--reweighting table|net|domain) on Betty.")

TEST_DESCRIPTION = ("Best-of-N evaluation: score every candidate's steps with the PRM, aggregate, "
                    "select the best candidate, and report accuracy against baselines.")

TEST_EPILOG = """\
baselines (question with k candidates, c of them correct):
  pass@1            c/k averaged over questions: the expected accuracy of one candidate drawn
                    at random (the same number as a random pick)
  first candidate   accuracy of always taking candidate 0 (files are often ordered)
  oracle            a question counts when any candidate is correct (pass@k)
  self-consistency  majority vote over the candidates' normalised 'Answer:' texts

accuracy-vs-N curve (figs/ beside --output_file): for N = 1..k, the expected accuracy when each
question keeps a uniformly random subset of min(N, k) candidates; exact for every aggregation,
random and oracle, so every curve starts at pass@1 at N = 1.

exit status: 0 done, 1 out of memory, 2 bad input, 3 non-finite scores (--allow_nonfinite),
130/143 interrupted (the questions scored so far are saved, marked "partial": true)
"""


def _flag_bool(text: str) -> bool:
    """Booleans written the upstream way (``--retrain 1``) as well as ``true``/``false``."""
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "y"):
        return True
    if value in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (1/0/true/false), got {text!r}")


def _value_type(hint) -> type:
    """``int`` for ``int`` and ``int | None``, and so on."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [t for t in typing.get_args(hint) if t is not type(None)]
    return hint


def add_config_flags(parser: argparse.ArgumentParser, config_class: type) -> argparse.ArgumentParser:
    """One ``--<field>`` per field of ``config_class``, in field order, in the field's group."""
    hints = typing.get_type_hints(config_class)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for field in dataclasses.fields(config_class):
        meta = field.metadata
        title = meta["group"]
        if title is not None and title not in groups:
            groups[title] = parser.add_argument_group(title)
        target = parser if title is None else groups[title]
        kwargs = {"default": field.default, "help": meta["help"]}
        kind = _value_type(hints[field.name])
        if kind is bool:
            if meta["switch"]:
                kwargs["action"] = "store_true"
            else:
                kwargs["type"] = _flag_bool
        elif kind is not str:
            kwargs["type"] = kind
        if meta["choices"] is not None:
            kwargs["choices"] = meta["choices"]
        target.add_argument(f"--{field.name}", **kwargs)
    return parser


def train_parser() -> argparse.ArgumentParser:
    """Flags of ``train.py``: the upstream flag table (names and defaults kept) plus this project's."""
    parser = argparse.ArgumentParser(prog="train.py", description=TRAIN_DESCRIPTION)
    return add_config_flags(parser, TrainConfig)


def test_parser() -> argparse.ArgumentParser:
    """Flags of ``test.py``: score every candidate, aggregate, select, report accuracy."""
    parser = argparse.ArgumentParser(prog="test.py", description=TEST_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=TEST_EPILOG)
    return add_config_flags(parser, TestConfig)


test_parser.__test__ = False  # a parser factory, not a test, in any test module that imports it


def _train_config(namespace: argparse.Namespace) -> TrainConfig:
    config = TrainConfig(**vars(namespace)).with_default_weights_path()
    config.validate()
    return config


def _test_config(namespace: argparse.Namespace) -> TestConfig:
    config = TestConfig(**vars(namespace))
    config.validate()
    return config


def parse_train_args(argv: list[str] | None = None) -> TrainConfig:
    """``train.py``'s flags as a validated ``TrainConfig``, ``weights_path`` filled in per mode."""
    return _train_config(train_parser().parse_args(argv))


def parse_test_args(argv: list[str] | None = None) -> TestConfig:
    """``test.py``'s flags as a validated ``TestConfig``."""
    return _test_config(test_parser().parse_args(argv))
