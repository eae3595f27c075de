"""Nothing lost: a run interrupted (in-process or by a real SIGTERM, or killed hard) and resumed
equals an uninterrupted one, bit for bit; checkpoint files are complete, pruned and safe to load."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from runs import read_metrics, run_trainer, train_argv
from safetensors import safe_open
from safetensors.torch import load_file

# A skipped first update makes Betty step the scheduler before any optimizer step: expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"

COMMON = ("--iteration_num", "6", "--save_every_iterations", "2", "--seed", "3")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Run A for both weighting methods: 6 iterations in one go."""
    out = {}
    for method in ("table", "net"):
        w = tmp_path_factory.mktemp(f"A-{method}")
        run_trainer(w, *COMMON, "--reweighting", method)
        out[method] = w
    return out


@pytest.mark.parametrize("method,stop", [("table", 3), ("net", 1)])
def test_interrupted_and_resumed_equals_uninterrupted(uninterrupted, tmp_path, method, stop):
    from dreamprm.trainer import TrainingInterrupted

    a, b = uninterrupted[method], tmp_path / "B"
    with pytest.raises(TrainingInterrupted) as err:
        run_trainer(b, *COMMON, "--reweighting", method, stop_at=stop)
    assert err.value.signum == signal.SIGTERM  # train.py exits 128 + signum
    assert "--resume" in str(err.value) and f"iter-{stop:08d}" in str(err.value)
    assert (b / "checkpoints" / f"iter-{stop:08d}").is_dir()
    assert len(read_metrics(b)) == stop

    run_trainer(b, *COMMON, "--reweighting", method, "--resume")

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert json.loads((a / "instance_weights.json").read_text()) == json.loads((b / "instance_weights.json").read_text())
    ca, cb = (load_file(str(w / "checkpoints" / "iter-00000006" / "weight_model.safetensors")) for w in (a, b))
    assert ca.keys() == cb.keys() and all(torch.equal(ca[k], cb[k]) for k in ca)

    ma, mb = read_metrics(a), read_metrics(b)
    assert [r["iteration"] for r in mb] == [1, 2, 3, 4, 5, 6]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(ma) == strip(mb)


def test_resume_after_a_hard_kill(uninterrupted, tmp_path):
    """A run killed (SIGKILL) mid-way: only iter-4 survived, metrics went on to 6 and a cut line.

    Resuming redoes 5 and 6 from iter-4, drops the stale metrics rows, and ends where A did.
    """
    a, c = uninterrupted["table"], tmp_path / "C"
    shutil.copytree(a, c)
    shutil.rmtree(c / "checkpoints" / "iter-00000006")
    for name in ("model.safetensors", "instance_weights.json"):
        (c / name).unlink()
    with open(c / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 7, "lower_lo')
    run_trainer(c, *COMMON, "--reweighting", "table", "--resume")
    wa, wc = load_file(str(a / "model.safetensors")), load_file(str(c / "model.safetensors"))
    assert wa.keys() == wc.keys() and all(torch.equal(wa[k], wc[k]) for k in wa)
    assert (a / "instance_weights.json").read_text() == (c / "instance_weights.json").read_text()
    assert [r["iteration"] for r in read_metrics(c)] == [1, 2, 3, 4, 5, 6]


def test_checkpoint_files(uninterrupted, tmp_path):
    """keep_checkpoints, no temporaries, safetensors weights, weights_only trainer state."""
    from dreamprm.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint

    w = uninterrupted["table"]
    names = sorted(p.name for p in (w / "checkpoints").iterdir())
    assert names == ["iter-00000004", "iter-00000006"]  # saved at 2, 4, 6; --keep_checkpoints 2
    leftovers = [p for p in w.rglob("*") if p.name.startswith((".tmp", ".export")) or p.name.endswith(".tmp")]
    assert leftovers == []
    ckpt = latest_checkpoint(w)
    assert ckpt.name == "iter-00000006"
    prm_files = {p.name for p in (ckpt / "prm").iterdir()}
    assert "model.safetensors" in prm_files and not any(n.endswith((".bin", ".pt", ".pth")) for n in prm_files)
    with safe_open(str(ckpt / "prm" / "model.safetensors"), "pt") as f:
        assert len(list(f.keys())) > 10
    load_file(str(ckpt / "weight_model.safetensors"))
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True, map_location="cpu")
    assert state["iteration"] == 6
    for key in ("train_stream", "meta_stream", "net_seen", "rng", "lower", "upper"):
        assert key in state, key
    for level in ("lower", "upper"):
        assert state[level]["optimizer"]["state"] and state[level]["scheduler"] is not None
        assert state[level]["count"] == 6
    assert {"python", "numpy_keys", "torch"} <= set(state["rng"])
    assert state["train_stream"]["taken"] + state["train_stream"]["epoch"] > 0

    # keep=1 and a half-written checkpoint: the temporary folder is never picked up, the
    # finished checkpoints stay, and the next save clears the temporary.
    copy_root = tmp_path / "w"
    shutil.copytree(w / "checkpoints", copy_root / "checkpoints")
    (copy_root / "checkpoints" / ".tmp-iter-00000009").mkdir()
    assert latest_checkpoint(copy_root).name == "iter-00000006"

    class Boom(Exception):
        pass

    class FailingPRM:
        def save_pretrained(self, path):
            raise Boom

    with pytest.raises(Boom):
        save_checkpoint(copy_root, 9, FailingPRM(), None, {}, {}, keep=1)
    assert [p.name for p in list_checkpoints(copy_root)] == ["iter-00000004", "iter-00000006"]


def test_keep_checkpoints_flag(tmp_path):
    w = tmp_path / "k"
    run_trainer(w, "--iteration_num", "3", "--save_every_iterations", "1", "--keep_checkpoints", "1", "--baseline")
    assert sorted(p.name for p in (w / "checkpoints").iterdir()) == ["iter-00000003"]




# -- a real SIGTERM ------------------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_saves_and_resumes(tmp_path):
    import train

    w = tmp_path / "s"
    argv = train_argv(w, "--iteration_num", "100000", "--save_every_iterations", "100000", "--baseline")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        metrics = w / "metrics.jsonl"
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    assert "Traceback" not in err
    assert "SIGTERM received: saved a checkpoint at iteration" in err and "--resume" in err
    done = len(read_metrics(w))
    assert (w / "checkpoints" / f"iter-{done:08d}" / "trainer_state.pt").is_file()

    rc = train.main(train_argv(w, "--iteration_num", str(done + 2), "--save_every_iterations", "100000", "--baseline",
                          "--resume"))
    assert rc == 0
    assert [r["iteration"] for r in read_metrics(w)] == list(range(1, done + 3))
    assert (w / "checkpoints" / f"iter-{done + 2:08d}").is_dir()
