"""bench/: bench.py runs every code path on CPU with the tiny model (`--device cpu`), so the GPU
benchmark is not first exercised on borrowed GPU time; the run-folder tools (figure, table, log
cleaning, merging) work on rows and logs written here, never on the committed runs."""

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = {"date", "device", "torch", "transformers", "mode", "gradient_checkpointing", "tiles", "steps", "seq_len",
          "median_s", "min_s", "timed_iters", "peak_gib", "tokens_per_s", "options", "mfu"}
CPU_DEVICE = "cpu (smoke run, tiny model)"
# tokens per instance of bench.py's synthetic data with the tiny model: a training record at
# 7 tiles (6 + thumbnail) and 8 steps, a best-of-8 candidate at 13 tiles and 7 steps
TRAIN_TOKENS, CANDIDATE_TOKENS = 813, 756


def _script(name, *args, timeout=600):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    return subprocess.run([sys.executable, str(ROOT / "bench" / name), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def _bench(tmp_path, *args):
    return _script("bench.py", "--device", "cpu", "--out", str(tmp_path / "run"), "--work", str(tmp_path / "work"),
                   *args)


@pytest.mark.slow
def test_cpu_smoke_run_measures_every_kind_of_mode(tmp_path, tiny_dir):
    modes = ["sft", "table", "reference_table", "net+noac", "table+gc", "table+bettydarts", "bon8", "reference_bon8"]
    done = _bench(tmp_path, "--iters", "2", "--warmup", "1", "--modes", ",".join(modes), "--run", "smoke")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [(r["mode"], r["gradient_checkpointing"], r["options"]) for r in rows] == [
        ("sft", False, []), ("table", False, []), ("reference_table", False, []), ("net", False, ["noac"]),
        ("table", True, []), ("table", False, ["bettydarts"]), ("bon8", False, []), ("reference_bon8", False, [])]
    for r in rows:
        bon8 = r["mode"].endswith("bon8")
        assert SCHEMA | {"run"} <= r.keys() and r["run"] == "smoke" and "note" not in r
        assert (r["device"], r["peak_gib"], r["mfu"], r["timed_iters"]) == (CPU_DEVICE, 0.0, None, 2)
        assert (r["tiles"], r["steps"], r["seq_len"]) == ((13, 8, CANDIDATE_TOKENS) if bon8 else (7, 8, TRAIN_TOKENS))
        assert r["min_s"] <= r["median_s"]
        assert bon8 or (len(r["warmup_s"]) == 1 and r["warmup_s"][0] > 0)  # training: the untimed iteration
        tokens = 8 * r["seq_len"] if bon8 else r["seq_len"]  # best-of-8: eight candidates per question
        assert math.isclose(r["tokens_per_s"] * r["median_s"], tokens, rel_tol=5e-3)
    # step probabilities against the reference path (fp32 on CPU): the reference mode computes
    # exactly what the probe computed; ours differ by float rounding at most
    diffs = {(r["mode"], r["gradient_checkpointing"]): r.get("max_prob_diff_vs_reference") for r in rows
             if not r["options"] or r["mode"] == "net"}
    assert diffs[("reference_table", False)] == 0.0
    for key in [("sft", False), ("table", False), ("net", False), ("table", True)]:
        assert 0.0 <= diffs[key] < 1e-6, key
    assert diffs[("bon8", False)] is None and diffs[("reference_bon8", False)] is None
    numerics = json.loads((tmp_path / "run" / "numerics.json").read_text())
    assert numerics["same_selections"] is True and 0.0 <= numerics["bon8_max_abs_step_prob_diff"] < 1e-6
    # the log: every mode in order, each row as printed, no progress bars or terminal codes
    log = (tmp_path / "run" / "bench_log.txt").read_text()
    lines = log.splitlines()
    assert lines[0].startswith("# ") and lines[0].endswith("python bench/bench.py " + " ".join(done.args[2:]))
    assert [line.split()[1] for line in lines if line.startswith("== ")] == modes
    assert [json.loads(line) for line in lines if line.startswith('{"date"')] == rows
    assert not any(c in log for c in ("\r", "\x1b", "it/s]"))
    # a second run into the same folder appends its rows and its log
    done = _bench(tmp_path, "--iters", "1", "--warmup", "0", "--modes", "bon8")
    assert done.returncode == 0, done.stderr[-3000:]
    again = json.loads((tmp_path / "run" / "results.json").read_text())
    assert again[:8] == rows and [(r["mode"], r["timed_iters"], "run" in r) for r in again[8:]] == [("bon8", 1, False)]
    assert (tmp_path / "run" / "bench_log.txt").read_text().startswith(log)


@pytest.mark.slow
def test_cpu_smoke_run_refuses_a_results_folder_and_names_bad_modes(tmp_path, tiny_dir):
    runs = ROOT / "bench" / "runs" / "cpu-smoke-test"
    done = _script("bench.py", "--device", "cpu", "--out", str(runs), "--work", str(tmp_path / "w"), "--modes", "sft")
    assert done.returncode != 0 and "not results" in done.stderr and str(runs) in done.stderr
    assert not runs.exists() and not (tmp_path / "w").exists()
    done = _bench(tmp_path, "--modes", "table+fast")
    assert done.returncode != 0 and "table+fast" in done.stderr and not (tmp_path / "run").exists()


def test_reference_module_switches_a_prm_in_place(tiny_prm):
    from bench.reference import ReferenceProcessRewardModel, make_reference, reference_step_outputs
    from dreamprm.batching import ExampleBuilder, collate
    from dreamprm.prompt import candidate_conversation

    item = ExampleBuilder(tiny_prm.processor, 2).build(candidate_conversation("q?", ["One.", "Two.", "Answer: 3"]),
                                                        Image.new("RGB", (90, 40), (10, 200, 30)))
    batch = collate([item], 0)
    prm = copy.deepcopy(tiny_prm)
    assert make_reference(prm) is prm and type(prm) is ReferenceProcessRewardModel
    with torch.no_grad():
        got, want = prm(**batch.model_inputs()), reference_step_outputs(tiny_prm, **batch.model_inputs())
    assert got.log_p_plus.shape == (3,) and torch.equal(got.log_p_plus, want.log_p_plus)
    with pytest.raises(TypeError, match="no reference computation for a dict"):
        make_reference({})


def _row(mode, median_s, run="a", device="NVIDIA H100 80GB HBM3", gc=False, options=(), **extra):
    return {"date": "2026-01-02", "device": device, "torch": "2.11.0", "transformers": "5.17.0", "mode": mode,
            "gradient_checkpointing": gc, "tiles": 7, "steps": 8, "seq_len": 2578, "median_s": median_s,
            "min_s": round(median_s * 0.9, 4), "peak_gib": 10.0 + median_s, "tokens_per_s": 1.0,
            "options": list(options), "mfu": 0.125, "run": run, **extra}


FIXTURE_ROWS = [
    _row("table", 0.9),  # replaced by the later table row of the same run
    _row("sft", 0.2, max_prob_diff_vs_reference=1.2e-7),
    _row("reference_table", 0.6, max_prob_diff_vs_reference=0.0),
    _row("table", 0.5, max_prob_diff_vs_reference=1.25e-7),
    _row("table", 0.8, gc=True),
    _row("table", 0.45, options=["noac"]),
    _row("bon8", 0.1),
    _row("reference_bon8", 0.7, mfu=None),
    {"mode": "net", "gradient_checkpointing": False, "options": [], "error": "OutOfMemoryError: ...", "run": "a"},
    _row("sft", 0.15, run="b"),
    _row("table", 0.4, run="b"),
    _row("sft", 0.3, run="c", device="NVIDIA H200"),
]


def test_plot_and_table_draw_one_run_from_fixture_rows(tmp_path):
    from bench.plot_results import largest_run, newest_rows, summary_table

    assert [largest_run(FIXTURE_ROWS, d) for d in ("H100", "H200", "", "TPU")] == ["a", "c", "a", None]
    picked = newest_rows(FIXTURE_ROWS, "H100", "a")
    assert [(r["mode"], r["gradient_checkpointing"], r["options"], r["median_s"]) for r in picked] == [
        ("sft", False, [], 0.2), ("table", False, [], 0.5), ("reference_table", False, [], 0.6),
        ("table", False, ["noac"], 0.45), ("table", True, [], 0.8), ("bon8", False, [], 0.1),
        ("reference_bon8", False, [], 0.7)]
    assert [r["median_s"] for r in newest_rows(FIXTURE_ROWS, "H100", "b")] == [0.15, 0.4]
    assert summary_table(picked).splitlines() == [
        "| mode | options | median s | min s | peak GiB | MFU | prob. diff vs ref. |",
        "|---|---|---|---|---|---|---|",
        "| sft | – | 0.200 | 0.180 | 10.2 | 12 % | 1.2e-07 |",
        "| table | – | 0.500 | 0.450 | 10.5 | 12 % | 1.2e-07 |",
        "| reference_table | – | 0.600 | 0.540 | 10.6 | 12 % | 0.0e+00 |",
        "| table | noac | 0.450 | 0.405 | 10.4 | 12 % | – |",
        "| table | gc | 0.800 | 0.720 | 10.8 | 12 % | – |",
        "| bon8 | – | 0.100 | 0.090 | 10.1 | 12 % | – |",
        "| reference_bon8 | – | 0.700 | 0.630 | 10.7 | – | – |",
    ]
    run_dir = tmp_path / "2026-01-02-h100"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps(FIXTURE_ROWS))
    done = _script("plot_results.py", str(run_dir), "--device", "H100", "--table")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(run_dir / "results.png"), *summary_table(picked).splitlines()]
    with Image.open(run_dir / "results.png") as png:  # 12 in wide, 0.42 in per bar + 1.8 in, at 110 dpi
        assert png.format == "PNG" and png.size == (1320, round((0.42 * 7 + 1.8) * 110))
    done = _script("plot_results.py", str(run_dir), "--run", "b", "--out", str(tmp_path / "b.png"))
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "b.png") as png:
        assert png.size == (1320, round((0.42 * 2 + 1.8) * 110))
    done = _script("plot_results.py", str(run_dir), "--device", "TPU")
    assert done.returncode != 0 and "'TPU'" in done.stderr
    done = _script("plot_results.py", str(tmp_path))
    assert done.returncode != 0 and f"no results.json in {tmp_path}" in done.stderr


def test_logs_lose_progress_bars_carriage_returns_and_colours(tmp_path):
    import io

    from bench.runfiles import LogTee, clean_log, gpu_slug

    bar = ("\rLoading weights:   0%|          | 0/733 [00:00<?, ?it/s]"
           "\rLoading weights: 100%|##########| 733/733 [00:00<00:00, 5095.18it/s]")
    text = ("random-init: 938 M parameters\n" + bar + "\n\x1b[31merror\x1b[0m: red\r\n"
            "step 3\rstep 4\n50%|of the time| 3 rows\nlast, no newline")
    assert clean_log(text) == ("random-init: 938 M parameters\nerror: red\nstep 4\n50%|of the time| 3 rows\n"
                               "last, no newline")
    terminal, log = io.StringIO(), io.StringIO()
    tee = LogTee(terminal, log)
    for piece in ("random-init: 938 M", " parameters\n", bar, "\n", "done\nhalf"):
        tee.write(piece)
    assert log.getvalue() == "random-init: 938 M parameters\ndone\n"
    tee.close()
    assert log.getvalue() == "random-init: 938 M parameters\ndone\nhalf\n"
    assert terminal.getvalue() == "random-init: 938 M parameters\n" + bar + "\ndone\nhalf"
    assert [gpu_slug(n) for n in ("NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA A100-SXM4-80GB",
                                  "NVIDIA GeForce RTX 4090", "NVIDIA H100 NVL", "")] == [
        "h100", "h200", "a100", "rtx-4090", "h100", "gpu"]


def test_merge_run_appends_rows_and_logs_once_and_refuses_other_versions(tmp_path):
    src, dst = tmp_path / "2026-01-02-h100", tmp_path / "runs" / "2026-01-02-h100"
    src.mkdir()
    dst.mkdir(parents=True)
    rows = [_row("sft", 0.2), _row("table", 0.5)]
    (dst / "results.json").write_text(json.dumps(rows[:1]))
    (dst / "bench_log.txt").write_text("# first\n")
    (src / "results.json").write_text(json.dumps(rows))
    (src / "bench_log.txt").write_text("# second\n\rsaving:  50%|#    | 1/2 [00:01<00:01]\n== table\n")
    (src / "profile_table.txt").write_text("kernels\n")
    (dst / "scaling.json").write_text(json.dumps(rows[1:]))  # a sweep merged before, and its figure
    (dst / "scaling.png").write_bytes(b"first figure")
    (src / "scaling.json").write_text(json.dumps(rows[:1]))
    (src / "scaling.png").write_bytes(b"second figure")
    done = _script("merge_run.py", str(src), str(dst))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"{dst / 'bench_log.txt'}: appended", f"{dst / 'profile_table.txt'}: written",
        f"{dst / 'results.json'}: 1 rows appended (2 in all)", f"{dst / 'scaling.json'}: 1 rows appended (2 in all)",
        f"{dst / 'scaling.png'}: kept (redraw it from the merged rows: python bench/scaling.py --plot {dst})"]
    state = {p.name: p.read_bytes().decode() for p in dst.iterdir()}
    assert json.loads(state["results.json"]) == rows and json.loads(state["scaling.json"]) == rows[::-1]
    assert state["scaling.png"] == "first figure"
    assert state["bench_log.txt"] == "# first\n# second\n== table\n" and state["profile_table.txt"] == "kernels\n"
    done = _script("merge_run.py", str(src), str(dst))  # again: nothing changes
    assert done.returncode == 0, done.stderr
    assert {p.name: p.read_bytes().decode() for p in dst.iterdir()} == state
    (src / "profile_table.txt").write_text("other kernels\n")
    (src / "profile_bon8.txt").write_text("bon8\n")
    done = _script("merge_run.py", str(src), str(dst))
    assert done.returncode != 0 and "other versions of: profile_table.txt (nothing merged)" in done.stderr
    assert {p.name: p.read_bytes().decode() for p in dst.iterdir()} == state


@pytest.mark.slow
def test_bon8_breakdown_cpu_smoke_run_reports_every_part(tmp_path, tiny_dir):
    done = _script("bon8_breakdown.py", "--device", "cpu", "--out", str(tmp_path / "run"), "--work",
                   str(tmp_path / "work"), "--iters", "1", "--warmup", "0")
    assert done.returncode == 0, done.stderr[-3000:]
    parts = json.loads((tmp_path / "run" / "bon8_breakdown.json").read_text())
    timed = ("prepare_image", "build_prompts", "score_pretiled", "score_prepared", "stream_prefetch0",
             "stream_prefetch2", "stream_workers2")
    assert set(parts) == {*timed, "device"} and parts["device"] == "cpu (tiny model)"
    assert all(isinstance(parts[k], float) and math.isfinite(parts[k]) for k in timed)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == parts


@pytest.mark.slow
def test_distributed_cpu_smoke_run_times_one_process_and_two_ranks(tmp_path, tiny_dir):
    done = _script("distributed.py", "--device", "cpu", "--out", str(tmp_path / "run"), "--work",
                   str(tmp_path / "work"), "--iters", "2", "--warmup", "1", "--runs", "single,gloo2,nccl2")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "distributed.json").read_text())
    rows = report["rows"]
    assert [(r["run"], r["exit"], r["processes"]) for r in rows] == [("single", 0, 1), ("gloo2", 0, 2)]  # no NCCL on CPU
    for r in rows:
        assert 0 < r["min_s"] <= r["median_s"]
        assert math.isclose(r["examples_per_s"] * r["median_s"], r["processes"], rel_tol=1e-2)
    tiny_params = sum(p.numel() for p in torch.nn.Module.parameters(_tiny_model(tiny_dir)))
    assert report["volume"] == {"prm_parameters": tiny_params, "bytes_per_allreduce_bf16": 2 * tiny_params,
                                "allreduces_per_iteration": 2}


def _tiny_model(folder):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(folder)


@pytest.mark.slow
def test_scaling_cpu_smoke_run_sweeps_tiles_and_steps(tmp_path, tiny_dir):
    runs = ROOT / "bench" / "runs" / "cpu-scaling-test"
    done = _script("scaling.py", "--device", "cpu", "--out", str(runs), "--work", str(tmp_path / "w"))
    assert done.returncode != 0 and "not results" in done.stderr and str(runs) in done.stderr
    assert not runs.exists() and not (tmp_path / "w").exists()
    run = tmp_path / "run"
    done = _script("scaling.py", "--device", "cpu", "--out", str(run), "--work", str(tmp_path / "work"),
                   "--tiles", "1,3", "--steps", "4,8", "--modes", "table,reference_sft", "--iters", "1", "--warmup", "1",
                   "--run", "smoke")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((run / "scaling.json").read_text())
    # one row per point and mode, in sweep order; 3 crop tiles + InternVL's thumbnail = 4 tiles
    assert [(r["mode"], r["crop_tiles"], r["tiles"], r["steps"]) for r in rows] == [
        (mode, crop, tiles, steps) for crop, tiles in ((1, 1), (3, 4)) for steps in (4, 8)
        for mode in ("table", "reference_sft")]
    for r in rows:
        assert {"date", "device", "torch", "mode", "options", "tiles", "steps", "seq_len", "median_s", "min_s",
                "timed_iters", "peak_gib", "tokens_per_s", "run"} <= r.keys() and "error" not in r
        assert (r["device"], r["options"], r["peak_gib"], r["timed_iters"], r["run"]) == (CPU_DEVICE, [], 0.0, 1, "smoke")
        assert 0 < r["min_s"] <= r["median_s"]
        assert math.isclose(r["tokens_per_s"] * r["median_s"], r["seq_len"], rel_tol=5e-3)
    tokens = {(r["mode"], r["tiles"], r["steps"]): r["seq_len"] for r in rows}
    for mode in ("table", "reference_sft"):
        for steps in (4, 8):
            assert tokens[(mode, 1, steps)] < tokens[(mode, 4, steps)]
        for tiles in (1, 4):
            assert tokens[(mode, tiles, 4)] < tokens[(mode, tiles, 8)]
            assert tokens[(mode, tiles, 4)] == tokens[("table", tiles, 4)]  # same data for every mode
    assert not list((tmp_path / "work").glob("scaling_*"))  # every trainer's output folder removed
    with Image.open(run / "scaling.png") as png:  # 13 x 5.4 in at 110 dpi
        assert png.format == "PNG" and png.size == (1430, 594)
    printed = done.stdout.splitlines()
    table_at = printed.index("| tiles | steps | tokens | table | reference_sft |")
    assert printed[table_at - 1] == str(run / "scaling.png") and len(printed) == table_at + 2 + 4 + 2
    assert [line.split(":")[0] for line in printed[-2:]] == ["slope table", "slope reference_sft"]
    # --plot redraws the figure, the table and the slopes from scaling.json alone
    (run / "scaling.png").unlink()
    again = _script("scaling.py", "--plot", str(run))
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.splitlines() == printed[table_at - 1:]
    with Image.open(run / "scaling.png") as png:
        assert png.format == "PNG"


def test_scaling_slopes_and_table_from_fixture_rows():
    from bench.scaling import fit_line, newest_rows, slope_lines, summary_table

    assert fit_line([1.0, 2.0, 3.0], [1.5, 2.5, 3.5]) == pytest.approx((1.0, 0.5))
    assert fit_line([0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 1.0, 3.0]) == pytest.approx((0.9, -0.1))
    assert fit_line([2.0], [1.0]) is None and fit_line([2.0, 2.0], [1.0, 3.0]) is None

    def row(mode, crop, steps, seq_len, median_s, **extra):
        tiles = crop + (crop > 1)
        return {"date": "2026-01-02", "device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "mode": mode, "options": [],
                "crop_tiles": crop, "tiles": tiles, "steps": steps, "seq_len": seq_len, "median_s": median_s,
                "min_s": median_s, "timed_iters": 6, "peak_gib": 9.0, **extra}

    rows = [row("table", 1, 4, 1000, 0.9),  # replaced by the later row of the same point
            row("table", 1, 4, 1000, 0.5), row("table", 6, 4, 3000, 0.7), row("reference_table", 1, 4, 1000, 0.6),
            {"date": "2026-01-02", "device": "NVIDIA H100 80GB HBM3", "mode": "reference_table", "options": [],
             "crop_tiles": 6, "steps": 4, "error": "OutOfMemoryError: ..."},
            row("table", 1, 4, 1000, 0.4, options=["noac"])]
    latest = newest_rows(rows)
    assert [(r["mode"], r["options"], r.get("median_s")) for r in latest] == [
        ("table", [], 0.5), ("table", [], 0.7), ("reference_table", [], 0.6), ("reference_table", [], None),
        ("table", ["noac"], 0.4)]
    assert slope_lines(latest) == [
        "slope table: +0.1000 s per 1k tokens (intercept 0.400 s, 2 points); 1000 -> 3000 tokens (x3.00): "
        "0.500 -> 0.700 s (x1.40)",
        "slope reference_table: needs points at two token counts (1 measured)",
        "slope table+noac: needs points at two token counts (1 measured)"]
    assert summary_table(latest).splitlines() == [
        "| tiles | steps | tokens | table | reference_table | table+noac |",
        "|---|---|---|---|---|---|",
        "| 1 | 4 | 1000 | 0.500 | 0.600 | 0.400 |",
        "| 7 | 4 | 3000 | 0.700 | error | – |"]
