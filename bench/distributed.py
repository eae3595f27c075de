"""Data-parallel training on one machine: what a torchrun of N processes costs and gives, at the
benchmark shape (bench.py's random-init InternVL3-1B, 7 tiles, 8 steps), through train.py.

    python bench/distributed.py [--out bench/runs/<date>-<gpu>] [--iters 12] [--warmup 4] [--mode table]

Runs, one after the other, each a fresh ``train.py`` (``--save_every_iterations`` past the end):

- ``single``: one process, no torchrun (the baseline);
- ``torchrun1``: ``torchrun --nproc_per_node 1 ... --strategy distributed`` (Betty's DDP with one
  rank; must cost what ``single`` costs);
- ``gloo2``: two processes on the same GPU over gloo (NCCL refuses two ranks on one device);
- ``nccl2``: the same over NCCL, recorded as refused (or measured, if the driver allows it).

Each row: median and min seconds per iteration after ``--warmup`` (from metrics.jsonl), the
examples per second (processes x batch / median), the exit code and the last error line. Rows
go to ``<out>/distributed.json``; the all-reduce volume per iteration (the PRM's gradient in the
lower step and the averaged meta gradient in darts, both the size of the PRM's parameters) is
computed from the model and stored beside them, for the 8-GPU estimate in RESULTS.md.
On ``--device cpu`` every run uses the bundled tiny model (numbers meaningless, paths real).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from bench.bench import WORK, bench_inputs, precision  # noqa: E402
from bench.runfiles import RUNS  # noqa: E402

RUNS_ORDER = ("single", "torchrun1", "gloo2", "nccl2")


def command(run: str, device: str, model_dir: Path, data: Path, out: Path, iterations: int, mode: str) -> list[str]:
    flags = ["--reward_model", str(model_dir), "--device", device, "--precision", precision(device),
             "--no_progress", "--train_json_file", str(data / "train.json"), "--meta_json_file",
             str(data / "meta.json"), "--weights_path", str(out), "--iteration_num", str(iterations),
             "--save_every_iterations", str(10**9), "--figs_dir", str(out / "figs")]
    flags += {"sft": ["--retrain", "1"], "table": ["--reweighting", "table", "--meta_lr", "5e-3"],
              "net": ["--reweighting", "net", "--meta_lr", "5e-4"]}[mode]
    train = [str(ROOT / "train.py"), *flags]
    if run == "single":
        return [sys.executable, *train]
    nproc = 1 if run == "torchrun1" else 2
    backend = {"torchrun1": [], "gloo2": ["--backend", "gloo"], "nccl2": ["--backend", "nccl"]}[run]
    if device == "cpu" and run == "nccl2":
        return []
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *train,
            "--strategy", "distributed", *backend]


def allreduce_bytes(model_dir: Path) -> dict:
    """What one bi-level iteration all-reduces: the PRM's gradient (DDP, lower step) and the meta
    gradient (averaged before darts), each the size of the PRM's parameters in their dtype."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    return {"prm_parameters": n, "bytes_per_allreduce_bf16": 2 * n, "allreduces_per_iteration": 2}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="run folder (default: bench/runs/<date>-<gpu>)")
    ap.add_argument("--work", default=str(WORK))
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--mode", default="table", choices=("sft", "table", "net"))
    ap.add_argument("--runs", default=",".join(RUNS_ORDER))
    ap.add_argument("--timeout", type=int, default=240, help="seconds per run")
    args = ap.parse_args()
    if args.out is None:
        import datetime

        import torch
        from runfiles import gpu_slug

        gpu = gpu_slug(torch.cuda.get_device_name()) if args.device == "cuda" else "cpu"
        args.out = str(RUNS / f"{datetime.date.today():%Y-%m-%d}-{gpu}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    model_dir, data = bench_inputs(work, args.device)
    report = {"mode": args.mode, "device": args.device, "iters": args.iters, "warmup": args.warmup,
              "volume": allreduce_bytes(model_dir), "rows": []}
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    for run in args.runs.split(","):
        weights = work / f"distributed-{run}"
        cmd = command(run, args.device, model_dir, data, weights, args.warmup + args.iters, args.mode)
        if not cmd:
            continue
        subprocess.run(["rm", "-rf", str(weights)], check=False)
        print(f"== {run}: {' '.join(cmd[:8])} ...", flush=True)
        try:
            done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
            code, err = done.returncode, done.stderr
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr or ""
            code, err = "timeout", stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
        row = {"run": run, "exit": code, "processes": 1 if run in ("single", "torchrun1") else 2}
        metrics = weights / "metrics.jsonl"
        if metrics.exists():
            seconds = [json.loads(line)["seconds"] for line in metrics.read_text().splitlines()][args.warmup:]
            if seconds:
                median = statistics.median(seconds)
                row.update(median_s=round(median, 4), min_s=round(min(seconds), 4),
                           examples_per_s=round(row["processes"] / median, 3))
        if code != 0:
            lines = [line for line in err.splitlines() if "error" in line.lower()]
            row["error"] = (lines or err.splitlines() or [""])[-1][:400]
        print(json.dumps(row), flush=True)
        report["rows"].append(row)
        (out / "distributed.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"results: {out / 'distributed.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
