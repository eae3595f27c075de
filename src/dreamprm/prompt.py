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
  ``<image>`` is inserted right after the template's first ``<|im_start|>user\\n`` (at the very
  end if there is none; a header spelled inside a message is text, not a header); then that
  single ``<image>`` becomes ``<img>`` + ``<IMG_CONTEXT>`` × (tokens per tile × tiles) +
  ``</img>`` -- with *no* newline after ``</img>`` (InternVL's own chat code adds one; upstream
  does not). With no image, ``<image>`` is plain text.
* Tokenisation. The template's own special tokens (``<|im_start|>``, ``<|im_end|>``, the image
  tokens) are placed as ids; the text between two of them (a role name and its message) is
  tokenised with special-token parsing off, so a message that spells ``<|im_start|>`` is
  ordinary text and can never open a fake turn or add a label. (A message holding the text of
  an image token is refused all the same: upstream would have read it as an image slot, so no
  checkpoint ever saw it as text.) For ordinary text these are upstream's ids exactly: a
  tokenizer splits off special tokens before anything else and tokenises each stretch between
  them on its own, so cutting at the template's special tokens changes nothing (checked once
  per tokenizer on a probe conversation, and against upstream's construction in
  tests/test_prompt.py).
* The logit at the last token of ``<|im_start|>assistant\\n`` (one position before the label
  token) predicts the label, so those are the only positions the PRM ever needs logits at.
  Upstream finds them by searching the ids for ``<|im_start|>assistant\\n`` + label +
  ``<|im_end|>\\n``; here each assistant turn is placed by construction, and the label must be a
  token of its own after ``assistant\\n`` (checked once per tokenizer), which makes the two agree.
  A message's text cannot hold that markup as tokens (see above), so it can never add a label.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from .records import IMAGE_PLACEHOLDER

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
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SEP = IM_END + "\n"
USER_HEAD = IM_START + "user\n"
ASSISTANT_HEAD = IM_START + "assistant\n"

# Kinds of prompt pieces: text (tokenised as ordinary text), one of the template's own special
# tokens (placed as its id), and the image slot.
_TEXT, _SPECIAL, _IMAGE = 0, 1, 2


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


def _layout(conversations: list[dict], with_image: bool) -> tuple[list[tuple[int, str]], list[int], list[int]]:
    """The prompt as pieces ``(kind, text)``, the index of each label's piece, and the labels.

    A label's piece is the text ``assistant\\n+`` (or ``-``) between ``<|im_start|>`` and
    ``<|im_end|>``; the label is its last character. With ``with_image`` the image slot is one
    ``_IMAGE`` piece, where upstream puts ``<image>`` (see the module docstring)."""
    turns = with_system_prompt(conversations)
    pieces: list[tuple[int, str]] = [(_SPECIAL, IM_START), (_TEXT, "system\n" + _value(turns[0])),
                                     (_SPECIAL, IM_END), (_TEXT, "\n")]
    label_pieces: list[int] = []
    labels: list[int] = []
    first_user = None
    for turn in turns[1:]:
        role = ROLES.get(turn.get("from"))
        if role is None:
            raise PromptError(f"unknown role {turn.get('from')!r}")
        if role == "system":
            raise PromptError("a system turn may only come first")
        value = _value(turn)
        if role == "assistant":
            if value not in LABELS:
                raise PromptError(f"assistant turns must be '+' or '-', got {value!r}")
            label_pieces.append(len(pieces) + 1)
            labels.append(1 if value == "+" else 0)
        elif first_user is None:
            first_user = len(pieces) + 1
        pieces += [(_SPECIAL, IM_START), (_TEXT, f"{role}\n{value}")]
        if value:  # MPT: an empty message is the bare role header
            pieces += [(_SPECIAL, IM_END), (_TEXT, "\n")]
    if not labels:
        raise PromptError("the conversation has no step (no assistant turn)")
    if with_image:
        hits = [i for i, (kind, text) in enumerate(pieces) if kind == _TEXT and IMAGE_PLACEHOLDER in text]
        count = sum(pieces[i][1].count(IMAGE_PLACEHOLDER) for i in hits)
        if count > 1:
            raise PromptError(f"the conversation holds {count} {IMAGE_PLACEHOLDER} placeholders for one image")
        if hits:
            at, text = hits[0], pieces[hits[0]][1]
            cut, removed = text.index(IMAGE_PLACEHOLDER), len(IMAGE_PLACEHOLDER)
        elif first_user is not None:
            at, text = first_user, pieces[first_user][1]
            cut, removed = len("user\n"), 0
        else:
            at = None
        if at is None:
            pieces.append((_IMAGE, ""))
        else:
            pieces[at : at + 1] = [(_TEXT, text[:cut]), (_IMAGE, ""), (_TEXT, text[cut + removed :])]
            label_pieces = [i + 2 if i > at else i for i in label_pieces]
    return pieces, label_pieces, labels


def render(conversations: list[dict], image_tag: str | None) -> tuple[str, list[int], list[int]]:
    """Upstream's prompt text of a conversation, the character offset of every label, and the labels.

    ``image_tag`` (the image's token text, or None for text-only) replaces the prompt's
    ``<image>`` if it has one, else goes right after the template's first ``<|im_start|>user\\n``.
    """
    pieces, label_pieces, labels = _layout(conversations, image_tag is not None)
    parts, offsets, length = [], [], 0
    label_set = set(label_pieces)
    for i, (kind, text) in enumerate(pieces):
        text = image_tag if kind == _IMAGE else text
        parts.append(text)
        length += len(text)
        if i in label_set:
            offsets.append(length - 1)
    return "".join(parts), offsets, labels


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


def _encode_texts(tokenizer, texts: list[str], ids: bool):
    """Ids (``ids``) or token counts of non-empty texts as ordinary text, in one batch: straight
    to a fast tokenizer's Rust backend when it holds no truncation or padding setting (the ids of
    ``tokenizer(texts, add_special_tokens=False, split_special_tokens=True)`` without its
    per-text Python cost), else through that call."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if (backend is not None and hasattr(backend, "encode_batch_fast")
            and backend.truncation is None and backend.padding is None):
        previous = backend.encode_special_tokens
        backend.encode_special_tokens = True
        try:
            encodings = backend.encode_batch_fast(texts, add_special_tokens=False)
        finally:
            backend.encode_special_tokens = previous
        return [e.ids if ids else len(e) for e in encodings]
    out = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return out if ids else [len(x) for x in out]


def tokenize_texts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text as ordinary text: special-token parsing off, no BOS/EOS added.

    Equal texts are tokenised once, all in one batch."""
    unique = list(dict.fromkeys(t for t in texts if t))
    ids_of: dict[str, list[int]] = {"": []}
    if unique:
        ids_of.update(zip(unique, _encode_texts(tokenizer, unique, ids=True)))
    return [ids_of[t] for t in texts]


@dataclass(frozen=True)
class _Markup:
    """What one tokenizer makes of the template: special-token ids, label pieces, image tokens."""

    special: dict  # the template's special token text -> id
    label_pieces: dict  # "assistant\n+" / "assistant\n-" -> ids (the label last)
    image_ids: tuple[int, int, int] | None  # <img>, <IMG_CONTEXT>, </img>
    image_texts: tuple[str, ...]  # their texts: refused inside a message


def _single_special_id(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise PromptError(f"{text} is not a single token in this tokenizer")
    return ids[0]


@lru_cache(maxsize=8)
def _markup(tokenizer) -> _Markup:
    """Read once per tokenizer; also proves that cutting the prompt at the template's special
    tokens gives the ids of tokenising it whole (upstream's way) on a probe conversation."""
    special = {IM_START: _single_special_id(tokenizer, IM_START), IM_END: _single_special_id(tokenizer, IM_END)}
    head = tokenize_texts(tokenizer, ["assistant\n"])[0]
    label_pieces = {}
    for label, label_id in zip(LABELS, label_token_ids(tokenizer)):
        ids = tokenize_texts(tokenizer, ["assistant\n" + label])[0]
        if ids != head + [label_id]:
            raise PromptError("a step label is not a single token in this tokenizer")
        label_pieces["assistant\n" + label] = ids
    names = ("start_image_token", "context_image_token", "end_image_token")
    texts = tuple(getattr(tokenizer, n, None) for n in names)
    image_ids = None
    if all(isinstance(t, str) and t for t in texts):
        image_ids = tuple(_single_special_id(tokenizer, t) for t in texts)
    else:
        texts = ()
    markup = _Markup(special, label_pieces, image_ids, texts)
    _check_piecewise(tokenizer, markup)
    return markup


_PROBE = [
    {"from": "system", "value": "s  \n"},
    {"from": "human", "value": "### Question:\n  Is <image>\n\nx² = 4?  "},
    {"from": "human", "value": "\n\n step one \n"},
    {"from": "gpt", "value": "+"},
    {"from": "human", "value": ""},
    {"from": "gpt", "value": "-"},
    {"from": "human", "value": " 中文 ∑ 😀\t"},
    {"from": "gpt", "value": "+"},
]


def _check_piecewise(tokenizer, markup: _Markup) -> None:
    n_img, tag = 0, None
    if markup.image_ids:
        start, ctx, end = markup.image_texts
        n_img, tag = 3, start + ctx * 3 + end
    whole = tokenizer(render(_PROBE, tag)[0], add_special_tokens=False)["input_ids"]
    if whole != _encode(tokenizer, markup, _PROBE, n_img).input_ids:
        raise PromptError(
            "this tokenizer does not tokenise the text between its special tokens on its own (a special "
            "token strips or merges its neighbours); prompts cut at the template's special tokens would "
            "not get upstream's ids"
        )


def _pieces(markup: _Markup, conversations: list[dict], num_image_tokens: int):
    """``_layout`` for this tokenizer, refusing what ``encode_conversation`` refuses."""
    if num_image_tokens > 0 and markup.image_ids is None:
        raise PromptError("this tokenizer has no image tokens (start/context/end_image_token)")
    pieces, label_pieces, labels = _layout(conversations, num_image_tokens > 0)
    texts = [text for kind, text in pieces if kind == _TEXT and text not in markup.label_pieces]
    for text in texts:
        for token in markup.image_texts:
            if token in text:
                raise PromptError(f"a turn's text holds the image token {token}")
    return pieces, label_pieces, labels, texts


def _encode(tokenizer, markup: _Markup, conversations: list[dict], num_image_tokens: int) -> EncodedConversation:
    pieces, label_pieces, labels, texts = _pieces(markup, conversations, num_image_tokens)
    ids_of = dict(zip(texts, tokenize_texts(tokenizer, texts)))
    ids_of.update(markup.label_pieces)
    ids: list[int] = []
    positions: list[int] = []
    label_set = set(label_pieces)
    for i, (kind, text) in enumerate(pieces):
        if kind == _TEXT:
            ids += ids_of[text]
            if i in label_set:
                positions.append(len(ids) - 2)  # the token before the label
        elif kind == _SPECIAL:
            ids.append(markup.special[text])
        else:
            start, ctx, end = markup.image_ids
            ids.append(start)
            ids += [ctx] * num_image_tokens
            ids.append(end)
    return EncodedConversation(input_ids=ids, label_positions=positions, labels=labels)


def encode_conversation(tokenizer, conversations: list[dict], num_image_tokens: int) -> EncodedConversation:
    """Tokenise a conversation, expand the image to ``num_image_tokens`` context tokens.

    The template's special tokens are placed as ids and every message is ordinary text (see the
    module docstring); a message holding the text of an image token is refused."""
    return _encode(tokenizer, _markup(tokenizer), conversations, num_image_tokens)


def encoded_lengths(tokenizer, conversations: Sequence[list[dict]], image_tokens: Sequence[int],
                    batch: int = 2048) -> list[int | PromptError]:
    """``len(encode_conversation(tokenizer, c, n).input_ids)`` for every ``(c, n)`` pair, fast.

    Texts are tokenised in large batches, each distinct text once (a system prompt shared by
    every record costs one tokenisation), and no id list is built. A conversation that
    ``encode_conversation`` would refuse gets its ``PromptError`` in place of a length."""
    markup = _markup(tokenizer)
    out: list[int | PromptError] = []
    for first in range(0, len(conversations), batch):
        rows: list[tuple[int, list[str]] | PromptError] = []  # (tokens known already, texts to count)
        for conv, n_img in zip(conversations[first : first + batch], image_tokens[first : first + batch]):
            try:
                pieces, _, _, texts = _pieces(markup, conv, n_img)
            except PromptError as exc:
                rows.append(exc)
                continue
            known = sum(1 if kind == _SPECIAL else n_img + 2 for kind, _ in pieces if kind != _TEXT)
            known += sum(len(markup.label_pieces[text]) for kind, text in pieces
                         if kind == _TEXT and text in markup.label_pieces)
            rows.append((known, texts))
        unique = list(dict.fromkeys(t for row in rows if not isinstance(row, PromptError) for t in row[1]))
        count_of = dict(zip(unique, _encode_texts(tokenizer, unique, ids=False))) if unique else {}
        out += [row if isinstance(row, PromptError) else row[0] + sum(count_of[t] for t in row[1]) for row in rows]
    return out
