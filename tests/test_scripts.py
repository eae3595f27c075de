"""The run scripts as a user runs them: from another folder, with no venv activated.

The environment here has no VIRTUAL_ENV, no PYTHON, and a PATH whose `python` is not the project's
venv, so a script only works if it finds `.venv/bin/python` itself. Paths the user passes are
relative to the user's working directory (a temporary folder), never to the repository.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
TINY_CPU = ["--reward_model", "tiny", "--device", "cpu", "--precision", "fp32", "--no_progress"]
BILEVEL = {"run_table.sh": "table", "run_net.sh": "net", "run_domain.sh": "domain"}


def user_env(**extra):
    """The caller's environment: no venv activated, a system PATH, none of our variables."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHON", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = "/usr/bin:/bin"
    env.update(extra)
    return env


def run_script(script, *args, cwd, env=None, timeout=300):
    return subprocess.run(["bash", str(ROOT / script), *args], cwd=cwd, env=env or user_env(),
                          capture_output=True, text=True, timeout=timeout)


def needs_venv():
    if not VENV_PYTHON.exists():
        pytest.skip("no .venv here (make setup): finding it is what this test checks")


@pytest.mark.slow
def test_run_table_from_another_folder_with_no_venv_active(tmp_path, tiny_dir):
    """README's CPU example, from a temporary folder: the venv is found, the sample data stand in
    for the unprepared paper data, and the relative --weights_path lands in the caller's folder."""
    needs_venv()
    if (DATA / "train_table.json").exists() or (DATA / "meta_mmmu_pro.json").exists():
        pytest.skip("this checkout holds prepared paper data; the sample fallback is not used")
    done = run_script("run_table.sh", *TINY_CPU, "--iteration_num", "2", "--save_every_iterations", "1",
                      "--weights_path", "./wt", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the tiny model uses the sample data/train.json" in done.stderr
    out = tmp_path / "wt"
    assert (out / "model.safetensors").is_file() and (out / "instance_weights.json").is_file()
    assert (out / "checkpoints").is_dir() and (out / "figs").is_dir()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    saved = json.loads((out / "train_args.json").read_text())
    assert saved["reweighting"] == "table" and saved["train_json_file"] == str(DATA / "train.json")
    assert not (ROOT / "wt").exists()


@pytest.mark.slow
def test_run_coldstart_reads_and_writes_relative_to_the_caller(tmp_path, tiny_dir):
    """A user's own data at a relative path, read from the caller's folder (the old scripts `cd`
    to the repository, where mydata/ does not exist)."""
    needs_venv()
    shutil.copytree(DATA / "images", tmp_path / "mydata" / "images")
    shutil.copy(DATA / "coldstart.json", tmp_path / "mydata" / "x.json")
    done = run_script("run_coldstart.sh", *TINY_CPU, "--iteration_num", "2", "--save_every_iterations", "1",
                      "--batch_size", "2", "--train_json_file", "mydata/x.json", "--weights_path", "runs/cold",
                      cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "runs" / "cold"
    assert (out / "model.safetensors").is_file() and (out / "figs").is_dir()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    saved = json.loads((out / "train_args.json").read_text())
    assert saved["retrain"] and saved["train_json_file"] == "mydata/x.json"


@pytest.fixture
def fake_python(tmp_path):
    """A $PYTHON that records its arguments and PYTHONPATH instead of training."""
    log = tmp_path / "argv.json"
    fake = tmp_path / "fake-python"
    fake.write_text('#!/bin/sh\n/usr/bin/env python3 -c \'import json, os, sys; '
                    f'json.dump({{"argv": sys.argv[1:], "pythonpath": os.environ.get("PYTHONPATH", "")}}, '
                    f'open("{log}", "w"))\' "$@"\n')
    fake.chmod(0o755)
    return fake, log


@pytest.mark.parametrize("script", ["run_coldstart.sh", *BILEVEL])
def test_scripts_call_the_repository_with_absolute_defaults(tmp_path, fake_python, script):
    """$PYTHON wins; train.py, the model and the output folder are the repository's, by absolute
    path; the caller's arguments come last (so they override) and are passed unchanged."""
    fake, log = fake_python
    done = run_script(script, "--reward_model", "tiny", "--weights_path", "rel/out", cwd=tmp_path,
                      env=user_env(PYTHON=str(fake)))
    assert done.returncode == 0, done.stderr
    seen = json.loads(log.read_text())
    argv = seen["argv"]
    assert argv[0] == str(ROOT / "train.py")
    assert argv[-4:] == ["--reward_model", "tiny", "--weights_path", "rel/out"]
    name = script[len("run_"):-len(".sh")]
    assert argv[argv.index("--weights_path") + 1] == str(ROOT / "weights" / name)
    for flag in ("--train_json_file", "--meta_json_file"):
        if flag in argv:
            assert Path(argv[argv.index(flag) + 1]).parent == DATA
    assert seen["pythonpath"].split(":")[0] == str(ROOT / "src")


@pytest.mark.parametrize("script,own", sorted(BILEVEL.items()))
@pytest.mark.parametrize("form", ["--reweighting {}", "--reweighting={}", "--rewe {}"])
def test_a_bilevel_script_refuses_another_reweighting(tmp_path, script, own, form):
    """`bash run_table.sh --reweighting domain` once trained a Domain Table into weights/table."""
    for other in sorted(set(BILEVEL.values()) - {own}):
        done = run_script(script, *TINY_CPU, "--weights_path", "out", *form.format(other).split(" "),
                          cwd=tmp_path, timeout=30)
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and f"use run_{other}.sh" in done.stderr, done.stderr
        assert not (tmp_path / "out").exists()
    same = run_script(script, "--reweighting", own, "--reward_model", "tiny", cwd=tmp_path, timeout=60,
                      env=user_env(PYTHON="/bin/true"))
    assert same.returncode == 0, same.stderr


def test_missing_paper_data_is_one_line_for_a_real_model(tmp_path):
    """Without the prepared paper data, a real model is not trained on the sample files."""
    if (DATA / "train_table.json").exists():
        pytest.skip("this checkout holds data/train_table.json")
    done = run_script("run_table.sh", "--weights_path", "out", cwd=tmp_path, timeout=30,
                      env=user_env(PYTHON="/bin/false"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "data/train_table.json not found" in done.stderr, done.stderr
