"""The PRM conversation: ChatML text, image placement and label positions (DESIGN §2)."""

import pytest

from dreamprm.prompt import (
    SYSTEM_PROMPT,
    PromptError,
    candidate_conversation,
    encode_conversation,
    label_token_ids,
    render,
)


def test_render_chatml_with_default_system_prompt_and_image_after_first_user_header():
    conv = candidate_conversation("What colour?", ["It is red.", "Answer: red"])
    text, offsets, labels = render(conv, "<IMG>")
    expected = (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
        "<|im_start|>user\n<IMG>\n### Question:\nWhat colour?<|im_end|>\n"
        "<|im_start|>user\nIt is red.<|im_end|>\n"
        "<|im_start|>assistant\n+<|im_end|>\n"
        "<|im_start|>user\nAnswer: red<|im_end|>\n"
        "<|im_start|>assistant\n+<|im_end|>\n"
    )
    assert text == expected
    assert labels == [1, 1]
    assert [text[o] for o in offsets] == ["+", "+"]
    assert all(text[o - len("<|im_start|>assistant\n") : o] == "<|im_start|>assistant\n" for o in offsets)


def test_own_system_turn_is_kept_and_image_placeholder_is_replaced():
    conv = [
        {"from": "system", "value": "custom"},
        {"from": "human", "value": "look <image> here"},
        {"from": "gpt", "value": "-"},
    ]
    text, _, labels = render(conv, "<IMG>")
    assert text.startswith("<|im_start|>system\ncustom<|im_end|>\n<|im_start|>user\nlook <IMG> here")
    assert labels == [0]


@pytest.mark.parametrize(
    "conv, message",
    [
        ([{"from": "human", "value": "q"}], "no step"),
        ([{"from": "human", "value": "q"}, {"from": "gpt", "value": "yes"}], r"must be '\+' or '-'"),
        ([{"from": "robot", "value": "q"}], "unknown role"),
    ],
)
def test_bad_conversations_raise_prompt_error(conv, message):
    with pytest.raises(PromptError, match=message):
        render(conv, None)


def test_label_positions_point_at_the_token_before_each_label(tiny_prm):
    tok = tiny_prm.processor.tokenizer
    plus, minus = label_token_ids(tok)
    conv = [{"from": "human", "value": "### Question:\nq"}]
    for step, label in [("one", "+"), ("two 3.5", "-"), ("three", "+")]:
        conv += [{"from": "human", "value": step}, {"from": "gpt", "value": label}]
    enc = encode_conversation(tok, conv, num_image_tokens=12)
    ids = enc.input_ids
    assert enc.labels == [1, 0, 1]
    assert [ids[p + 1] for p in enc.label_positions] == [plus, minus, plus]
    assert all(tok.decode(ids[p - 1 : p + 1]).endswith("assistant\n") for p in enc.label_positions)
    assert ids.count(tok.context_image_token_id) == 12
    start = ids.index(tok.start_image_token_id)
    assert ids[start + 13] == tok.end_image_token_id
