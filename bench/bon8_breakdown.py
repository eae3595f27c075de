"""Where a best-of-8 question's time goes (GPU): image preparation, prompt building, scoring.

bench.py's ``bon8`` row times test.py's loop end to end, with images prepared ahead as test.py
does on that device (``--prefetch 2``; ``--num_workers`` 2 worker processes on cuda). This
script splits that time, per question, at bench.py's shape (13 tiles, 8 candidates of 8 steps):

* ``prepare_image``: decoding, tiling and normalising the image (CPU; ``Scorer.prepare_image``);
* ``build_prompts``: splitting and tokenising the 8 candidates (CPU);
* ``score_pretiled``: ``score_candidates`` given the prepared pixels (prompts + GPU work);
* ``score_prepared``: ``score_prepared`` given the whole prepared question (the model's half
  alone: what the loop costs when the preparation is wholly hidden);
* ``stream_prefetch0``: test.py's loop, serial;
* ``stream_prefetch2``: with one background thread preparing 2 questions ahead (``--num_workers 0``);
* ``stream_workers2``: with 2 worker processes preparing them (``--num_workers 2``).

If ``stream_prefetch2`` sits well above ``score_pretiled``, the overlap is imperfect (the
preparing thread competes with the scoring thread for the interpreter lock); the worker
processes do not, and they tokenise the candidates too, so ``stream_workers2`` should come
down to about ``score_prepared``.

    python bench/bon8_breakdown.py [--out RUN] [--work DIR] [--iters 10] [--device cpu]

The numbers are printed and written to ``RUN/bon8_breakdown.json`` (``RUN`` as bench.py's
``--out``: by default ``bench/runs/<date>-<gpu>/``); ``--work`` is bench.py's scratch folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # bench.py, reference.py by bare name; the root's arguments.py


def timed_median(fn, items, warmup: int, sync) -> float:
    secs = []
    for i, item in enumerate(items):
        t0 = time.perf_counter()
        fn(item)
        sync()
        if i >= warmup:
            secs.append(time.perf_counter() - t0)
    return statistics.median(secs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="run folder for bon8_breakdown.json (default: bench.py's)")
    ap.add_argument("--work", default=None, help="bench.py's scratch folder (model and data are built if missing)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: tiny model, a smoke run")
    a = ap.parse_args()

    from bench import WORK, bench_inputs, default_run_dir, measure_bon8, precision, sync
    from dreamprm.batching import ExampleBuilder
    from dreamprm.prompt import candidate_conversation
    from dreamprm.scoring import load_scorer
    from dreamprm.steps import split_steps

    out = Path(a.out) if a.out else default_run_dir(a.device)
    model_dir, data = bench_inputs(Path(a.work) if a.work else WORK, a.device)
    tests = json.loads((data / "test.json").read_text())
    stream = [tests[i % len(tests)] for i in range(a.warmup + a.iters)]

    scorer = load_scorer(str(model_dir), device=a.device, precision=precision(a.device), max_patch_num=12,
                         batch_size=8)
    builder = ExampleBuilder(scorer.prm.processor, 12)
    pixels = {q["image_path"]: scorer.prepare_image(data / q["image_path"]) for q in tests}

    def no_sync():
        pass

    def gpu_sync():
        sync(a.device)

    def build(q):
        pv = pixels[q["image_path"]]
        return [builder.build(candidate_conversation(q["question"], split_steps(c)), pixel_values=pv)
                for c in q["candidates"]]

    prepared = {i: scorer.prepare_candidates(pixels[q["image_path"]], q["question"], q["candidates"])
                for i, q in enumerate(tests)}
    result = {
        "prepare_image": timed_median(lambda q: scorer.prepare_image(data / q["image_path"]), stream, a.warmup,
                                      no_sync),
        "build_prompts": timed_median(build, stream, a.warmup, no_sync),
        "score_pretiled": timed_median(
            lambda q: scorer.score_candidates(pixels[q["image_path"]], q["question"], q["candidates"]),
            stream, a.warmup, gpu_sync),
        "score_prepared": timed_median(lambda i: scorer.score_prepared(prepared[i % len(tests)]),
                                       range(a.warmup + a.iters), a.warmup, gpu_sync),
    }
    scorer = prepared = None  # free the model before measure_bon8 loads its own
    for name, prefetch, workers in (("stream_prefetch0", 0, 0), ("stream_prefetch2", 2, 0),
                                    ("stream_workers2", 2, 2)):
        m = measure_bon8(a.device, model_dir, data, False, a.iters, a.warmup, prefetch=prefetch, workers=workers)
        result[name] = statistics.median(m["secs"])
    result = {k: round(v, 4) for k, v in result.items()}
    result["device"] = torch.cuda.get_device_name() if a.device == "cuda" else "cpu (tiny model)"
    print(json.dumps(result), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bon8_breakdown.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
