"""Split a free-text candidate solution into the steps the PRM scores.

Rules (DESIGN §3), applied in this order:

1. **Body and answer.** The body starts after the first ``[Reasoning]`` (matched
   case-insensitively; without one the body is the whole text). The answer marker is the
   *last* ``Answer:`` after that point; the full-width colon ``Answer：`` is accepted too
   (``Answer`` itself is case-sensitive, so prose such as "the answer: ..." is not taken
   for it). The body ends at the answer marker; with no marker it runs to the end.
2. **Line-leading markers.** A line whose first non-blank text is ``Step N:`` / ``Step N.``
   (case-insensitive), ``N.``, ``N)``, ``N、`` or a circled number ①–⑳ carries a marker
   (full-width ``：``, ``．``, ``）`` count as their ASCII twins; bare numbers have at most
   two digits and ``N.`` must not be followed by a digit, so ``3.5 is ...`` is no marker).
   When at least two lines carry one, each marker starts a new piece and unmarked lines
   continue the current one; text before the first marker (a preamble) is a piece of its
   own. A single marked line does not trigger this rule.
3. **Blank lines.** Otherwise the body is split into paragraphs on blank lines.
4. **Inline enumerations.** Each piece is split again on inline markers ``N)`` (preceded by
   whitespace or the start of the piece) and circled numbers, but only when the piece holds
   at least two of them numbered consecutively (``1) ... 2) ...``); mid-line ``N.`` never
   splits, so ``x = 2. Then`` and ``3.5`` stay whole.
5. Markers are stripped, every piece is trimmed, empty pieces are dropped.
6. **Answer step.** ``Answer: X`` (X trimmed, inner whitespace collapsed) is appended as the
   last step when X is non-empty.

``extract_answer`` returns that X with one trailing ``.`` or ``。`` removed (for
self-consistency voting), or None when there is no (non-empty) answer.
"""

from __future__ import annotations

import re

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


def split_steps(candidate: str) -> list[str]:
    """Return the candidate's steps, the ``Answer: X`` step last (see module docstring)."""
    body, answer = _body_and_answer(candidate)
    pieces = _split_marked_lines(body)
    if pieces is None:
        pieces = _BLANK_LINE.split(body)
    steps = [s.strip() for p in pieces for s in _split_inline(p)]
    steps = [s for s in steps if s]
    if answer:
        steps.append(f"Answer: {answer}")
    return steps


def extract_answer(candidate: str) -> str | None:
    """Final answer for voting: text after the last ``Answer:``, trailing period removed."""
    _, answer = _body_and_answer(candidate)
    if answer and answer[-1] in ".。":
        answer = answer[:-1].rstrip()
    return answer or None
