"""Evaluation during training (--eval_json_file, --eval_every, --save_best) on the tiny model, CPU:
the eval_* rows are test.py's numbers for the model of that iteration, the evaluation leaves
training bit for bit as it was, --save_best keeps the best model, and resume keeps it all."""

from __future__ import annotations

import dataclasses
import json
import random
import runpy
import shutil
import signal

import numpy as np
import pytest
import torch
from runs import DATA, ROOT, read_metrics, run_trainer, train_config
from safetensors.torch import load_file

import train
from dreamprm.checkpoint import rng_state
from dreamprm.figures import loss_figure
from dreamprm.records import DataError, load_records
from dreamprm.results import summarise
from dreamprm.runfolder import RunFolder
from dreamprm.scoring import evaluate, load_scorer
from dreamprm.trainer import Trainer, TrainingInterrupted, eval_metrics, write_figures

# A skipped first update makes Betty step the scheduler before any optimizer step: expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning")

TEST = str(DATA / "test.json")
EVAL_KEYS = ["eval_accuracy_mean", "eval_accuracy_log_mean", "eval_accuracy_max", "eval_accuracy_min",
             "eval_accuracy_log_odds", "eval_pass@1", "eval_first_candidate", "eval_oracle",
             "eval_self_consistency", "eval_questions", "eval_seconds"]
# lr 2e-3 moves the tiny PRM enough that the evaluations differ: best at 4, a tie at 6, lower at 8
BEST_RUN = ("--iteration_num", "8", "--save_every_iterations", "2", "--keep_checkpoints", "10", "--lr", "2e-3",
            "--eval_json_file", TEST, "--eval_every", "2", "--save_best")


def _eval_part(row: dict) -> dict:
    return {k: v for k, v in row.items() if k.startswith("eval_") and k != "eval_seconds"}


def _training_part(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("eval_") and k != "seconds"}


def _same_tensors(a, b) -> bool:
    wa, wb = load_file(str(a)), load_file(str(b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _same_rng(a: dict, b: dict) -> bool:
    """Equal python, numpy and torch RNG states (``checkpoint.rng_state``)."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k]
                                        for k in a)


@pytest.fixture(scope="module")
def best_run(tmp_path_factory, tiny_dir):
    """One uninterrupted --save_best run, shared by the --save_best and resume tests."""
    w = tmp_path_factory.mktemp("best") / "A"
    trainer = run_trainer(w, *BEST_RUN)
    return w, trainer


def test_eval_rows_are_test_py_numbers_for_the_model_of_that_iteration(tmp_path, tiny_dir):
    w = tmp_path / "w"
    run_trainer(w, "--iteration_num", "4", "--save_every_iterations", "2", "--keep_checkpoints", "5",
                "--eval_json_file", TEST, "--eval_every", "2")
    rows = read_metrics(w)
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    assert [[k for k in r if k.startswith("eval_")] for r in rows] == [[], EVAL_KEYS, [], EVAL_KEYS]
    assert list(rows[1])[-len(EVAL_KEYS):] == EVAL_KEYS  # after the training values, in this order
    records, _ = load_records(TEST, "test")
    for it in (2, 4):  # scoring.evaluate + results.summarise on the checkpoint of that iteration
        scorer = load_scorer(w / "checkpoints" / f"iter-{it:08d}" / "prm", device="cpu", precision="fp32")
        summary = summarise(*evaluate(scorer, records, TEST, progress=False))
        assert _eval_part(rows[it - 1]) == eval_metrics(summary), it
        assert rows[it - 1]["eval_seconds"] > 0
    # and test.py's own JSON on the final export
    out = tmp_path / "bestofn.json"
    test_main = runpy.run_path(str(ROOT / "test.py"))["main"]
    assert test_main(["--reward_model", str(w), "--test_json_file", TEST, "--device", "cpu", "--precision", "fp32",
                      "--output_file", str(out)]) == 0
    summary = json.loads(out.read_text())["summary"]
    last = rows[-1]
    assert {a: last[f"eval_accuracy_{a}"] for a in summary["accuracy"]} == summary["accuracy"]
    for name in ("pass@1", "first_candidate", "oracle", "self_consistency"):
        assert last[f"eval_{name}"] == summary[name], name
    assert last["eval_questions"] == summary["n_questions"] == 8


def test_without_eval_every_only_the_last_iteration_is_evaluated_and_logged(tmp_path, tiny_dir, capsys):
    trainer = Trainer(train_config(tmp_path / "w", "--iteration_num", "3", "--save_every_iterations", "3",
                                   "--eval_json_file", TEST))
    logged = []
    trainer.config = dataclasses.replace(trainer.config, logger="tensorboard")  # as if chosen; recorded here
    trainer.engine.logger.log = lambda scalars, tag=None, step=None: logged.append((step, scalars))
    trainer.run()
    rows = read_metrics(tmp_path / "w")
    assert [bool(_eval_part(r)) for r in rows] == [False, False, True]
    assert [step for step, _ in logged] == [1, 2, 3]
    assert [k for k in logged[-1][1] if k.startswith("eval_")] == EVAL_KEYS
    assert logged[-1][1]["eval_accuracy_mean"] == rows[-1]["eval_accuracy_mean"]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("eval at")]
    assert len(lines) == 1 and lines[0].startswith("eval at 3 (8 questions, ") and "pass@1" in lines[0]
    assert not (tmp_path / "w" / "best").exists()  # no --save_best


def test_evaluation_leaves_training_bit_identical(tmp_path, tiny_dir):
    """Evaluating after every iteration changes nothing in training: the PRM's weights, the
    instance weights, the training values of every row and the checkpointed state."""
    common = ("--iteration_num", "4", "--save_every_iterations", "4", "--lr", "2e-3")
    plain, evaluated = tmp_path / "plain", tmp_path / "eval"
    run_trainer(plain, *common)
    run_trainer(evaluated, *common, "--eval_json_file", TEST, "--eval_every", "1")
    assert _same_tensors(plain / "model.safetensors", evaluated / "model.safetensors")
    assert (plain / "instance_weights.json").read_text() == (evaluated / "instance_weights.json").read_text()
    rows_plain, rows_eval = read_metrics(plain), read_metrics(evaluated)
    assert all(_eval_part(r) for r in rows_eval) and not any(_eval_part(r) for r in rows_plain)
    assert [_training_part(r) for r in rows_plain] == [_training_part(r) for r in rows_eval]
    sa, sb = (torch.load(w / "checkpoints" / "iter-00000004" / "trainer_state.pt", weights_only=True)
              for w in (plain, evaluated))
    assert _same_rng(sa["rng"], sb["rng"])
    assert sa["train_stream"] == sb["train_stream"] and sa["meta_stream"] == sb["meta_stream"]


def test_an_evaluation_restores_modes_and_rng_and_records_no_graph(tmp_path, tiny_dir):
    trainer = Trainer(train_config(tmp_path / "w", "--iteration_num", "1", "--eval_json_file", TEST))
    trainer.prm.train()
    trainer.prm.model.model.vision_tower.eval()  # a mixed state comes back as it was
    modes = [m.training for m in trainer.prm.modules()]
    params = {k: v.detach().clone() for k, v in trainer.prm.state_dict().items()}
    random.random(), np.random.rand(), torch.rand(1)  # noqa: B018 - any state will do
    before = rng_state()
    row = trainer.evaluate()
    after = rng_state()
    assert [k for k in row] == EVAL_KEYS
    assert [m.training for m in trainer.prm.modules()] == modes
    assert all(p.grad is None for p in trainer.prm.parameters())
    assert all(torch.equal(params[k], v) for k, v in trainer.prm.state_dict().items())
    assert _same_rng(before, after)
    trainer.folder.close()


def test_save_best_keeps_the_first_of_the_best_evaluations(best_run, tiny_dir):
    w, trainer = best_run
    rows = [r for r in read_metrics(w) if _eval_part(r)]
    assert [r["iteration"] for r in rows] == [2, 4, 6, 8]
    accuracies = [r["eval_accuracy_mean"] for r in rows]
    assert len(set(accuracies)) > 1  # the evaluations differ, so the choice is a real one
    best = rows[accuracies.index(max(accuracies))]  # the first of the highest
    info = json.loads((w / "best" / "best.json").read_text())
    assert info["iteration"] == best["iteration"]
    assert info["accuracy"] == {k[len("eval_accuracy_"):]: v for k, v in best.items() if k.startswith("eval_accuracy_")}
    assert info["baselines"]["oracle"] == best["eval_oracle"] and info["questions"] == 8
    ckpt = w / "checkpoints" / f"iter-{best['iteration']:08d}"
    assert _same_tensors(w / "best" / "model.safetensors", ckpt / "prm" / "model.safetensors")
    assert {"config.json", "tokenizer.json", "instance_weights.json"} <= {p.name for p in (w / "best").iterdir()}
    state = torch.load(w / "checkpoints" / "iter-00000008" / "trainer_state.pt", weights_only=True)
    assert state["best_eval"]["iteration"] == best["iteration"] and state["best_eval"]["accuracy"] == max(accuracies)
    assert not [p for p in w.iterdir() if p.name.startswith(".tmp")]  # no temporary left behind
    # the figure gains its accuracy panel
    fig = loss_figure(w / "metrics.jsonl")
    assert [ax.get_title().split(":")[0] for ax in fig.axes] == ["Lower level", "Upper level",
                                                                 "Evaluation during training"]
    assert f"best mean: iteration {best['iteration']}" in [t.get_text() for t in fig.axes[2].get_legend().get_texts()]
    figs = write_figures(trainer)
    assert all(p.stat().st_size > 10_000 for p in figs)


@pytest.mark.parametrize("how", ["sigterm", "hard kill"])
def test_resume_with_evaluation_equals_the_uninterrupted_run(best_run, tmp_path, how):
    """SIGTERM at 5 (checkpoint at 5), or a kill after 5 that left only iter-2 and a best/ of
    iteration 4: the resumed run ends with the same rows, weights and best/ as run A."""
    a, b = best_run[0], tmp_path / "B"
    if how == "sigterm":
        with pytest.raises(TrainingInterrupted) as err:
            run_trainer(b, *BEST_RUN, stop_at=5)
        assert err.value.signum == signal.SIGTERM
    else:
        shutil.copytree(a, b)
        for ckpt in (b / "checkpoints").iterdir():
            if ckpt.name != "iter-00000002":
                shutil.rmtree(ckpt)
        assert json.loads((b / "best" / "best.json").read_text())["iteration"] == 4  # after the checkpoint
    run_trainer(b, *BEST_RUN, "--resume")
    timeless = [[{k: v for k, v in r.items() if k not in ("seconds", "eval_seconds")} for r in read_metrics(w)]
                for w in (a, b)]
    assert timeless[0] == timeless[1]
    assert _same_tensors(a / "model.safetensors", b / "model.safetensors")
    assert (a / "best" / "best.json").read_text() == (b / "best" / "best.json").read_text()
    assert _same_tensors(a / "best" / "model.safetensors", b / "best" / "model.safetensors")
    sa, sb = (torch.load(w / "checkpoints" / "iter-00000008" / "trainer_state.pt", weights_only=True)
              for w in (a, b))
    assert sa["best_eval"] == sb["best_eval"]


def test_overwrite_removes_the_previous_best(best_run, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(best_run[0], w)
    assert "a best model (best/)" in RunFolder(w).previous_run()
    run_trainer(w, "--iteration_num", "1", "--overwrite")
    assert not (w / "best").exists() and (w / "model.safetensors").exists()


def test_a_bad_eval_file_is_one_line_before_the_model_loads(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    records = json.loads((DATA / "test.json").read_text())
    for r in records:
        r["image_path"] = str(DATA / r["image_path"])
    records[2]["true_false"] = records[2]["true_false"][:-1]  # one label short
    bad.write_text(json.dumps(records))
    w = tmp_path / "w"
    with pytest.raises(DataError, match="bad.json: 1 bad record"):
        Trainer(train_config(w, "--eval_json_file", str(bad), "--reward_model", str(tmp_path / "no_model")))
    rc = train.main(["--reward_model", str(tmp_path / "no_model"), "--device", "cpu", "--precision", "fp32",
                     "--weights_path", str(w), "--train_json_file", str(DATA / "train.json"),
                     "--meta_json_file", str(DATA / "meta.json"), "--eval_json_file", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.startswith(f"error: {bad}: 1 bad record") and "no_model" not in err  # the model never loaded
