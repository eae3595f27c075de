"""How much of Betty's darts perturbation survives bf16 weights (CPU, a minute).

darts perturbs the PRM in place by ε·v with ε = R / |v| (R = ``--darts_alpha``, 0.01 by default),
so the perturbation has norm R whatever the model size, and each of InternVL3-1B's 938 M weights
moves by ~R / sqrt(938e6) ≈ 3e-7 on average, far below the bf16 spacing of a typical weight
(~1e-4 at 0.02). This script measures

1. the share of weights that change at all, for N(0, 0.02) weights of the full-size count;
2. on the tiny model, with R scaled so that the per-weight perturbation matches the full-size
   model's (R_tiny = R · sqrt(n_tiny / 938e6)): the Instance Table's darts hypergradient with
   bf16 weights against the same computation with fp32 weights (cosine, centred cosine = the
   per-instance differences, and norm ratio).

    python bench/darts_precision.py [--darts fused|betty]
    python bench/darts_precision.py --full_size [--work DIR]   # GPU: random-init InternVL3-1B

``--full_size`` repeats 2. on the GPU with bench.py's random-init full-size model and data (built
in bench.py's scratch folder ``--work`` if missing), R unscaled (two training instances per
batch; fp32 needs ~40 GiB).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]  # bench.py by bare name; the root's arguments.py
FULL_SIZE = 938e6


def moved_share(R: float, n: int = 4_000_000) -> float:
    """Share of N(0, 0.02) bf16 weights that θ + R·v/|v| changes, v Gaussian over FULL_SIZE weights."""
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(n, generator=g) * 0.02).bfloat16()
    v = torch.randn(n, generator=g)
    eps = R / (v.pow(2).mean().sqrt() * FULL_SIZE**0.5)
    return float(((w.float() + eps * v).bfloat16() != w).float().mean())


def table_hypergradient(prm0, train_set, meta_set, dtype, alpha: float, batch: int = 8,
                        device: str = "cpu", darts: str = "fused") -> torch.Tensor:
    from betty.configs import Config, EngineConfig

    from dreamprm.batching import BatchStream
    from dreamprm.hypergradient import DARTS_TYPES
    from dreamprm.problems import IterationEngine, LowerProblem, UpperProblem
    from dreamprm.weighting import WeightTable

    class Capturing(UpperProblem):
        def grad_callback(self):
            self.captured = self.module.raw.grad.detach().float().clone()

    prm = copy.deepcopy(prm0).to(device=device, dtype=dtype)
    table = WeightTable(train_set.ids, 1.0, "No").to(device)
    lower = LowerProblem("lower", Config(type=DARTS_TYPES[darts], precision="fp32", darts_alpha=alpha), prm,
                         torch.optim.SGD(prm.parameters(), lr=1e-3), None, BatchStream(train_set, batch, 3, 0))
    upper = Capturing("upper", Config(type=DARTS_TYPES[darts], retain_graph=True, precision="fp32"), table,
                      torch.optim.SGD(table.parameters(), lr=0.0), None, BatchStream(meta_set, max(batch // 2, 1), 4, 0))
    strategy = "cpu" if device == "cpu" else "default"
    IterationEngine([upper, lower], EngineConfig(train_iters=1, valid_step=1, strategy=strategy, logger_type="none"),
                    {"l2u": {lower: [upper]}, "u2l": {upper: [lower]}}, on_iteration=lambda *_: True).run()
    hypergradient = upper.captured.cpu()
    del prm, lower, upper
    if device != "cpu":
        torch.cuda.empty_cache()
    return hypergradient


def compare(got, ref) -> str:
    if not ref.any() or not got.any():
        return f"an all-zero hypergradient (|got| {got.norm():.3g}, |ref| {ref.norm():.3g}): nothing to compare"
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=0)
    centred = torch.nn.functional.cosine_similarity(got - got.mean(), ref - ref.mean(), dim=0)
    return f"cosine {cos:.3f}, centred {centred:.3f}, norm ratio {got.norm() / ref.norm():.2f}"


def datasets(prm0, folder: Path, max_patch_num: int, n_train: int, n_meta: int):
    """The first ``n_train`` training and ``n_meta`` meta records of ``folder``'s sample files."""
    from dreamprm.batching import ConversationDataset, ExampleBuilder
    from dreamprm.records import load_records

    builder = ExampleBuilder(prm0.processor, max_patch_num)
    train, _ = load_records(folder / "train.json", "train")
    meta, _ = load_records(folder / "meta.json", "meta")
    return (ConversationDataset(train[:n_train], folder / "train.json", builder),
            ConversationDataset(meta[:n_meta], folder / "meta.json", builder))


def sweep(prm0, train_set, meta_set, scale: float = 1.0, batch: int = 8, device: str = "cpu",
          darts: str = "fused") -> None:
    """Print bf16 against fp32 at darts' R = 0.01, 0.1, 1 (each × ``scale``), and fp32 against
    fp32 at R = 0.01."""
    def hypergradient(dtype, R):
        return table_hypergradient(prm0, train_set, meta_set, dtype, R * scale, batch, device, darts)

    small = hypergradient(torch.float32, 0.01)
    for R in (0.01, 0.1, 1.0):
        ref = small if R == 0.01 else hypergradient(torch.float32, R)
        got = hypergradient(torch.bfloat16, R)
        print(f"   R = {R:<5g} bf16 vs fp32: {compare(got, ref)};  fp32 vs fp32 at R = 0.01: {compare(ref, small)}",
              flush=True)


def full_size(work: Path, darts: str = "fused") -> None:
    """2. at full size on the GPU, with bench.py's model and data (built in ``work`` if missing)."""
    from bench import bench_inputs
    from dreamprm.prm import ProcessRewardModel
    from dreamprm.prompt import label_token_ids

    bench_inputs(work, "cuda")
    prm0 = ProcessRewardModel.from_pretrained(work / "model", precision="fp32")  # kept on the CPU
    # bench.py's model scales the "+"/"-" rows of the LM head by 40 for decisive scores; at that
    # scale p(+) saturates to exactly 0 or 1 in fp32 and every gradient vanishes (a first run gave
    # an all-zero hypergradient). Scale them to 3x instead, as the tiny model's run does.
    plus, minus = label_token_ids(prm0.processor.tokenizer)
    with torch.no_grad():
        prm0.model.lm_head.weight[[plus, minus]] *= 3 / 40
    train_set, meta_set = datasets(prm0, work / "data", 6, 2, 1)
    print("2. full-size random-init InternVL3-1B, Instance Table darts hypergradient, bf16 vs fp32 weights")
    sweep(prm0, train_set, meta_set, batch=2, device="cuda", darts=darts)


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full_size", action="store_true", help="part 2 at full size, on the GPU")
    ap.add_argument("--work", default=None, help="bench.py's scratch folder (model, data; default: bench.py's)")
    ap.add_argument("--darts", default="fused", choices=("fused", "betty"),
                    help="the hypergradient's implementation, as train.py's --darts (default: %(default)s)")
    a = ap.parse_args()

    from dreamprm.prm import ProcessRewardModel
    from dreamprm.tiny import ensure_tiny
    from dreamprm.trainer import quiet_libraries

    quiet_libraries()  # Betty logs an INFO line per problem and engine step (~100 here)
    print("1. InternVL3-1B-sized bf16 weights ~ N(0, 0.02), Gaussian direction: weights that change")
    for R in (0.01, 0.1, 1.0):
        print(f"   R = {R:<5g} {100 * moved_share(R):6.2f} %")
    if a.full_size:
        from bench import WORK

        full_size(Path(a.work) if a.work else WORK, a.darts)
        return 0

    torch.manual_seed(0)
    prm0 = ProcessRewardModel.from_pretrained(ensure_tiny(), precision="fp32")
    with torch.no_grad():  # sharper label logits, as in the trainer's hypergradient test
        prm0.model.lm_head.weight.mul_(3)
    n = sum(p.numel() for p in prm0.parameters())
    train_set, meta_set = datasets(prm0, ROOT / "data", 2, 8, 4)
    print(f"2. tiny model ({n} weights), Instance Table darts hypergradient, bf16 vs fp32 weights,")
    print("   R scaled to the full-size model's per-weight perturbation")
    sweep(prm0, train_set, meta_set, scale=(n / FULL_SIZE) ** 0.5, darts=a.darts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
