"""Profile a few training iterations at the benchmark shape and print where the time goes.

    python bench/profile_iteration.py --out bench_out --mode table [--options noac,compile]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--mode", default="table", choices=("sft", "table", "net"))
    ap.add_argument("--options", default="", help="comma-separated bench options: gc, noac, compile")
    ap.add_argument("--rows", type=int, default=25)
    a = ap.parse_args()
    from arguments import train_parser
    from bench import OPTION_FLAGS, build_data, build_model
    from dreamprm.trainer import Trainer
    from transformers import AutoTokenizer

    out = Path(a.out)
    if not (out / "model" / "config.json").exists():
        build_model(out / "model")
    build_data(out / "data", AutoTokenizer.from_pretrained(out / "model"))
    argv = ["--reward_model", str(out / "model"), "--device", "cuda", "--precision", "bf16", "--no_progress",
            "--train_json_file", str(out / "data/train.json"), "--meta_json_file", str(out / "data/meta.json"),
            "--weights_path", str(out / f"profile_{a.mode}"), "--iteration_num", "8", "--save_every_iterations",
            str(10**9), "--num_workers", "4"]
    argv += ["--retrain", "1"] if a.mode == "sft" else ["--reweighting", a.mode]
    argv += [OPTION_FLAGS[o] for o in a.options.split(",") if o]
    trainer = Trainer(train_parser().parse_args(argv))
    record = trainer.engine.on_iteration
    schedule = torch.profiler.schedule(skip_first=5, wait=0, warmup=0, active=2, repeat=1)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], schedule=schedule) as prof:
        # iterations 6 and 7 are recorded (after compile warm-up); the final save at 8 is not
        trainer.engine.on_iteration = lambda it: (prof.step(), record(it))[1]
        trainer.run()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=a.rows, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
