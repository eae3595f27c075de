"""Profile a few training iterations (or best-of-8 questions) at the benchmark shape and print
where the time goes: the busiest kernels, and the host side (launches, Python).

    python bench/profile_iteration.py --mode table [--options noac,compile] [--work DIR] > RUN/profile_table_noac.txt
    python bench/profile_iteration.py --mode bon8 > RUN/profile_bon8.txt

``--work`` is bench.py's scratch folder (the model and data are built there if missing); the
tables go to stdout, for the run folder (``bench/runs/<date>-<gpu>/``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # bench.py, reference.py by bare name; the root's arguments.py


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=None, help="bench.py's scratch folder (default: bench.py's)")
    ap.add_argument("--mode", default="table", choices=("sft", "table", "net", "bon8"))
    ap.add_argument("--options", default="", help="comma-separated bench options: gc, noac, compile, graphs, "
                                                  "bettydarts")
    ap.add_argument("--rows", type=int, default=25)
    a = ap.parse_args()
    from bench import WORK, bench_inputs, option_flags

    out = Path(a.work) if a.work else WORK
    bench_inputs(out, "cuda")
    if a.mode == "bon8":
        prof = profile_bon8(out)
    else:
        prof = profile_training(out, a.mode, option_flags(o for o in a.options.split(",") if o))
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=a.rows, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=60))
    return 0


def profile_training(out: Path, mode: str, flags: list[str]):
    from bench import benchmark_trainer

    trainer = benchmark_trainer("cuda", out / "model", out / "data", out / f"profile_{mode}", mode, 8, flags)
    record = trainer.engine.on_iteration
    schedule = torch.profiler.schedule(skip_first=5, wait=0, warmup=0, active=2, repeat=1)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], schedule=schedule) as prof:
        # iterations 6 and 7 are recorded (after compile warm-up); the final save at 8 is not
        trainer.engine.on_iteration = lambda *args: (prof.step(), record(*args))[1]
        trainer.run()
    return prof


def profile_bon8(out: Path):
    """Six best-of-8 questions through test.py's loop (prefetch on, its default worker processes);
    the last two are recorded."""
    import json

    from dreamprm.scoring import default_workers, evaluate, load_scorer

    scorer = load_scorer(str(out / "model"), device="cuda", precision="bf16", max_patch_num=12, batch_size=8)
    tests = json.loads((out / "data" / "test.json").read_text())
    stream = [tests[i % len(tests)] for i in range(6)]
    score = scorer.score_prepared  # the model's half of each question, as the loop calls it
    schedule = torch.profiler.schedule(skip_first=3, wait=0, warmup=1, active=2, repeat=1)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], schedule=schedule) as prof:
        def stepped(*args):
            result = score(*args)
            torch.cuda.synchronize()
            prof.step()
            return result

        scorer.score_prepared = stepped
        evaluate(scorer, stream, out / "data" / "test.json", progress=False, prefetch=2,
                 workers=default_workers("cuda"))
    return prof


if __name__ == "__main__":
    sys.exit(main())
