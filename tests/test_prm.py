"""The PRM reads step probabilities at label positions only, equal to the full computation."""

import shutil

import pytest
import torch
from PIL import Image

from dreamprm.examples import ExampleBuilder, collate
from dreamprm.prompt import candidate_conversation


def _batch(prm, max_patch_num=6):
    builder = ExampleBuilder(prm.processor, max_patch_num)
    wide = Image.new("RGB", (150, 40), (200, 30, 30))
    tall = Image.new("RGB", (30, 120), (20, 30, 200))
    items = [
        builder.build(candidate_conversation("What colour?", ["It is red.", "Answer: red"]), wide),
        builder.build(candidate_conversation("Which colour is shown here?", ["Blue.", "Sure.", "Answer: blue"]), tall),
    ]
    return collate(items, prm.processor.tokenizer.pad_token_id)


def test_position_only_probabilities_equal_full_logits(tiny_prm):
    batch = _batch(tiny_prm)
    with torch.no_grad():
        out = tiny_prm(**batch.model_inputs())
        full = tiny_prm.full_logits(batch.input_ids, batch.attention_mask, batch.pixel_values).float()
    ref = full.log_softmax(-1)[batch.label_batch, batch.label_pos]
    assert out.log_p_plus.shape == (5,)
    torch.testing.assert_close(out.log_p_plus, ref[:, tiny_prm.plus_id], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.log_p_minus, ref[:, tiny_prm.minus_id], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logit_plus, full[batch.label_batch, batch.label_pos, tiny_prm.plus_id], atol=1e-5, rtol=0)
    assert out.batch_index.tolist() == [0, 0, 1, 1, 1]


def test_padding_does_not_change_a_candidates_scores(tiny_prm):
    batch = _batch(tiny_prm)
    builder = ExampleBuilder(tiny_prm.processor, 6)
    alone = collate([builder.build(candidate_conversation("What colour?", ["It is red.", "Answer: red"]),
                                   Image.new("RGB", (150, 40), (200, 30, 30)))], 0)
    with torch.no_grad():
        together = tiny_prm(**batch.model_inputs()).p_plus[:2]
        single = tiny_prm(**alone.model_inputs()).p_plus
    torch.testing.assert_close(together, single, atol=1e-5, rtol=0)


def test_image_tiles_follow_max_patch_num(tiny_prm):
    builder = ExampleBuilder(tiny_prm.processor, 6)
    # 150x40 at 6 tiles -> a 4x1 grid (closest ratio), plus a thumbnail
    assert builder.pixel_values(Image.new("RGB", (150, 40))).shape == (5, 3, 56, 56)
    builder.max_patch_num = 1
    assert builder.pixel_values(Image.new("RGB", (150, 40))).shape == (1, 3, 56, 56)


def test_reference_full_vocab_path_gives_the_same_outputs(tiny_prm):
    batch = _batch(tiny_prm)
    with torch.no_grad():
        fast = tiny_prm(**batch.model_inputs())
        tiny_prm.full_vocab_logits = True
        try:
            ref = tiny_prm(**batch.model_inputs())
        finally:
            tiny_prm.full_vocab_logits = False
    for name in ("logit_plus", "logit_minus", "log_p_plus", "log_p_minus"):
        torch.testing.assert_close(getattr(fast, name), getattr(ref, name), atol=1e-5, rtol=0)


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="inductor needs a C compiler on CPU")
def test_compiled_layers_give_the_eager_probabilities_and_gradients(tiny_dir):
    """--compile (regional torch.compile) changes kernels, not results: outputs and parameter
    gradients match eager to float tolerance, across two sequence lengths (dynamic shapes)."""
    from torch._dynamo.utils import counters

    from dreamprm.prm import ProcessRewardModel

    eager = ProcessRewardModel.from_pretrained(tiny_dir, precision="fp32")
    compiled = ProcessRewardModel.from_pretrained(tiny_dir, precision="fp32")
    compiled.compile_layers()
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints keep their names
    batch = _batch(eager)
    short = _batch(eager, max_patch_num=1)
    assert short.input_ids.shape[1] != batch.input_ids.shape[1]
    graphs_before = counters["stats"]["unique_graphs"]
    for b in (batch, short):
        outs = []
        for prm in (eager, compiled):
            prm.zero_grad()
            out = prm(**b.model_inputs())
            out.log_p_plus.sum().backward()
            outs.append((out.log_p_plus.detach(), {n: p.grad.clone() for n, p in prm.named_parameters()
                                                   if p.grad is not None}))
        (ref, ref_grads), (got, got_grads) = outs
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        assert ref_grads.keys() == got_grads.keys() and len(ref_grads) > 10
        for name in ref_grads:
            torch.testing.assert_close(got_grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    assert counters["stats"]["unique_graphs"] > graphs_before  # the layers really ran compiled


def test_step_probabilities_build_no_kv_cache(tiny_prm, monkeypatch):
    """Training and scoring forwards read every position once: no cache layer is ever updated."""
    from transformers import cache_utils

    updates = []
    original = cache_utils.DynamicLayer.update
    monkeypatch.setattr(cache_utils.DynamicLayer, "update", lambda self, *a, **k: (updates.append(1), original(self, *a, **k))[1])
    batch = _batch(tiny_prm)
    tiny_prm(**batch.model_inputs()).log_p_plus.sum().backward()
    assert updates == []
    tiny_prm.hidden_states(batch.input_ids, batch.attention_mask, batch.pixel_values, use_cache=True)
    assert len(updates) == tiny_prm.model.config.text_config.num_hidden_layers  # the opt-in still works
