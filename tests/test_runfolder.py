"""The output folder of a run: refused when it holds another run, locked, never written through
symlinks; checkpoints verified on resume, with fallback; resume keyed by training id."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors.torch import load_file

import train
from arguments import parse_train_args
from dreamprm.runfolder import RunFolder, RunFolderError
from dreamprm.trainer import Trainer, TrainingInterrupted

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


def _argv(weights: Path, *extra: str, train_file: Path = DATA / "train.json") -> list[str]:
    return ["--reward_model", "tiny", "--device", "cpu", "--precision", "fp32", "--no_progress",
            "--train_json_file", str(train_file), "--meta_json_file", str(DATA / "meta.json"),
            "--weights_path", str(weights), "--batch_size", "2", "--meta_batch_size", "2", *extra]


def _interrupt_at(weights: Path, stop: int, *extra: str, signals: int = 1, **kw) -> TrainingInterrupted:
    """Run in-process and deliver SIGTERM ``signals`` times during iteration ``stop``."""
    trainer = Trainer(parse_train_args(_argv(weights, *extra, **kw)))
    inner = trainer.engine.on_iteration

    def on_iteration(it, stats):
        if it == stop:
            for _ in range(signals):
                trainer._handle_signal(signal.SIGTERM, None)
        return inner(it, stats)

    trainer.engine.on_iteration = on_iteration
    with pytest.raises(TrainingInterrupted) as info:
        trainer.run()
    return info.value


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def _iterations(weights: Path) -> list[int]:
    return [json.loads(line)["iteration"] for line in (weights / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_reused_weights_path_never_loses_a_run(tmp_path, tiny_dir, capsys):
    """Run A, then run B (another seed) in the same folder, stopped by SIGTERM at iteration 1."""
    w = tmp_path / "w"
    assert train.main(_argv(w, "--iteration_num", "4", "--save_every_iterations", "2")) == 0
    (w / "notes.txt").write_text("mine")
    run_a = _digest(w)

    # B without --resume/--overwrite: refused in one line, A untouched
    capsys.readouterr()
    assert train.main(_argv(w, "--iteration_num", "4", "--seed", "7")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --weights_path {w} holds another run (2 checkpoints")
    assert "--resume" in err[0] and "--overwrite" in err[0]
    assert _digest(w) == run_a

    # B with --overwrite, stopped at iteration 1: the checkpoint the message names exists
    stop = _interrupt_at(w, 1, "--iteration_num", "4", "--save_every_iterations", "2", "--seed", "7", "--overwrite")
    named = Path(str(stop).split(" in ")[1].split(";")[0])
    assert named == w / "checkpoints" / "iter-00000001" and named.is_dir()
    assert sorted(p.name for p in (w / "checkpoints").iterdir()) == ["iter-00000001"]  # A's are gone
    assert (w / "notes.txt").read_text() == "mine"  # a file the project did not write stays

    # --resume continues B from its own iteration 1, not from A's iteration 4
    capsys.readouterr()
    assert train.main(_argv(w, "--iteration_num", "4", "--save_every_iterations", "2", "--seed", "7",
                            "--resume")) == 0
    assert f"resumed from {w / 'checkpoints' / 'iter-00000001'} at iteration 1" in capsys.readouterr().out
    assert _iterations(w) == [1, 2, 3, 4]
    assert sorted(p.name for p in (w / "checkpoints").iterdir()) == ["iter-00000002", "iter-00000004"]
    assert json.loads((w / "train_args.json").read_text())["seed"] == 7


def test_resume_refuses_another_configuration_in_one_line(tmp_path, tiny_dir, capsys):
    w = tmp_path / "w"
    assert train.main(_argv(w, "--iteration_num", "2", "--save_every_iterations", "2")) == 0
    before = _digest(w)
    cases = {
        ("--reweighting", "domain"): "belongs to a run of the Instance Table, and this command trains the Domain Table",
        ("--reweighting", "net"): "belongs to a run of the Instance Table",
        ("--batch_size", "1"): "was made with --batch_size 2, not 1",
        ("--iteration_num", "1"): "is at iteration 2, past --iteration_num 1",
    }
    for extra, fragment in cases.items():
        capsys.readouterr()
        argv = _argv(w, "--iteration_num", "4", "--resume")
        argv += list(extra)
        assert train.main(argv) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], (extra, err)
    # other training ids: refused, naming how many differ
    fewer = tmp_path / "fewer.json"
    records = json.loads((DATA / "train.json").read_text())
    fewer.write_text(json.dumps(records[:-1]))
    _rebase_images(fewer)
    capsys.readouterr()
    assert train.main(_argv(w, "--iteration_num", "4", "--resume", train_file=fewer)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --resume: iter-00000002 was trained on other records: 1 of its ids")
    assert _digest(w) == before


def _rebase_images(path: Path) -> None:
    """Point a copied data file's relative image paths back at the repository's images."""
    records = json.loads(path.read_text())
    for r in records:
        r["image"] = str((DATA / r["image"]).resolve())
    path.write_text(json.dumps(records))


def test_resume_maps_table_weights_by_id_not_position(tmp_path, tiny_dir):
    """Resuming with the same records in another order gives every id its own weight."""
    common = ("--iteration_num", "4", "--save_every_iterations", "2", "--meta_lr", "0.5")
    _interrupt_at(tmp_path / "a", 2, *common)
    shuffled = tmp_path / "shuffled.json"
    records = json.loads((DATA / "train.json").read_text())
    random.Random(0).shuffle(records)
    shuffled.write_text(json.dumps(records))
    _rebase_images(shuffled)
    os.system(f"cp -r {tmp_path / 'a'} {tmp_path / 'b'}")
    (tmp_path / "b" / ".lock").unlink()

    assert train.main(_argv(tmp_path / "a", *common, "--resume")) == 0
    assert train.main(_argv(tmp_path / "b", *common, "--resume", train_file=shuffled)) == 0
    same = json.loads((tmp_path / "a" / "instance_weights.json").read_text())
    other = json.loads((tmp_path / "b" / "instance_weights.json").read_text())
    assert len(set(same.values())) > 1  # the weights moved apart, so a mix-up would show
    assert other == same


@pytest.mark.slow
def test_a_second_run_on_a_locked_folder_is_refused(tmp_path, tiny_dir):
    w = tmp_path / "w"
    holder = RunFolder(w).open()
    try:
        done = subprocess.run([sys.executable, str(ROOT / "train.py"), *_argv(w, "--iteration_num", "1")],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
    finally:
        holder.close()
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (f"error: another run is using --weights_path {w} (process {os.getpid()}); "
                                   "wait for it to finish or choose another folder")
    assert not (w / "checkpoints").exists()


def test_a_killed_run_releases_its_lock(tmp_path):
    w = tmp_path / "w"
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT / 'src')!r})
        from dreamprm.runfolder import RunFolder
        held = RunFolder({str(w)!r}).open()
        print("locked", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match="another run is using"):
            RunFolder(w).open()
        proc.kill()
        proc.wait(timeout=30)
        RunFolder(w).open().close()
    finally:
        proc.kill()


def test_weights_path_problems_are_one_line_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [(a_file, f"error: --weights_path {a_file} is a file, not a folder"),
             (a_file / "sub", f"error: cannot create --weights_path {a_file / 'sub'}: ")]
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        cases.append((locked, f"error: --weights_path {locked} is not writable"))
    for path, expected in cases:
        capsys.readouterr()
        assert train.main(_argv(path, "--iteration_num", "1", "--train_json_file", str(tmp_path / "missing"))) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(expected), err


def test_symlinks_in_the_folder_are_never_followed(tmp_path, tiny_dir):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    w = tmp_path / "w"
    w.mkdir()
    (w / ".export-tmp").symlink_to(outside, target_is_directory=True)
    (w / ".export-mine").mkdir()  # a folder the project did not make, with a name like its own
    (w / ".export-mine" / "keep.txt").write_text("keep")
    (w / ".export-k3j2h1g0").mkdir()  # what a killed export leaves (tempfile's random suffix)
    (w / ".tmp-instance_weights.json-x").symlink_to(outside / "precious.txt")
    assert train.main(_argv(w, "--iteration_num", "2", "--save_every_iterations", "2")) == 0
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]
    assert (outside / "precious.txt").read_text() == "keep"
    assert (w / ".export-tmp").is_symlink()  # not ours to remove either
    assert (w / ".export-mine" / "keep.txt").read_text() == "keep"
    assert not (w / ".export-k3j2h1g0").exists()

    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "checkpoints").symlink_to(outside, target_is_directory=True)
    with pytest.raises(Exception, match="symbolic link"):
        Trainer(parse_train_args(_argv(linked, "--iteration_num", "1"))).run()
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]


# -- damaged checkpoints: verified, with fallback ---------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-iteration Instance Table run with checkpoints at 2 and 4."""
    w = tmp_path_factory.mktemp("finished") / "w"
    assert train.main(_argv(w, "--iteration_num", "4", "--save_every_iterations", "2")) == 0
    return w


def _copy(src: Path, dst: Path) -> Path:
    os.system(f"cp -r {src} {dst}")
    (dst / ".lock").unlink(missing_ok=True)
    return dst


def _damage_state(ckpt: Path, edit) -> None:
    """Rewrite trainer_state.pt through ``edit`` and re-sign the manifest (a writer's bug, not a torn file)."""
    import torch

    from dreamprm.checkpoint import write_manifest

    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    edit(state)
    torch.save(state, ckpt / "trainer_state.pt")
    (ckpt / "manifest.json").unlink()
    write_manifest(ckpt, int(ckpt.name.split("-")[1]))


DAMAGE = {
    "truncated weights": (lambda c: os.truncate(c / "prm" / "model.safetensors", 100), "has 100 bytes"),
    "missing weights": (lambda c: (c / "prm" / "model.safetensors").unlink(), "prm/model.safetensors is missing"),
    "missing state": (lambda c: (c / "trainer_state.pt").unlink(), "trainer_state.pt is missing"),
    "flipped byte": (lambda c: _flip(c / "weight_model.safetensors"), "does not match its SHA-256"),
    "no manifest": (lambda c: (c / "manifest.json").unlink(), "no manifest.json"),
    "state without a key": (lambda c: _damage_state(c, lambda s: s.pop("train_stream")), "lacks train_stream"),
    "negative iteration": (lambda c: _damage_state(c, lambda s: s.update(iteration=-3)), "says iteration -3"),
}


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(finished, tmp_path, capsys, damage):
    w = _copy(finished, tmp_path / "w")
    apply, reason = DAMAGE[damage]
    apply(w / "checkpoints" / "iter-00000004")
    capsys.readouterr()
    assert train.main(_argv(w, "--iteration_num", "4", "--save_every_iterations", "2", "--resume")) == 0
    out = capsys.readouterr()
    assert f"note: skipping checkpoint iter-00000004: " in out.err and reason in out.err, out.err
    assert f"resumed from {w / 'checkpoints' / 'iter-00000002'} at iteration 2" in out.out
    assert _iterations(w) == [1, 2, 3, 4]
    assert sorted(p.name for p in (w / "checkpoints").iterdir()) == ["iter-00000002", "iter-00000004"]


def test_no_usable_checkpoint_is_one_line(finished, tmp_path, capsys):
    w = _copy(finished, tmp_path / "w")
    for ckpt in (w / "checkpoints").iterdir():
        (ckpt / "trainer_state.pt").unlink()
    capsys.readouterr()
    assert train.main(_argv(w, "--iteration_num", "4", "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: --resume: no usable checkpoint in {w / 'checkpoints'} (")
    assert err[-1].endswith("start again with --overwrite")


# -- nothing non-finite is written -------------------------------------------------------------

def _all_finite_files(w: Path) -> list[Path]:
    import torch

    files = sorted(w.rglob("*.safetensors"))
    for f in files:
        for name, t in load_file(str(f)).items():
            assert torch.isfinite(t).all(), f"{f}: {name}"
    return files


@pytest.mark.parametrize("extra", [("--lr", "1e10"), ("--meta_lr", "1e12", "--activation_function", "No")])
def test_a_diverging_run_never_writes_non_finite_tensors(tmp_path, tiny_dir, capsys, extra):
    w = tmp_path / "w"
    rc = train.main(_argv(w, "--iteration_num", "12", "--save_every_iterations", "4", "--max_bad_steps", "3",
                          *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3 and err[-1].startswith("error: stopped at iteration"), err
    assert "the last checkpoint (finite) is" in err[-1] or "no checkpoint was written" in err[-1]
    _all_finite_files(w)
    weights = w / "instance_weights.json"
    if weights.exists():
        json.loads(weights.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in instance_weights.json"))


def test_a_second_sigterm_stops_at_once_with_143(tmp_path, tiny_dir):
    stop = _interrupt_at(tmp_path / "w", 2, "--iteration_num", "4", "--save_every_iterations", "4", signals=2)
    assert stop.signum == signal.SIGTERM  # train.py exits 128 + signum
    assert "received again: stopped at once" in str(stop) and "no checkpoint was written" in str(stop)


def test_checkpoints_are_written_every_1000_iterations_by_default():
    """The public code saved every iteration (gigabytes per iteration at 1B parameters)."""
    assert parse_train_args([]).save_every_iterations == 1000


def test_a_symlinked_weights_path_is_the_users_choice_of_place(tmp_path, tiny_dir):
    disk = tmp_path / "big_disk"
    disk.mkdir()
    (tmp_path / "w").symlink_to(disk, target_is_directory=True)
    assert train.main(_argv(tmp_path / "w", "--iteration_num", "1")) == 0
    assert (disk / "model.safetensors").is_file() and (disk / "checkpoints" / "iter-00000001").is_dir()


def test_a_dropped_run_folder_releases_its_lock(tmp_path):
    """A Trainer built but never run holds the folder only as long as it exists."""
    import gc

    held = RunFolder(tmp_path / "w").open()
    with pytest.raises(RunFolderError, match="another run is using"):
        RunFolder(tmp_path / "w").open()
    del held
    gc.collect()
    RunFolder(tmp_path / "w").open().close()
