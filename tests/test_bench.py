"""bench/bench.py runs every code path on CPU with the tiny model (`--device cpu`), so the GPU
benchmark is not first exercised on borrowed GPU time; its rows carry the results.json schema."""

import json

import pytest
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


@pytest.mark.slow
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


def test_results_plot_uses_the_newest_row_per_mode_and_names_a_missing_device(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    from plot_results import largest_run, newest_rows, plot

    rows = json.loads((ROOT / "bench" / "results.json").read_text())
    newer = dict(rows[0], date="2099-01-01", median_s=0.01)
    picked = newest_rows(rows + [newer], "H100")
    assert [r["median_s"] for r in picked if (r["mode"], r["gradient_checkpointing"]) == (newer["mode"], False)
            and not r.get("options")] == [0.01]
    assert len({(r["mode"], r["gradient_checkpointing"], tuple(r.get("options", []))) for r in picked}) == len(picked)
    assert plot(picked, tmp_path / "r.png", "t").stat().st_size > 10_000
    # rows of different runs (machines) never share a figure; the largest run is the default
    runs = [dict(rows[0], run="a", mode=m) for m in ("sft", "table", "net")] + [dict(rows[0], run="b", mode="sft")]
    assert largest_run(runs, "H100") == "a"
    assert [r["run"] for r in newest_rows(runs, "H100", "b")] == ["b"]
    assert {r["mode"] for r in newest_rows(runs, "H100", "a")} == {"sft", "table", "net"}
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "plot_results.py"), "--device", "TPU", "--out",
                           str(tmp_path / "x.png")], capture_output=True, text=True, env=env)
    assert done.returncode != 0 and "TPU" in done.stderr


@pytest.mark.slow
def test_bon8_breakdown_cpu_smoke_run_reports_every_part(tmp_path, tiny_dir):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "bon8_breakdown.py"), "--device", "cpu", "--out",
                           str(tmp_path / "b"), "--iters", "1", "--warmup", "0"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    parts = json.loads((tmp_path / "b" / "bon8_breakdown.json").read_text())
    for key in ("prepare_image", "build_prompts", "score_pretiled", "stream_prefetch0", "stream_prefetch2"):
        assert parts[key] > 0, key
