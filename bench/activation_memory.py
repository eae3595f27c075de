"""Where the activation memory of a bi-level iteration goes, measured on CPU (no GPU needed).

1. Full size: bytes autograd saves for one vision layer (7 tiles × 1,025 tokens) and one
   language layer (2,578 tokens) of a random-init InternVL3-1B, bf16, × 24 layers each.
2. The real trainer (tiny model, Instance Table): the most saved-activation bytes alive at
   once during an iteration, in units of one lower forward's activations, with the darts
   perturbation passes recording an autograd graph (the reference) and without (ours).

    python bench/activation_memory.py
"""

from __future__ import annotations

import sys
import tempfile
import weakref
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # bench.py, reference.py by bare name; the root's arguments.py


class SavedBytes:
    """Counts the bytes of tensors autograd saves for backward, and how many are alive."""

    def __init__(self):
        self.total = 0  # ever saved
        self.live = 0
        self.peak = 0
        self._holders: dict[int, int] = {}  # storage address -> saved tensors alive on it

    def _pack(self, t):
        if isinstance(t, torch.nn.Parameter):
            return t
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in self._holders:  # views of one storage count once
            self._holders[key] = 0
            self.total += storage.nbytes()
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self._holders[key] += 1
        # a detached alias: autograd keeps it as long as it needs the data, and, unlike the
        # tensor itself, it closes no reference cycle through grad_fn (which would leave
        # freeing to the cyclic garbage collector and inflate the count)
        alias = t.detach()
        weakref.finalize(alias, self._release, key, storage.nbytes())
        return alias

    def _release(self, key, n):
        self._holders[key] -= 1
        if self._holders[key] == 0:
            del self._holders[key]
            self.live -= n

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)


def full_size_layers() -> None:
    from transformers import InternVLForConditionalGeneration

    from bench import full_size_config

    cfg = full_size_config(image_token_id=151667, layers=1)  # one layer of each tower, full width
    cfg._attn_implementation = "sdpa"
    model = InternVLForConditionalGeneration(cfg).to(torch.bfloat16)
    vision = SavedBytes()
    with vision.hooks():
        model.model.vision_tower.encoder.layer[0](torch.randn(7, 1025, 1024, dtype=torch.bfloat16, requires_grad=True))
    text = SavedBytes()
    layer = model.model.language_model.layers[0]
    hidden = torch.randn(1, 2578, 896, dtype=torch.bfloat16, requires_grad=True)
    rotary = model.model.language_model.rotary_emb(hidden, torch.arange(2578).unsqueeze(0))
    with text.hooks():
        layer(hidden, position_embeddings=rotary, attention_mask=None, position_ids=torch.arange(2578).unsqueeze(0))
    gib = 2**30
    print("full size, bf16, saved for backward:")
    print(f"  vision layer, 7 tiles:  {vision.total / 2**20:7.0f} MiB  x 24 = {24 * vision.total / gib:5.2f} GiB")
    print(f"  text layer, 2,578 tok:  {text.total / 2**20:7.0f} MiB  x 24 = {24 * text.total / gib:5.2f} GiB")
    print(f"  one forward (both):                    {24 * (vision.total + text.total) / gib:5.2f} GiB")


def live_during_iteration(graph_free: bool) -> tuple[float, float]:
    from reference import make_reference
    from transformers import AutoTokenizer

    from bench import benchmark_trainer, build_data
    from dreamprm.tiny import ensure_tiny

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"  # the benchmark's records: every instance has the same shape
        build_data(data, AutoTokenizer.from_pretrained(ensure_tiny()))
        trainer = benchmark_trainer("cpu", "tiny", data, Path(tmp) / "w", "table", 2)
        if not graph_free:  # only the darts passes differ: the PRM stays the production one
            make_reference(trainer.lower)
        counter, per_forward = SavedBytes(), []
        trainer.prm.register_forward_pre_hook(lambda *_: per_forward.append(counter.total))
        trainer.prm.register_forward_hook(lambda *_: per_forward.append(counter.total - per_forward.pop()))
        with counter.hooks():
            trainer.run()
    one_forward = per_forward[0]  # the first lower step
    return counter.peak / one_forward, one_forward


def main() -> int:
    full_size_layers()
    print("tiny model, Instance Table iterations: most saved activations alive at once,")
    print("in units of one lower forward's activations")
    for graph_free, name in ((False, "darts passes with a graph (reference)"), (True, "graph-free darts passes (ours)")):
        ratio, _ = live_during_iteration(graph_free)
        print(f"  {name:40s} {ratio:4.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
