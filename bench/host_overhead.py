"""Host-side cost of a training iteration, measured on CPU with a full-depth, narrow InternVL.

The H100 profile says a bi-level iteration is bound by the host: Python, autograd and kernel
launches, ~12,700 of them, not by FLOPs. That cost depends on the number of layers and ops,
not on their width, so a model with InternVL3-1B's depth (24 vision + 24 language layers) and
the tiny model's widths reproduces it on a CPU, where each op's arithmetic is negligible:

* ``ops``: ATen operations dispatched per iteration outside the optimizer step (views
  excluded), about the kernels a GPU launches for the same eager code (the optimizer, one
  fused kernel on CUDA, is per-parameter on CPU and counted apart);
* ``s/iter``: median wall time per iteration on one CPU thread, for variants of the trainer.

A proxy for the GPU's host overhead, not a GPU number.

    python bench/host_overhead.py [--iters 6] [--compile]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # bench.py, reference.py by bare name; the root's arguments.py


class OpCounter(TorchDispatchMode):
    """Counts dispatched ATen ops that are not views (views launch no kernel), by name, and
    separately those inside optimizer steps (per-parameter on CPU, one fused kernel on CUDA)."""

    def __init__(self):
        super().__init__()
        self.ops = 0
        self.optimizer_ops = 0
        self.in_optimizer = False
        self.by_name: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            if self.in_optimizer:
                self.optimizer_ops += 1
            else:
                self.ops += 1
                self.by_name[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    def watch(self, optimizer) -> None:
        step = optimizer.step

        def counted_step(*args, **kwargs):
            self.in_optimizer = True
            try:
                return step(*args, **kwargs)
            finally:
                self.in_optimizer = False

        optimizer.step = counted_step


def build_deep_tiny(path: Path) -> Path:
    """The tiny model's widths at InternVL3-1B's depth, with the tiny processor."""
    from transformers import AutoProcessor, InternVLForConditionalGeneration

    from dreamprm.tiny import build_tiny_config, ensure_tiny

    processor = AutoProcessor.from_pretrained(ensure_tiny())
    tok = processor.tokenizer
    config = build_tiny_config(len(tok), tok.convert_tokens_to_ids("<IMG_CONTEXT>"), vision_layers=24, text_layers=24)
    torch.manual_seed(0)
    InternVLForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def run_variant(model: Path, data: Path, out: Path, iters: int, reference: bool, flags: list[str],
                count_ops: bool) -> dict:
    from bench import benchmark_trainer

    trainer = benchmark_trainer("cpu", model, data, out, "table", iters, flags, reference)
    if count_ops:  # ops between the ends of iterations 2 and 3: one steady-state iteration
        counter, marks, record = OpCounter(), [], trainer.engine.on_iteration
        for problem in trainer.problems():
            counter.watch(problem.optimizer)

        def mark(*args):
            marks.append((counter.ops, counter.optimizer_ops, Counter(counter.by_name)))
            return record(*args)

        trainer.engine.on_iteration = mark
        with counter:
            trainer.run()
        shutil.rmtree(out, ignore_errors=True)
        (ops1, opt1, names1), (ops2, opt2, names2) = marks[1], marks[2]
        return {"ops_per_iter": ops2 - ops1, "optimizer_ops_per_iter": opt2 - opt1, "by_name": names2 - names1}
    trainer.run()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    secs = [r["seconds"] for r in rows[2:]]  # the first iterations warm up (and compile)
    shutil.rmtree(out, ignore_errors=True)
    return {"s_per_iter": statistics.median(secs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--compile", action="store_true", help="also time --compile (slow to compile on CPU)")
    a = ap.parse_args()
    from transformers import AutoTokenizer

    from bench import build_data

    torch.set_num_threads(1)
    variants = [("reference (full-vocab head, darts graphs)", True, []), ("ours (default)", False, []),
                ("ours, --darts betty", False, ["--darts", "betty"])]
    if a.compile:
        variants.append(("ours + --compile", False, ["--compile"]))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_deep_tiny(tmp / "model")
        build_data(tmp / "data", AutoTokenizer.from_pretrained(model))
        print(f"Instance Table iteration, 24 + 24 layers, tiny widths, CPU, 1 thread, median of {a.iters - 2}:")
        for name, reference, flags in variants:
            timed = run_variant(model, tmp / "data", tmp / "run", a.iters, reference, flags, count_ops=False)
            ops = None
            if "--compile" not in flags:  # compiled regions run outside the dispatcher's view
                ops = run_variant(model, tmp / "data", tmp / "run", 3, reference, flags, count_ops=True)
            ops_text = (f"{ops['ops_per_iter']:6d} ops/iter (+{ops['optimizer_ops_per_iter']} in the optimizer)"
                        if ops else " " * 38)
            print(f"  {name:42s} {ops_text}  {timed['s_per_iter']:6.3f} s/iter", flush=True)
            if ops and not reference:
                top = ", ".join(f"{k.removeprefix('aten.')} {v}" for k, v in ops["by_name"].most_common(12))
                print(f"    most frequent (outside the optimizer): {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
