"""Nothing a user can type produces a Python traceback: the CLIs over a table of bad flags and
inputs, each answered by one ``error:`` line and a non-zero status (a traceback is a bug)."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from arguments import parse_test_args, parse_train_args, test_parser, train_parser
from dreamprm.config import FlagError, TestConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
TRAIN = ["--reward_model", "tiny", "--device", "cpu", "--precision", "fp32", "--no_progress",
         "--iteration_num", "1"]

# Flag values that parse but make no sense: refused before torch is even imported.
BAD_TRAIN_FLAGS = [
    (["--batch_size", "0"], "--batch_size must be at least 1 (got 0)"),
    (["--batch_size", "-1"], "--batch_size must be at least 1 (got -1)"),
    (["--meta_batch_size", "0"], "--meta_batch_size must be at least 1"),
    (["--unroll_steps", "0"], "--unroll_steps must be at least 1"),
    (["--gradiant_accumulation", "0"], "--gradiant_accumulation must be at least 1"),
    (["--lr", "-1"], "--lr must be 0 or more (got -1.0)"),
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--meta_lr", "inf"], "--meta_lr must be a finite number"),
    (["--momentum", "1.5"], "--momentum (Adam beta1) must be in [0, 1) (got 1.5)"),
    (["--weight_decay", "-1"], "--weight_decay must be 0 or more"),
    (["--num_workers", "-1"], "--num_workers must be 0 or more"),
    (["--max_patch_num", "0"], "--max_patch_num must be at least 1"),
    (["--max_bad_steps", "0"], "--max_bad_steps must be at least 1"),
    (["--hidden_dim", "0"], "--hidden_dim must be at least 1"),
    (["--warmup_ratio", "1.5"], "--warmup_ratio must be in [0, 1]"),
    (["--warmup_ratio", "-0.1"], "--warmup_ratio must be in [0, 1]"),
    (["--darts_alpha", "0"], "--darts_alpha must be positive"),
    (["--length_bucket", "-64"], "--length_bucket must be 0 or more (got -64)"),
    (["--cuda_graphs", "--compile"], "--cuda_graphs and --compile contradict each other"),
    (["--cuda_graphs", "--gradient_checkpointing"], "--cuda_graphs with --gradient_checkpointing is not supported"),
    (["--cuda_graphs", "--strategy", "distributed"], "--cuda_graphs with --strategy distributed is not supported"),
    (["--gradiant_clipping", "inf"], "--gradiant_clipping must be a finite number"),
    (["--initialization", "inf"], "--initialization must be a finite number"),
    (["--initialization", "nan"], "--initialization must be a finite number"),
    (["--save_every_iterations", "0"], "--save_every_iterations must be at least 1"),
    (["--max_length", "0"], "--max_length must be at least 1"),
    (["--resume", "--overwrite"], "--resume and --overwrite contradict each other"),
    (["--reweighting", "domain", "--activation_function", "Clip"], "--activation_function does not apply"),
    (["--save_best"], "--save_best needs --eval_json_file"),
    (["--eval_every", "100"], "--eval_every needs --eval_json_file"),
    (["--eval_json_file", "t.json", "--eval_every", "-1"], "--eval_every must be 0 or more (got -1)"),
    (["--eval_json_file", "t.json", "--eval_batch_size", "0"], "--eval_batch_size must be at least 1"),
    (["--eval_json_file", "t.json", "--eval_max_patch_num", "0"], "--eval_max_patch_num must be at least 1"),
]

BAD_TEST_FLAGS = [
    (["--batch_size", "0"], "--batch_size must be at least 1"),
    (["--max_patch_num", "-2"], "--max_patch_num must be at least 1"),
    (["--prefetch", "-1"], "--prefetch must be 0 or more"),
    (["--num_workers", "-1"], "--num_workers must be 0 or more"),
    (["--prefetch", "0", "--num_workers", "2"], "--num_workers 2 prepares images ahead, which --prefetch 0 turns off"),
    (["--max_length", "0"], "--max_length must be at least 1"),
]


@pytest.mark.parametrize("parser, config_class", [(train_parser, TrainConfig), (test_parser, TestConfig)],
                         ids=["train", "test"])
def test_the_flags_are_the_config_fields_one_for_one(parser, config_class):
    """Each flag is the field of the same name, with its default, choices and help; nothing else."""
    actions = [a for a in parser()._actions if a.dest != "help"]
    fields = dataclasses.fields(config_class)
    assert [a.option_strings for a in actions] == [[f"--{f.name}"] for f in fields]
    assert [a.dest for a in actions] == [f.name for f in fields]
    assert [a.default for a in actions] == [f.default for f in fields]
    assert [tuple(a.choices) if a.choices else None for a in actions] == [f.metadata["choices"] for f in fields]
    assert [a.help for a in actions] == [f.metadata["help"] for f in fields]
    assert config_class(**vars(parser().parse_args([]))) == config_class()


def test_train_flags_keep_their_upstream_names_groups_and_forms():
    parser = train_parser()
    assert parser.prog == "train.py"
    titles = [g.title for g in parser._action_groups[2:]]
    assert titles == ["data and model paths", "bi-level optimization", "optimizer (both levels)",
                      "lower level (PRM)", "upper level (instance weights)", "method", "system"]
    config = parse_train_args(["--gradiant_accumulation", "2", "--gradiant_clipping", "0.5", "--retrain", "1",
                               "--resume", "--lr", "1e-4"])
    assert (config.gradiant_accumulation, config.gradiant_clipping, config.retrain, config.resume) == (2, 0.5, True,
                                                                                                      True)
    assert config.lr == 1e-4 and parse_train_args(["--retrain", "false"]).retrain is False
    assert test_parser().prog == "test.py" and "exit status" in test_parser().epilog


@pytest.mark.parametrize("flags, folder", [([], "table"), (["--retrain", "1"], "coldstart"),
                                           (["--baseline"], "baseline"), (["--reweighting", "net"], "net"),
                                           (["--reweighting", "domain"], "domain")])
def test_each_mode_has_its_default_weights_path(flags, folder):
    assert parse_train_args(flags).weights_path == f"./weights/{folder}"
    assert parse_train_args([*flags, "--weights_path", "x"]).weights_path == "x"


def test_configs_are_validated_in_one_place():
    """The parsers and library code share TrainConfig.validate / TestConfig.validate."""
    with pytest.raises(FlagError, match="--weights_path is not set"):
        TrainConfig().validate()  # what the trainer calls: an output folder is required
    TrainConfig().with_default_weights_path().validate()
    with pytest.raises(FlagError, match="--hidden_dim must be at least 1"):
        dataclasses.replace(TrainConfig(weights_path="w"), hidden_dim=0).validate()
    with pytest.raises(FlagError, match="--batch_size must be at least 1"):
        parse_train_args(["--batch_size", "0"])
    with pytest.raises(FlagError, match="--prefetch must be 0 or more"):
        parse_test_args(["--prefetch", "-1"])
    assert parse_test_args(["--batch_size", "3"]) == TestConfig(batch_size=3)
    # a config built in code gets the choices argparse checks for flags
    with pytest.raises(FlagError, match="--reweighting must be one of table, net, domain \\(got 'tabel'\\)"):
        TrainConfig(weights_path="w", reweighting="tabel").validate()
    with pytest.raises(FlagError, match="--score_dtype must be one of model, fp32"):
        TestConfig(score_dtype="bf16").validate()


def _cli(script: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *argv], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def _one_error_line(done: subprocess.CompletedProcess, fragment: str, status: int = 2) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == status, (done.returncode, done.stderr)
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and fragment in errors[0], lines


@pytest.mark.parametrize("flags, fragment", BAD_TRAIN_FLAGS, ids=[" ".join(f) for f, _ in BAD_TRAIN_FLAGS])
def test_train_bad_flags(tmp_path, flags, fragment):
    done = _cli("train.py", *TRAIN, "--weights_path", str(tmp_path / "w"), *flags, cwd=tmp_path)
    _one_error_line(done, fragment)
    assert not (tmp_path / "w").exists()  # refused before anything was created


@pytest.mark.parametrize("flags, fragment", BAD_TEST_FLAGS, ids=[" ".join(f) for f, _ in BAD_TEST_FLAGS])
def test_test_bad_flags(tmp_path, flags, fragment):
    done = _cli("test.py", "--reward_model", "tiny", "--device", "cpu", *flags, cwd=tmp_path)
    _one_error_line(done, fragment)


def _bad_inputs(tmp: Path) -> list[tuple[str, list[str], str]]:
    """(script, argv, fragment of the one error line) for bad paths, files and models."""
    a_file = tmp / "a_file"
    a_file.write_text("x")
    not_json = tmp / "not.json"
    not_json.write_text("{")
    latin1 = tmp / "latin1.json"
    latin1.write_bytes(b'[{"id": "caf\xe9"}]')
    data = ["--train_json_file", str(DATA / "train.json"), "--meta_json_file", str(DATA / "meta.json")]
    test_data = ["--test_json_file", str(DATA / "test.json"), "--device", "cpu", "--precision", "fp32"]
    return [
        ("train.py", [*TRAIN, *data, "--weights_path", str(a_file)], "is a file, not a folder"),
        ("train.py", [*TRAIN, *data, "--weights_path", str(tmp / "w1"), "--reward_model", str(tmp / "nope")],
         "model folder not found"),
        ("train.py", [*TRAIN, "--weights_path", str(tmp / "w2"), "--train_json_file", str(tmp / "missing.json")],
         "missing.json"),
        ("train.py", [*TRAIN, "--weights_path", str(tmp / "w3"), "--train_json_file", str(not_json)],
         "not.json:1: <json>: Expecting"),
        ("train.py", [*TRAIN, "--weights_path", str(tmp / "w4"), "--train_json_file", str(latin1)], "latin1.json"),
        ("train.py", [*TRAIN, *data, "--weights_path", str(tmp / "w5"), "--logger", "wandb"], "pip install wandb"),
        ("test.py", [*test_data, "--reward_model", str(tmp / "nope"), "--output_file", str(tmp / "o.json")],
         "not found"),
        ("test.py", [*test_data, "--reward_model", "tiny", "--output_file", str(tmp)], "--output_file"),
        ("test.py", [*test_data, "--reward_model", "tiny", "--output_file", str(a_file / "o.json")], "--output_file"),
        ("test.py", ["--test_json_file", str(not_json), "--reward_model", "tiny", "--device", "cpu",
                     "--output_file", str(tmp / "o2.json")], "not.json:1: <json>: Expecting"),
    ]


@pytest.mark.slow
def test_bad_paths_files_and_models_are_one_line(tmp_path):
    import importlib.util

    for script, argv, fragment in _bad_inputs(tmp_path):
        if "wandb" in fragment and importlib.util.find_spec("wandb") is not None:
            continue
        done = _cli(script, *argv, cwd=tmp_path)
        assert "Traceback" not in done.stderr, (script, argv, done.stderr)
        assert done.returncode == 2, (script, argv, done.returncode, done.stderr)
        assert any(line.startswith("error: ") and fragment in line for line in done.stderr.splitlines()), \
            (script, argv, done.stderr)


@pytest.mark.slow
def test_a_resume_into_another_runs_folder_is_one_line(tmp_path):
    """The newcomer's scenario: --resume into a folder of another --reweighting (was a size-mismatch traceback)."""
    data = ["--train_json_file", str(DATA / "train.json"), "--meta_json_file", str(DATA / "meta.json"),
            "--weights_path", str(tmp_path / "w")]
    assert _cli("train.py", *TRAIN, *data, cwd=tmp_path).returncode == 0
    done = _cli("train.py", *TRAIN, *data, "--reweighting", "domain", "--resume", cwd=tmp_path)
    _one_error_line(done, "belongs to a run of the Instance Table")
    assert json.loads((tmp_path / "w" / "train_args.json").read_text())["reweighting"] == "table"


@pytest.mark.slow
def test_bad_data_is_reported_before_the_model_loads(tmp_path):
    """A bad record and a missing model: the data error comes first (no model time spent)."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": 1, "image": "", "conversations": []}]))
    done = _cli("train.py", *TRAIN, "--weights_path", str(tmp_path / "w"), "--train_json_file", str(bad),
                "--reward_model", str(tmp_path / "no_model"), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: {bad}: 1 bad record"), done.stderr
    assert "model" not in done.stderr


@pytest.mark.slow
def test_an_over_long_record_is_one_error_before_training(tmp_path):
    records = json.loads((DATA / "train.json").read_text())
    for r in records:
        r["image"] = str(DATA / r["image"])
    records[3]["conversations"][2]["value"] = "word " * 200_000  # a 1 MB step
    long = tmp_path / "long.json"
    long.write_text(json.dumps(records))
    data = ["--train_json_file", str(long), "--meta_json_file", str(DATA / "meta.json")]
    done = _cli("train.py", *TRAIN, *data, "--weights_path", str(tmp_path / "w"), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "record 3 (id 'train_003'): " in done.stderr and "longer than --max_length 32,768" in done.stderr
    assert not (tmp_path / "w" / "metrics.jsonl").exists()
    skipped = _cli("train.py", *TRAIN, *data, "--weights_path", str(tmp_path / "w"), "--skip_bad_records",
                   "--max_length", "4096", cwd=tmp_path)
    assert skipped.returncode == 0, skipped.stderr
    assert "skipped 1 train record longer than --max_length 4096; 47 left" in skipped.stderr


@pytest.mark.slow
def test_each_mode_writes_to_its_own_folder_with_its_figures(tmp_path):
    data = ["--train_json_file", str(DATA / "train.json"), "--meta_json_file", str(DATA / "meta.json")]
    assert _cli("train.py", *TRAIN, *data, "--retrain", "1", cwd=tmp_path).returncode == 0
    assert _cli("train.py", *TRAIN, *data, "--reweighting", "domain", cwd=tmp_path).returncode == 0
    for mode in ("coldstart", "domain"):
        run = tmp_path / "weights" / mode
        assert json.loads((run / "train_args.json").read_text())["weights_path"] == f"./weights/{mode}"
        assert (run / "figs" / "losses.png").is_file()
    assert (tmp_path / "weights" / "domain" / "figs" / "weights.png").is_file()
    assert not (tmp_path / "figs").exists()


@pytest.mark.slow
def test_an_unwritable_figure_folder_only_warns(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    data = ["--train_json_file", str(DATA / "train.json"), "--meta_json_file", str(DATA / "meta.json")]
    done = _cli("train.py", *TRAIN, *data, "--weights_path", str(tmp_path / "w"), "--figs_dir", str(a_file / "figs"),
                cwd=tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("warning: figures not written: ")
    assert (tmp_path / "w" / "model.safetensors").is_file()
