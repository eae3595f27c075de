"""bench/bench.py runs every code path on CPU with the tiny model (`--device cpu`), so the GPU
benchmark is not first exercised on borrowed GPU time; its rows carry the results.json schema."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = {"date", "device", "torch", "transformers", "mode", "gradient_checkpointing", "tiles", "steps", "seq_len",
          "median_s", "min_s", "peak_gib", "tokens_per_s", "mfu"}


def _bench(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    return subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--device", "cpu", "--out",
                           str(tmp_path / "b"), *args], capture_output=True, text=True, env=env, timeout=600)


def test_cpu_smoke_run_measures_every_kind_of_mode(tmp_path, tiny_dir):
    modes = ["sft", "table", "reference_table", "net+noac", "table+gc", "bon8", "reference_bon8"]
    done = _bench(tmp_path, "--iters", "2", "--warmup", "1", "--modes", ",".join(modes))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "b" / "rows.json").read_text())
    assert [(r["mode"], r["gradient_checkpointing"], r["options"]) for r in rows] == [
        ("sft", False, []), ("table", False, []), ("reference_table", False, []), ("net", False, ["noac"]),
        ("table", True, []), ("bon8", False, []), ("reference_bon8", False, [])]
    for r in rows:
        assert SCHEMA <= r.keys()
        assert 0 < r["min_s"] <= r["median_s"] and r["tokens_per_s"] > 0 and r["seq_len"] > 100
        if not r["mode"].endswith("bon8"):  # fp32 on CPU: our step probabilities equal the reference's
            assert r["max_prob_diff_vs_reference"] < 1e-5
    numerics = json.loads((tmp_path / "b" / "numerics.json").read_text())
    assert numerics["same_selections"] is True and numerics["bon8_max_abs_step_prob_diff"] < 1e-5


def test_cpu_smoke_rows_never_go_to_results_and_bad_modes_are_named(tmp_path, tiny_dir):
    done = _bench(tmp_path, "--results", str(tmp_path / "r.json"), "--modes", "sft")
    assert done.returncode != 0 and "not results" in done.stderr and not (tmp_path / "r.json").exists()
    done = _bench(tmp_path, "--modes", "table+fast")
    assert done.returncode != 0 and "table+fast" in done.stderr
