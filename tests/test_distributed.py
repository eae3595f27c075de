"""Data parallelism on the CPU: torchrun with two processes on the gloo backend, the tiny model.

The training runs go through tests/distributed_worker.py (one Trainer per rank, in-process, its
end state saved per rank) or train.py itself; best-of-N through test.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from runs import DATA, ROOT, read_metrics, train_argv

from dreamprm import distributed
from dreamprm.batching import BatchStream
from dreamprm.config import FlagError, TestConfig, TrainConfig
from dreamprm.problems import merge_stats
from dreamprm.scoring import merge_shards, shard

WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
MODES = {"table": (), "net": ("--reweighting", "net"), "domain": ("--reweighting", "domain"),
         "coldstart": ("--retrain", "1")}


def torchrun(nproc: int, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def run_worker(tmp: Path, name: str, nproc: int, *flags: str, worker_flags=()) -> list[dict]:
    """A data-parallel (or, with nproc 0, a plain single-process) tiny run; each rank's end state."""
    state = tmp / f"{name}.state"
    state.mkdir()
    args = [str(WORKER), str(state), str(tmp / name), *worker_flags, "--", *flags]
    if nproc:
        done = torchrun(nproc, *args, "--strategy", "distributed")
    else:
        done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(p) for p in sorted(state.glob("rank*.pt"))]


def max_difference(a: dict, b: dict) -> float:
    worst = 0.0
    for part in ("prm", "weights"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            worst = max(worst, (a[part][k].float() - b[part][k].float()).abs().max().item())
    return worst


def identical(a: dict, b: dict) -> bool:
    return all(torch.equal(a[part][k], b[part][k]) for part in ("prm", "weights") for k in a[part])


# -- the building blocks (fast) -------------------------------------------------------------------
def _index_batches(batch_size: int, world_size: int, n: int, file: str = "train.json"):
    """``n`` steps of the real BatchStream over a sample file: per step, the ranks' index batches
    joined in rank order."""
    from dreamprm.batching import ConversationDataset, ExampleBuilder
    from dreamprm.prm import ProcessRewardModel
    from dreamprm.records import load_records

    prm = ProcessRewardModel.from_pretrained("tiny", device="cpu", precision="fp32")
    kind = "train" if file == "train.json" else "meta"
    records, _ = load_records(DATA / file, kind)
    data = ConversationDataset(records, DATA / file, ExampleBuilder(prm.processor, 1))
    streams = [BatchStream(data, batch_size, seed=5, pad_id=0, world_size=world_size, rank=r)
               for r in range(world_size)]
    steps = [[i for s in streams for i in s.next().index.tolist()] for _ in range(n)]
    assert all(s.state_dict() == streams[0].state_dict() for s in streams)  # one position on every rank
    return steps


def test_ranks_batches_joined_are_one_process_batches_of_the_whole_size():
    """Two ranks of batch 1 take, step by step, the batches one process takes with batch 2
    (30 steps: past the end of an epoch of 48 records)."""
    assert _index_batches(1, 2, 30) == _index_batches(2, 1, 30)


def test_an_epochs_short_last_global_batch_is_dropped_only_when_data_parallel():
    # 16 meta records: global batches of 6 leave 4, which cannot give each of 2 ranks 3
    one = _index_batches(6, 1, 4, "meta.json")
    two = _index_batches(3, 2, 3, "meta.json")
    assert [len(b) for b in one] == [6, 6, 4, 6]
    assert two == [one[0], one[1], one[3]]  # the next epoch starts where one process's does


def test_stream_refuses_fewer_items_than_ranks():
    with pytest.raises(ValueError, match="3 items cannot give each of 4 ranks a batch of 1"):
        BatchStream(list(range(3)), 1, seed=0, pad_id=0, world_size=4, rank=0)


def test_merge_stats_joins_instances_and_averages_losses():
    a = {"lower_loss": 1.0, "weight_min": 0.5, "weight_max": 1.0, "weight_mean": 0.75, "lr": 1e-3,
         "instance_index": [4], "instance_weight": [0.5]}
    b = {"lower_loss": 3.0, "weight_min": 0.25, "weight_max": 2.0, "weight_mean": 1.25, "lr": 1e-3,
         "instance_index": [9], "instance_weight": [2.0]}
    merged = merge_stats([a, b])
    assert merged == {"lower_loss": 2.0, "weight_min": 0.25, "weight_max": 2.0, "weight_mean": 1.0, "lr": 1e-3,
                      "instance_index": [4, 9], "instance_weight": [0.5, 2.0]}
    assert merge_stats([{}, {}]) == {}  # an iteration without an upper step
    assert merge_stats([a]) == a


def test_shards_cover_every_record_once_and_merge_in_order():
    worlds = [distributed.World(size=3, rank=r, backend="gloo") for r in range(3)]
    parts = [shard(8, w) for w in worlds]
    assert parts == [[0, 3, 6], [1, 4, 7], [2, 5]]
    results = [(p, [{"id": i} for i in p], [[f"c{i}"] for i in p]) for p in parts]
    questions, candidates = merge_shards(results)
    assert [q["id"] for q in questions] == list(range(8)) and candidates == [[f"c{i}"] for i in range(8)]
    assert shard(5, distributed.World()) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("strategy,word", [("zero", "ZeRO shards the optimizer state"),
                                           ("fsdp", "FSDP shards the PRM's parameters")])
def test_zero_and_fsdp_are_refused_in_one_line(tmp_path, strategy, word):
    with pytest.raises(FlagError) as info:
        TrainConfig(weights_path=str(tmp_path), strategy=strategy).validate()
    message = str(info.value)
    assert message.startswith(f"--strategy {strategy} is not supported: {word}") and "\n" not in message
    assert message.endswith("use --strategy distributed")


def test_backend_needs_the_distributed_strategy(tmp_path):
    with pytest.raises(FlagError, match="--backend gloo applies to --strategy distributed only"):
        TrainConfig(weights_path=str(tmp_path), backend="gloo").validate()


def test_devices_flag_is_checked():
    with pytest.raises(FlagError, match="--device and --devices contradict"):
        TestConfig(device="cpu", devices="cpu,cpu").validate()
    with pytest.raises(FlagError, match="comma-separated list"):
        TestConfig(devices="cuda:0,,cuda:1").validate()


def test_distributed_without_torchrun_says_how_to_launch(tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    done = subprocess.run([sys.executable, "train.py", *train_argv(tmp_path / "w"), "--strategy", "distributed"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --strategy distributed runs under torchrun, one process per GPU: torchrun --standalone "
        "--nproc_per_node N train.py --strategy distributed ..."]


def test_device_for_follows_betty_rule_on_cuda_and_the_cpu_otherwise():
    assert distributed.device_for("cpu", 3) == "cpu"
    assert distributed.device_for("cuda:1", 0) == "cuda:1"  # named: kept
    if torch.cuda.device_count():
        assert distributed.device_for("cuda", 5) == f"cuda:{5 % torch.cuda.device_count()}"


# -- training runs (slow) -------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_two_ranks_stay_in_sync_and_equal_one_process_with_the_whole_batch(tmp_path, mode):
    """Every rank ends with the same PRM and weights, bit for bit; and two ranks of batch 1 train
    as one process with batch 2 (the same examples per update), up to the rounding of padding."""
    flags = ("--iteration_num", "3", *MODES[mode])
    r0, r1 = run_worker(tmp_path, "dp", 2, *flags)
    assert r0["world_size"] == 2 and identical(r0, r1)
    (single,) = run_worker(tmp_path, "single", 0, *flags, "--batch_size", "2", "--meta_batch_size", "2")
    assert max_difference(r0, single) < 1e-6


@pytest.mark.slow
def test_one_process_torchrun_trains_exactly_as_a_plain_run(tmp_path):
    flags = ("--iteration_num", "3", "--reweighting", "net")
    (dp,) = run_worker(tmp_path, "dp", 1, *flags)
    (plain,) = run_worker(tmp_path, "plain", 0, *flags)
    assert dp["world_size"] == 1 and identical(dp, plain)
    assert read_metrics(tmp_path / "dp")[-1]["lower_loss"] == read_metrics(tmp_path / "plain")[-1]["lower_loss"]


@pytest.mark.slow
def test_only_rank_zero_writes_and_the_log_covers_every_rank(tmp_path):
    r0, r1 = run_worker(tmp_path, "dp", 2, "--iteration_num", "4", "--save_every_iterations", "2",
                        "--reweighting", "net")
    assert r1["writes"] == []
    assert r0["writes"].count("save_checkpoint") == 2 and "RunFolder" in r0["writes"]
    rows = read_metrics(tmp_path / "dp")
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    # the Instance Net's log holds the instances of both ranks: 2 per iteration, 8 in all
    seen = json.loads((tmp_path / "dp" / "instance_weights.json").read_text())
    assert len(seen) == 8 and sorted(v["iteration"] for v in seen.values()) == [1, 1, 2, 2, 3, 3, 4, 4]
    assert sorted(p.name for p in (tmp_path / "dp" / "checkpoints").iterdir()) == ["iter-00000002",
                                                                                 "iter-00000004"]


@pytest.mark.slow
def test_sigterm_on_one_rank_checkpoints_once_and_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    flags = ("--iteration_num", "5", "--save_every_iterations", "100")
    full = run_worker(tmp_path, "full", 2, *flags)
    stopped = run_worker(tmp_path, "cut", 2, *flags, worker_flags=("--stop", "1:2"))
    assert [s["ended"] for s in stopped] == ["interrupted", "interrupted"]  # both ranks stop
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == ["iter-00000002"]
    assert stopped[1]["writes"] == [] and stopped[0]["writes"].count("save_checkpoint") == 1
    state = tmp_path / "cut.state"
    for p in state.glob("*.pt"):
        p.unlink()
    state.rmdir()
    resumed = run_worker(tmp_path, "cut", 2, *flags, "--resume")
    assert identical(resumed[0], resumed[1])
    assert identical(resumed[0], full[0])
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_metrics(tmp_path / "cut")) == strip(read_metrics(tmp_path / "full"))


@pytest.mark.slow
def test_a_nonfinite_loss_on_one_rank_skips_the_update_on_every_rank(tmp_path):
    r0, r1 = run_worker(tmp_path, "dp", 2, "--iteration_num", "3", worker_flags=("--nan", "1:2"))
    assert r0["skipped"] == r1["skipped"] == [1, 1]  # the lower update, and the upper one (darts' NaN)
    assert identical(r0, r1)
    rows = read_metrics(tmp_path / "dp")
    assert [r["skipped_lower"] for r in rows] == [0, 1, 1]


@pytest.mark.slow
def test_a_failed_save_on_rank_zero_stops_every_rank(tmp_path):
    """Rank 0 alone writes; when that fails the others hear of it instead of waiting for it."""
    r0, r1 = run_worker(tmp_path, "dp", 2, "--iteration_num", "2", worker_flags=("--fail_save",))
    assert r0["ended"] == "OSError: [Errno 28] No space left on device"
    assert r1["ended"] == ("PeerFailed: another process of this torchrun failed: rank 0 could not save a checkpoint "
                           "(OSError: [Errno 28] No space left on device)")
    assert r1["writes"] == []


@pytest.mark.slow
def test_train_py_under_torchrun_refuses_a_resume_with_another_process_count(tmp_path):
    weights = tmp_path / "w"
    argv = [*train_argv(weights), "--iteration_num", "2", "--strategy", "distributed"]
    first = torchrun(2, "train.py", *argv)
    assert first.returncode == 0, first.stderr[-2000:]
    again = torchrun(1, "train.py", *argv, "--resume")
    assert again.returncode != 0
    errors = [line for line in again.stderr.splitlines() if "error:" in line]
    assert errors[0] == ("error: --resume: iter-00000002 was made by 2 training processes and this run has 1; "
                         "resume with the same number (torchrun --nproc_per_node): the data position and the "
                         "batch of an update depend on it")


# -- best-of-N on several processes (slow) ---------------------------------------------------------
@pytest.mark.slow
def test_best_of_n_on_several_processes_writes_the_single_process_bytes(tmp_path):
    common = ["--reward_model", "tiny", "--test_json_file", str(DATA / "test.json")]
    single = subprocess.run([sys.executable, "test.py", *common, "--device", "cpu", "--output_file",
                             str(tmp_path / "one" / "r.json")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    launched = subprocess.run([sys.executable, "test.py", *common, "--devices", "cpu,cpu", "--output_file",
                               str(tmp_path / "two" / "r.json")], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
    assert launched.returncode == 0, launched.stderr
    ran = torchrun(3, "test.py", *common, "--device", "cpu", "--output_file", str(tmp_path / "three" / "r.json"))
    assert ran.returncode == 0, ran.stderr[-2000:]
    for name in ("two", "three"):
        for rel in ("r.json", "figs/bestofn_accuracy_vs_n.json"):
            assert (tmp_path / name / rel).read_bytes() == (tmp_path / "one" / rel).read_bytes(), (name, rel)
    # one table on the console, from rank 0
    assert launched.stdout.count("PRM mean") == 1 and "on 2 devices (cpu, ...)" in launched.stdout


@pytest.mark.slow
def test_evaluation_during_training_is_split_across_ranks_and_merges_to_test_py_numbers(tmp_path):
    """--eval_json_file under two ranks: each scores half the questions; the rows hold the numbers
    test.py gives for the checkpoint of that iteration, and rank 0 keeps best/."""
    test = str(DATA / "test.json")
    run_worker(tmp_path, "dp", 2, "--iteration_num", "4", "--save_every_iterations", "2", "--keep_checkpoints", "5",
               "--eval_json_file", test, "--eval_every", "2", "--save_best")
    rows = read_metrics(tmp_path / "dp")
    assert [r["iteration"] for r in rows if "eval_questions" in r] == [2, 4]
    for it in (2, 4):
        out = tmp_path / f"it{it}.json"
        done = subprocess.run([sys.executable, "test.py", "--reward_model",
                               str(tmp_path / "dp" / "checkpoints" / f"iter-{it:08d}" / "prm"), "--test_json_file",
                               test, "--device", "cpu", "--precision", "fp32", "--output_file", str(out)],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        summary = json.loads(out.read_text())["summary"]
        row = rows[it - 1]
        assert {a: row[f"eval_accuracy_{a}"] for a in summary["accuracy"]} == summary["accuracy"]
        assert row["eval_oracle"] == summary["oracle"] and row["eval_questions"] == summary["n_questions"] == 8
    best = json.loads((tmp_path / "dp" / "best" / "best.json").read_text())
    assert best["iteration"] in (2, 4) and best["questions"] == 8
