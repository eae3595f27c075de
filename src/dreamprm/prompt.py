"""The PRM conversation: upstream's exact prompt text, image placeholder, and label positions.

A PRM conversation is: system = the PRM system prompt; user = ``### Question:\\n{q}``;
then per step: user = step text, assistant = ``+`` or ``-``. Every id here must be the one
upstream DreamPRM-1.5 (``utils.py``: the ``internvl2_5`` conversation template,
``input_processing``, ``find_placeholder_idx``) feeds its model, because the released
checkpoints were trained and evaluated on exactly those tokens; a single shifted token changes
what every later position sees. So, following upstream:

* Rendering is the template's ``SeparatorStyle.MPT``: ``<|im_start|>system\\n{system}<|im_end|>\\n``,
  then for each turn ``{role header}{text}<|im_end|>\\n`` with the headers
  ``<|im_start|>user\\n`` / ``<|im_start|>assistant\\n`` -- except that an *empty* message is
  the bare role header with no ``<|im_end|>\\n`` (MPT: ``role + message + sep if message else
  role``). Text is used verbatim (no stripping); only ``candidate_conversation`` strips the
  question, as upstream's ``build_conversations`` does. With no system turn this project uses
  ``SYSTEM_PROMPT`` (upstream's test-time prompt, not its template's default).
* The image: unless ``<image>`` occurs anywhere in the rendered prompt (system text included),
  ``<image>`` is inserted right after the first ``<|im_start|>user\\n`` (at the very end if
  there is none); then that single ``<image>`` becomes ``<img>`` + ``<IMG_CONTEXT>`` ×
  (tokens per tile × tiles) + ``</img>`` -- with *no* newline after ``</img>`` (InternVL's own
  chat code adds one; upstream does not). With no image, ``<image>`` is plain text.
* The whole prompt is tokenised as one string. It is tokenised with one ``<IMG_CONTEXT>`` that is
  then repeated: image tokens are special tokens, split off before BPE, so this gives the ids
  of the fully expanded text (tests/test_prompt.py checks it against upstream's construction).
* The logit at the last token of ``<|im_start|>assistant\\n`` (one position before the label
  token) predicts the label, so those are the only positions the PRM ever needs logits at.
  Upstream finds them by searching the ids for ``<|im_start|>assistant\\n`` + label +
  ``<|im_end|>\\n``; we locate each assistant turn by character offsets and also run that
  search, refusing a conversation where the two disagree (a step text holding that markup).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .data import IMAGE_PLACEHOLDER

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
SEP = "<|im_end|>\n"
USER_HEAD = "<|im_start|>user\n"
ASSISTANT_HEAD = "<|im_start|>assistant\n"


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
    """The conversation that scores ``steps`` of one candidate: every step gets a ``+`` placeholder.

    The question is stripped, as upstream's test-time ``build_conversations`` does; steps are not.
    """
    turns = [{"from": "human", "value": question_turn(question.strip())}]
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
    """Upstream's prompt text of a conversation, the character offset of every label, and the labels.

    ``image_tag`` (the image's token text, or None for text-only) replaces the prompt's
    ``<image>`` if it has one, else goes right after the first ``<|im_start|>user\\n``.
    """
    turns = with_system_prompt(conversations)
    text = f"<|im_start|>system\n{_value(turns[0])}{SEP}"
    label_offsets: list[int] = []
    labels: list[int] = []
    for turn in turns[1:]:
        role = ROLES.get(turn.get("from"))
        if role is None:
            raise PromptError(f"unknown role {turn.get('from')!r}")
        if role == "system":
            raise PromptError("a system turn may only come first")
        value = _value(turn)
        head = f"<|im_start|>{role}\n"
        if role == "assistant":
            if value not in LABELS:
                raise PromptError(f"assistant turns must be '+' or '-', got {value!r}")
            label_offsets.append(len(text) + len(head))
            labels.append(1 if value == "+" else 0)
        text += f"{head}{value}{SEP}" if value else head
    if not labels:
        raise PromptError("the conversation has no step (no assistant turn)")
    if image_tag is not None:
        count = text.count(IMAGE_PLACEHOLDER)
        if count > 1:
            raise PromptError(f"the conversation holds {count} {IMAGE_PLACEHOLDER} placeholders for one image")
        if count == 1:
            at, removed = text.index(IMAGE_PLACEHOLDER), len(IMAGE_PLACEHOLDER)
        else:
            head = text.find(USER_HEAD)
            at, removed = (len(text) if head < 0 else head + len(USER_HEAD)), 0
        text = text[:at] + image_tag + text[at + removed :]
        shift = len(image_tag) - removed
        label_offsets = [o + shift if o >= at else o for o in label_offsets]
    return text, label_offsets, labels


def _value(turn: dict) -> str:
    value = turn.get("value")
    if value is None:  # upstream's MPT renders a missing message like an empty one
        return ""
    if not isinstance(value, str):
        raise PromptError(f"a turn's value must be a string, got {type(value).__name__}")
    return value


def label_token_ids(tokenizer) -> tuple[int, int]:
    """Ids of the ``+`` and ``-`` tokens, read from the tokenizer (never hard-coded)."""
    ids = []
    for label in LABELS:
        enc = tokenizer.encode(label, add_special_tokens=False)
        if len(enc) != 1:
            raise PromptError(f"the tokenizer splits {label!r} into {len(enc)} tokens; a PRM needs one")
        ids.append(enc[0])
    return ids[0], ids[1]


@lru_cache(maxsize=8)
def _label_markup(tokenizer) -> tuple[int, tuple[tuple[str, list[int]], ...]]:
    """Token count of the assistant header, and the ids of a whole label turn per label
    (tokenised once per tokenizer, not once per conversation)."""
    head = tokenizer(ASSISTANT_HEAD, add_special_tokens=False)["input_ids"]
    patterns = tuple((label, tokenizer(ASSISTANT_HEAD + label + SEP, add_special_tokens=False)["input_ids"])
                     for label in LABELS)
    return len(head), patterns


def _upstream_label_search(tokenizer, ids: list[int]) -> tuple[list[int], list[int]]:
    """Upstream's ``find_placeholder_idx`` for ``+`` and ``-``: (positions, labels) in order."""
    head_len, patterns = _label_markup(tokenizer)
    found: dict[int, int] = {}
    for label, pattern in patterns:
        n = len(pattern)
        for i, tok in enumerate(ids):
            if tok == pattern[0] and ids[i : i + n] == pattern:
                found[i + head_len - 1] = 1 if label == "+" else 0
    positions = sorted(found)
    return positions, [found[p] for p in positions]


def encode_conversation(tokenizer, conversations: list[dict], num_image_tokens: int) -> EncodedConversation:
    """Tokenise a conversation, expand the image to ``num_image_tokens`` context tokens.

    The text is tokenised as one string (as upstream does) and each label is located through
    the character offsets; the label must be a token of its own, and the positions must be
    the ones upstream's token search finds.
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
    if _upstream_label_search(tokenizer, ids) != (positions, labels):
        raise PromptError(
            "a turn's text holds the markup of a label turn (<|im_start|>assistant\\n+/-<|im_end|>); "
            "upstream's label search would read it as a step"
        )
    ctx = tokenizer.context_image_token_id
    if ids.count(ctx) != int(image_tag is not None):
        raise PromptError(f"a turn's text holds the image token {tokenizer.context_image_token}")
    if image_tag is not None:
        at = ids.index(ctx)
        ids = ids[:at] + [ctx] * num_image_tokens + ids[at + 1 :]
        positions = [p + num_image_tokens - 1 if p > at else p for p in positions]
    return EncodedConversation(input_ids=ids, label_positions=positions, labels=labels)
