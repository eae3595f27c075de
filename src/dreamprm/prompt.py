"""The PRM conversation: ChatML rendering, image placeholder, and the label positions.

A PRM conversation is (DESIGN §2): system = the PRM system prompt; user = ``### Question:\\n{q}``;
then per step: user = step text, assistant = ``+`` or ``-``. Rendered in InternVL's
``internvl2_5`` (ChatML) template, each message ``<|im_start|>{role}\\n{text}<|im_end|>\\n``.
The image goes right after the first ``<|im_start|>user\\n`` as ``<img>`` + ``<IMG_CONTEXT>`` ×
(tokens per tile × tiles) + ``</img>``, followed by a newline as InternVL's own chat code does.

The logit at the last token of ``<|im_start|>assistant\\n`` (one position before the label
token) predicts the label, so those are the only positions the PRM ever needs logits at.
"""

from __future__ import annotations

from dataclasses import dataclass

SYSTEM_PROMPT = """You are an advanced AI assistant, designed to serve as a process supervision model. In this task, I will provide a problem statement followed by the first step of the solution process. For each subsequent turn, I will give you a new step in the solution. Your role is to assess whether the solution process is correct up to the current step.

- In the **first round**, I will input the problem and the first step of the solution process.
- In **each subsequent round**, I will provide the next step in the solution.

For each step, you should:
- Respond with **"+"** if you believe the solution process is correct up to this step.
- Respond with **"-"** if you detect any issues or errors in the process up to this step.

Please note:
- Only respond with **"+"** or **"-"**. Do not provide any additional explanations, comments, or justifications.

Your task is to verify the accuracy and correctness of each step in the given solution process."""

ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
LABELS = ("+", "-")
IMAGE_PLACEHOLDER = "<image>"


class PromptError(ValueError):
    """A conversation that cannot be turned into PRM inputs."""


@dataclass
class EncodedConversation:
    """Token ids of one conversation and where its step labels are predicted."""

    input_ids: list[int]
    label_positions: list[int]  # index of the token whose logits predict each step label
    labels: list[int]  # 1 for "+", 0 for "-", one per step (placeholders count as "+")


def question_turn(question: str) -> str:
    return f"### Question:\n{question}"


def candidate_conversation(question: str, steps: list[str]) -> list[dict]:
    """The conversation that scores ``steps`` of one candidate: every step gets a ``+`` placeholder."""
    turns = [{"from": "human", "value": question_turn(question)}]
    for step in steps:
        turns.append({"from": "human", "value": step})
        turns.append({"from": "gpt", "value": "+"})
    return turns


def with_system_prompt(conversations: list[dict]) -> list[dict]:
    """Prepend the PRM system prompt unless the conversation carries its own system turn."""
    if conversations and conversations[0].get("from") == "system":
        return conversations
    return [{"from": "system", "value": SYSTEM_PROMPT}] + list(conversations)


def render(conversations: list[dict], image_tag: str | None) -> tuple[str, list[int], list[int]]:
    """ChatML text of a conversation, the character offset of every label, and the labels.

    ``image_tag`` (a single placeholder token, or None for text-only) is put right after the
    first ``<|im_start|>user\\n`` unless that turn already holds ``<image>``, which it replaces.
    """
    parts: list[str] = []
    length = 0
    label_offsets: list[int] = []
    labels: list[int] = []
    image_done = image_tag is None
    for turn in with_system_prompt(conversations):
        role = ROLES.get(turn.get("from"))
        if role is None:
            raise PromptError(f"unknown role {turn.get('from')!r}")
        text = turn["value"]
        if role == "user" and not image_done:
            text = text.replace(IMAGE_PLACEHOLDER, image_tag, 1) if IMAGE_PLACEHOLDER in text else f"{image_tag}\n{text}"
            image_done = True
        head = f"<|im_start|>{role}\n"
        if role == "assistant":
            if text not in LABELS:
                raise PromptError(f"assistant turns must be '+' or '-', got {text!r}")
            label_offsets.append(length + len(head))
            labels.append(1 if text == "+" else 0)
        piece = f"{head}{text}<|im_end|>\n"
        parts.append(piece)
        length += len(piece)
    if not labels:
        raise PromptError("the conversation has no step (no assistant turn)")
    return "".join(parts), label_offsets, labels


def label_token_ids(tokenizer) -> tuple[int, int]:
    """Ids of the ``+`` and ``-`` tokens, read from the tokenizer (never hard-coded)."""
    ids = []
    for label in LABELS:
        enc = tokenizer.encode(label, add_special_tokens=False)
        if len(enc) != 1:
            raise PromptError(f"the tokenizer splits {label!r} into {len(enc)} tokens; a PRM needs one")
        ids.append(enc[0])
    return ids[0], ids[1]


def encode_conversation(tokenizer, conversations: list[dict], num_image_tokens: int) -> EncodedConversation:
    """Tokenise a conversation, expand the image to ``num_image_tokens`` context tokens.

    The text is tokenised as one string (so ids match what a chat template would give) and
    each label is located through the character offsets; the label must be a token of its own.
    """
    image_tag = None
    if num_image_tokens > 0:
        image_tag = f"{tokenizer.start_image_token}{tokenizer.context_image_token}{tokenizer.end_image_token}"
    text, label_offsets, labels = render(conversations, image_tag)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    start_of = {start: i for i, (start, end) in enumerate(offsets) if end > start}
    positions = []
    for char_offset in label_offsets:
        tok = start_of.get(char_offset)
        if tok is None or offsets[tok][1] != char_offset + 1:
            raise PromptError("a step label is not a single token in this tokenizer")
        positions.append(tok - 1)
    if image_tag is not None:
        ctx = tokenizer.context_image_token_id
        at = ids.index(ctx)
        ids = ids[:at] + [ctx] * num_image_tokens + ids[at + 1 :]
        positions = [p + num_image_tokens - 1 if p > at else p for p in positions]
    return EncodedConversation(input_ids=ids, label_positions=positions, labels=labels)
