"""experiments/run.sh: every recipe end to end on the sample data with the tiny model (CPU), and the
report's table equal to the runs' own JSONs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dreamprm.records import load_records

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "run.sh"
QUICK = ["--device", "cpu", "--precision", "fp32", "--iteration_num", "2", "--no_progress"]

# recipe -> the runs it evaluates (results/<method>/results.json), and its own flags
RECIPES = {
    "main_table": (["cold_start", "instance_table"], []),
    "main_net": (["cold_start", "instance_net"], []),
    "domain": (["cold_start", "domain_table"], []),
    "sanity": (["cold_start", "instance_table", "instance_net"], ["--meta_from_test", "0.5"]),
    "no_blo": (["no_blo"], []),
    "no_afl": (["no_afl"], []),
    "no_st": (["with_five_stage", "with_plain"], ["--num_candidates", "2", "--max_new_tokens", "8"]),
    "scaling": (["prm"], ["--draws", "3"]),
}


def _run(recipe: str, out: Path, *flags: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, EXPERIMENTS_OUT=str(out), PYTHON=sys.executable)
    return subprocess.run(["bash", str(SCRIPT), recipe, *flags], capture_output=True, text=True, env=env,
                          timeout=600, cwd=out)


@pytest.fixture(scope="module")
def coldstart(tmp_path_factory) -> Path:
    """One cold-start checkpoint the recipes reuse (--reward_model), as a user would."""
    folder = tmp_path_factory.mktemp("cs") / "coldstart"
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--retrain", "1", "--reward_model", "tiny",
                           "--train_json_file", str(ROOT / "data" / "coldstart.json"), "--weights_path", str(folder),
                           *QUICK], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_recipe_runs_end_to_end_and_its_table_equals_the_jsons(recipe, coldstart, tmp_path):
    methods, flags = RECIPES[recipe]
    done = _run(recipe, tmp_path, "--reward_model", str(coldstart), *QUICK, *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / recipe
    summaries = {}
    for method in methods:
        report = json.loads((out / "results" / method / "results.json").read_text())
        assert report["partial"] is False
        summaries[method] = report["summary"]
    rows = {r["method"]: r for r in csv.DictReader((out / "results.csv").open()) if r["kind"] == "prm"}
    assert sorted(rows) == sorted(methods)
    for method, summary in summaries.items():  # the report's numbers are the JSONs', exactly
        assert float(rows[method]["accuracy"]) == summary["accuracy"]["mean"]
        assert float(rows[method]["pass@1"]) == summary["pass@1"]
        assert float(rows[method]["oracle"]) == summary["oracle"]
        assert int(rows[method]["questions"]) == summary["n_questions"]
    table = (out / "results.md").read_text()
    assert all(f"| {method} |" in table for method in methods)
    assert (out / "results.png").is_file()
    if recipe == "scaling":
        curve = json.loads((out / "results" / "prm" / "scaling.json").read_text())
        assert curve["n"] == [1, 2, 4, 8] and curve["draws"] == 3
        assert curve["methods"]["mean"]["mean"][-1] == summaries["prm"]["accuracy"]["mean"]  # N = k: the report's
        assert (out / "results_scaling.png").is_file()
    if recipe == "sanity":
        _check_the_sanity_split(out, done.stdout)


def _check_the_sanity_split(out: Path, stdout: str) -> None:
    """The meta set is made of test questions that are never scored, and every other test
    question is scored."""
    assert "no test question is in the meta set" in stdout
    meta, _ = load_records(out / "meta_from_test.json", "meta")
    heldout, _ = load_records(out / "test_heldout.json", "test")
    test, _ = load_records(ROOT / "data" / "test.json", "test")
    meta_questions = {r["id"].rsplit("#", 1)[0] for r in meta}
    heldout_ids = {r["id"] for r in heldout}
    assert meta_questions and heldout_ids and not meta_questions & heldout_ids
    assert meta_questions | heldout_ids == {r["id"] for r in test}
    for method in ("cold_start", "instance_table", "instance_net"):
        evaluated = json.loads((out / "results" / method / "results.json").read_text())
        assert {q["id"] for q in evaluated["questions"]} == heldout_ids  # scored on the held-out questions only


@pytest.mark.slow
def test_a_recipe_without_a_cold_start_trains_its_own(tmp_path):
    done = _run("no_blo", tmp_path, "--base_model", "tiny", *QUICK)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "no_blo" / "coldstart" / "config.json").is_file()
    assert json.loads((tmp_path / "no_blo" / "no_blo" / "train_args.json").read_text())["reward_model"] == str(
        tmp_path / "no_blo" / "coldstart")


def test_an_unknown_recipe_is_one_line_and_the_usage_lists_every_recipe(tmp_path):
    done = _run("tabel", tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "usage: bash experiments/run.sh RECIPE [flags]; RECIPE is one of: " + " ".join(
            ["main_table", "main_net", "domain", "sanity", "no_blo", "no_afl", "no_st", "scaling"]),
        "error: unknown recipe 'tabel'"]
