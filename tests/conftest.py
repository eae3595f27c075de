"""Shared fixtures: the bundled tiny InternVL, built once per session into a temp folder."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the thin CLIs (train.py, test.py, arguments.py) live at the root
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from dreamprm.tiny import ensure_tiny

    path = ensure_tiny(tmp_path_factory.mktemp("tiny") / "tiny-internvl")
    os.environ["DREAMPRM_TINY_DIR"] = str(path)  # `--reward_model tiny` resolves to this copy
    return path


@pytest.fixture(scope="session")
def tiny_prm(tiny_dir):
    from dreamprm.prm import ProcessRewardModel

    return ProcessRewardModel.from_pretrained(tiny_dir, device="cpu", precision="fp32").eval()
