r"""Split a free-text candidate solution into the steps the PRM scores.

Two splitters are available (``SPLITTERS``); :func:`split_steps` uses ``"upstream"`` unless
told otherwise.

``"upstream"`` (the default)
----------------------------
The split of the reference implementation (``utils.py`` of coder-qicao/DreamPRM-1.5),
reproduced with all its quirks. Upstream's best-of-N evaluation of the released checkpoints
splits candidates this way, and its published meta file (``data/meta_MMMU_Pro.json``) is
exactly this split of each record's ``response``; use it to score with those checkpoints or to
build data that must match upstream's.

1. **Body and answer.** The body is the text between the first ``[Reasoning]`` (case-sensitive)
   and the first following ``Answer:``, minus one line break right before it (pattern
   ``\[Reasoning\](.*?)(?=\n?Answer:)``). Without ``[Reasoning]``, or without an ``Answer:``
   after it, the body is the *whole* candidate, ``[Reasoning]`` and ``Answer: X`` included.
   The answer is everything after the *first* ``Answer:`` anywhere in the candidate, trimmed
   at both ends only (inner line breaks are kept). Only ``Answer:`` exactly (case-sensitive,
   ASCII colon) counts.
2. **Line-leading markers** (``TOP_STEP_PAT``): ``Step N`` / ``步骤N`` with an optional
   ``:``, ``：`` or ``.`` (case-insensitive), ``N.``, ``N、``, ``N)`` (any number of digits,
   Unicode digits too, and ``3.5`` reads as the marker ``3.``), or a circled number ①-⑳.
   When at least two lines of the trimmed body (``str.splitlines``) carry one, the body is
   cut into pieces at marked lines that are the first line or follow a blank line; any other
   line, marked or not, continues the current piece (so a blank line followed by an unmarked
   line does not cut). Text before the first such marker is a piece of its own.
3. **Blank lines.** Otherwise the body is cut at blank lines (``BLANK_BLOCK_SPLIT``) when that
   gives at least two non-blank blocks; else the body is one piece.
4. **Inline markers** (``INLINE_STEP_PAT``): every piece is cut again in front of each marker
   of the same kinds that starts the piece or follows a whitespace character (a line break
   too) and is itself followed by whitespace. A single marker is enough and numbers need not
   be consecutive, so ``= 378 / (378 + 2) = 378 / 380`` cuts at `` 2) ``, ``380 / 380. Then``
   at `` 380. `` and ``in step 2 we`` at `` step 2 ``.
5. Every part loses one leading marker (twice in effect: ``1. 2.5 apples`` becomes
   ``5 apples``), is trimmed, and empty parts are dropped; when nothing is left the body
   gives one empty step ``""``.
6. **Answer step.** ``Answer: X`` is appended when the answer is non-empty.

Because of 1, a candidate with an ``Answer:`` but no ``[Reasoning]`` carries its answer twice
(inside the body step and as the answer step), and because of 5 the result is never empty but may hold an
empty step, e.g. ``"[Reasoning]\nAnswer: B"`` gives ``["", "Answer: B"]``: callers must accept
an empty step string. ``"\r\n"`` line ends are normalised only inside pieces cut by rule 2;
pieces cut by rule 3 keep them.

``"clean"``
-----------
This repository's own rules, meant for building new data where ordinary
sentences such as ``x = 2. Then`` or ``we get 3) and then 1)`` must not be cut:

1. The body starts after the first ``[Reasoning]`` (case-insensitive; without one it is the
   whole text) and ends at the *last* ``Answer:`` after that point (``Answer：`` accepted too);
   the answer is the text after that marker with its whitespace collapsed. The answer text
   is therefore never part of a body step, with or without ``[Reasoning]``.
2. Line-leading markers are ``Step N:`` / ``Step N.`` (punctuation required; no ``步骤``),
   ``N.`` / ``N)`` / ``N、`` with at most two digits (``N.`` not followed by a digit, so
   ``3.5`` is no marker), full-width ``：``, ``．``, ``）`` included, and ①-⑳. When at least
   two lines carry one, *every* marked line starts a piece, blank line before it or not.
3. Otherwise the body is cut at blank lines.
4. Inline cuts happen only at ``N)`` / ``N）`` that starts a piece or follows whitespace and
   at circled numbers, and only when a piece holds at least two of them numbered
   consecutively (``1) ... 2) ...``); a mid-line ``N.`` never cuts.
5. Markers are removed only where they cut (a lone ``1. a`` paragraph keeps its ``1.``, and
   ``3.5`` is never eaten); pieces are trimmed and empty ones dropped, so the result may be
   empty (``""`` gives ``[]``) but never holds an empty step. ``"\r\n"`` becomes ``"\n"``.
6. ``Answer: X`` is appended when X is non-empty.

``extract_answer`` (used for self-consistency voting) follows the ``clean`` rules whatever
splitter scores the steps: the text after the last ``Answer:`` with one trailing ``.`` or
``。`` removed, or None when there is no (non-empty) answer.
"""

from __future__ import annotations

import re

SPLITTERS = ("upstream", "clean")

# ----------------------------------------------------------------------------------------------
# "upstream": the reference implementation's split (utils.py of coder-qicao/DreamPRM-1.5)
# ----------------------------------------------------------------------------------------------
# The three patterns below are kept identical to the reference, flags included, so that the
# released checkpoints see steps cut exactly as during their training and evaluation.

# A step marker at the start of a line (also used to strip a marker off a piece).
TOP_STEP_PAT = re.compile(
    r"^\s*(?:"
    r"(?:Step|步骤)\s*\d+\s*[:：\.]?|"
    r"\d+\s*[\.、\)]|"
    r"[①-⑳]"
    r")\s*",
    re.IGNORECASE
)

# A step marker inside a piece: at its very start or after one whitespace character (which the
# match includes), and followed by at least one whitespace character.
INLINE_STEP_PAT = re.compile(
    r"(?:^|\s)(?:(?:Step|步骤)\s*\d+\s*[:：\.]?|\d+\s*[\.、\)]|[①-⑳])\s+",
    re.IGNORECASE
)

# A run of whitespace that holds at least two line breaks, i.e. at least one blank line.
BLANK_BLOCK_SPLIT = re.compile(r"(?:\r?\n\s*){2,}")

# How the reference cuts a candidate into its reasoning body and its answer.
_UPSTREAM_BODY = re.compile(r"\[Reasoning\](.*?)(?=\n?Answer:)", re.S)
_UPSTREAM_ANSWER = re.compile(r"Answer:\s*(.*)", re.S)


def _drop_marker(piece: str) -> str:
    """``piece`` without one leading step marker (if any), trimmed."""
    return TOP_STEP_PAT.sub("", piece, count=1).strip()


def _group_marked_lines(lines: list[str]) -> list[str]:
    """Group lines into pieces; a marked line opens a piece only at the top or after a blank line."""
    groups: list[list[str]] = []
    for i, line in enumerate(lines):
        opens = TOP_STEP_PAT.match(line) is not None and (i == 0 or not lines[i - 1].strip())
        if opens:
            groups.append([_drop_marker(line)])
        elif groups:
            groups[-1].append(line.rstrip())
        else:  # text before the first opening marker
            groups.append([line.rstrip()])
    texts = ["\n".join(g).rstrip() for g in groups]
    return [t for t in texts if t.strip()]


def _cut_at_inline_markers(piece: str) -> list[str]:
    """Cut ``piece`` in front of every inline marker; markers stripped, empty parts dropped.

    When every part comes out empty, the whole trimmed piece is returned as the only part,
    markers and all, as the reference does (the caller strips one leading marker off it again).
    """
    whole = piece.strip()
    cuts = [m.start() for m in INLINE_STEP_PAT.finditer(piece)]
    if not cuts:
        return [whole] if whole else []
    if cuts[0] != 0:
        cuts.insert(0, 0)
    parts = []
    for start, end in zip(cuts, cuts[1:] + [len(piece)]):
        part = piece[start:end].strip()
        if part:
            part = _drop_marker(part)
        if part:
            parts.append(part)
    if parts:
        return parts
    return [whole] if whole else []


def split_reasoning_block(block: str) -> list[str]:
    """Upstream's split of a reasoning body into steps; ``[""]`` when no step is left.

    See the module docstring, "upstream" splitter, rules 2-5.
    """
    block = (block or "").strip()
    if not block:
        return [""]
    lines = block.splitlines()
    if sum(TOP_STEP_PAT.match(line) is not None for line in lines) >= 2:
        pieces = _group_marked_lines(lines)
    else:
        blocks = [b for b in BLANK_BLOCK_SPLIT.split(block) if b.strip()]
        pieces = blocks if len(blocks) >= 2 else [block]
    steps = []
    for piece in pieces:
        for part in _cut_at_inline_markers(piece):
            part = _drop_marker(part)  # a second time: "1. 2.5" loses "1. " and then "2."
            if part:
                steps.append(part)
    return steps or [""]


def _upstream_body(candidate: str) -> str | None:
    """What ``_UPSTREAM_BODY.search(candidate).group(1)`` returns (None: no match), in linear time.

    The regex retries from every ``[Reasoning]`` when no ``Answer:`` follows, which is quadratic
    (1 MB of ``[Reasoning] x`` never finishes). But if no ``Answer:`` follows the first
    ``[Reasoning]``, none follows a later one either, so the first one decides; the lazy body then
    ends at the first ``Answer:``, one character earlier when a newline precedes it."""
    start = candidate.find("[Reasoning]")
    if start < 0:
        return None
    start += len("[Reasoning]")
    end = candidate.find("Answer:", start)
    if end < 0:
        return None
    if end - 1 >= start and candidate[end - 1] == "\n":
        end -= 1
    return candidate[start:end]


def _split_upstream(candidate: str) -> list[str]:
    """The "upstream" splitter: rules 1 and 6 around :func:`split_reasoning_block`."""
    body = _upstream_body(candidate)
    if body is None:
        body = candidate
    found = _UPSTREAM_ANSWER.search(candidate)
    answer = found.group(1).strip() if found else ""
    steps = split_reasoning_block(body)
    if answer:
        steps.append(f"Answer: {answer}")
    return steps


# ----------------------------------------------------------------------------------------------
# "clean": this repository's own rules
# ----------------------------------------------------------------------------------------------
_REASONING = re.compile(r"\[reasoning\]", re.IGNORECASE)
_ANSWER = re.compile(r"Answer[:：]")

_CIRCLED = "①②③④⑤⑥⑦⑧⑨⑩⑪⑫⑬⑭⑮⑯⑰⑱⑲⑳"

# One line-leading marker; the rest of the line is group "rest".
_LINE_MARKER = re.compile(
    r"^[ \t]*(?:"
    r"step[ \t]*\d{1,3}[ \t]*[:.：．]"
    r"|\d{1,2}[.．](?!\d)"
    r"|\d{1,2}[)）、]"
    rf"|[{_CIRCLED}]"
    r")(?P<rest>.*)$",
    re.IGNORECASE,
)

# Inline enumeration markers: "N)" after whitespace/start, or a circled number.
_INLINE_MARKER = re.compile(rf"(?:(?<!\S)(?P<num>\d{{1,2}})[)）]|(?P<circ>[{_CIRCLED}]))")

_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def _body_and_answer(candidate: str) -> tuple[str, str | None]:
    """Return the reasoning body and the raw answer text (None without a marker)."""
    candidate = candidate.replace("\r\n", "\n")
    start = _REASONING.search(candidate)
    text = candidate[start.end():] if start else candidate
    answers = list(_ANSWER.finditer(text))
    if not answers:
        return text, None
    last = answers[-1]
    return text[: last.start()], " ".join(text[last.end():].split())


def _split_marked_lines(body: str) -> list[str] | None:
    """Split on line-leading markers, or None when fewer than two lines carry one."""
    lines = body.split("\n")
    matches = [_LINE_MARKER.match(line) for line in lines]
    if sum(m is not None for m in matches) < 2:
        return None
    pieces: list[list[str]] = [[]]
    for line, m in zip(lines, matches):
        if m is not None:
            pieces.append([m.group("rest")])
        else:
            pieces[-1].append(line)
    return ["\n".join(p) for p in pieces]


def _marker_value(m: re.Match) -> int:
    if m.group("num") is not None:
        return int(m.group("num"))
    return _CIRCLED.index(m.group("circ")) + 1


def _split_inline(piece: str) -> list[str]:
    """Split on inline ``1) ... 2) ...`` enumerations when consecutively numbered."""
    marks = list(_INLINE_MARKER.finditer(piece))
    values = [_marker_value(m) for m in marks]
    consecutive = all(b == a + 1 for a, b in zip(values, values[1:]))
    if len(marks) < 2 or not consecutive:
        return [piece]
    cuts = [0] + [p for m in marks for p in (m.start(), m.end())] + [len(piece)]
    return [piece[a:b] for a, b in zip(cuts[::2], cuts[1::2])]


def _split_clean(candidate: str) -> list[str]:
    """The "clean" splitter (see the module docstring)."""
    body, answer = _body_and_answer(candidate)
    pieces = _split_marked_lines(body)
    if pieces is None:
        pieces = _BLANK_LINE.split(body)
    steps = [s.strip() for p in pieces for s in _split_inline(p)]
    steps = [s for s in steps if s]
    if answer:
        steps.append(f"Answer: {answer}")
    return steps


_SPLIT = {"upstream": _split_upstream, "clean": _split_clean}


def split_steps(candidate: str, splitter: str = "upstream") -> list[str]:
    """The candidate's steps, an ``Answer: X`` step last when it has an answer.

    ``splitter`` is one of :data:`SPLITTERS` (see the module docstring). ``"upstream"`` always
    returns at least one step, which may be the empty string; ``"clean"`` never returns an
    empty step but may return no step at all.
    """
    try:
        split = _SPLIT[splitter]
    except (KeyError, TypeError):
        raise ValueError(f"unknown step splitter {splitter!r}; choose one of {', '.join(SPLITTERS)}") from None
    return split(candidate)


def extract_answer(candidate: str) -> str | None:
    """Final answer for voting: text after the last ``Answer:``, trailing period removed."""
    _, answer = _body_and_answer(candidate)
    if answer and answer[-1] in ".。":
        answer = answer[:-1].rstrip()
    return answer or None
