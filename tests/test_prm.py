"""The PRM reads step probabilities at label positions only, equal to the full computation."""

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
