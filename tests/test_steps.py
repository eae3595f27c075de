"""Step splitting and answer extraction.

* ``upstream`` (the default): one test per quirk of the reference split, then a comparison
  with an independent transcription of the reference algorithm (``_oracle_split`` below) on
  thousands of seeded random candidates.
* ``clean``: tricky candidates, every case checking the full list.
"""

from __future__ import annotations

import random
import re

import pytest

from dreamprm import steps as steps_mod
from dreamprm.steps import SPLITTERS, extract_answer, split_reasoning_block, split_steps


def up(text):
    return split_steps(text, "upstream")


# ----------------------------------------------------------------------------------------------
# API
# ----------------------------------------------------------------------------------------------
def test_splitters_and_default():
    assert SPLITTERS == ("upstream", "clean")
    text = "[Reasoning]\nWe have x = 2. Then y = 3\nAnswer: 3"
    assert split_steps(text) == split_steps(text, "upstream") == ["We have x =", "Then y = 3", "Answer: 3"]
    assert split_steps(text, "clean") == ["We have x = 2. Then y = 3", "Answer: 3"]


@pytest.mark.parametrize("bad", ["Upstream", "", "visualprm", None])
def test_unknown_splitter(bad):
    with pytest.raises(ValueError, match=r"upstream, clean"):
        split_steps("Answer: A", bad)


def test_reference_patterns_verbatim():
    """The three patterns must stay identical to the reference, flags included."""
    assert steps_mod.TOP_STEP_PAT.pattern == (
        r"^\s*(?:(?:Step|步骤)\s*\d+\s*[:：\.]?|\d+\s*[\.、\)]|[①-⑳])\s*")
    assert steps_mod.INLINE_STEP_PAT.pattern == (
        r"(?:^|\s)(?:(?:Step|步骤)\s*\d+\s*[:：\.]?|\d+\s*[\.、\)]|[①-⑳])\s+")
    assert steps_mod.BLANK_BLOCK_SPLIT.pattern == r"(?:\r?\n\s*){2,}"
    assert steps_mod.TOP_STEP_PAT.flags == steps_mod.INLINE_STEP_PAT.flags == re.IGNORECASE | re.UNICODE
    assert steps_mod.BLANK_BLOCK_SPLIT.flags == re.UNICODE


def test_split_reasoning_block_public():
    assert split_reasoning_block("") == [""]
    assert split_reasoning_block(None) == [""]
    assert split_reasoning_block("  \n\t ") == [""]
    assert split_reasoning_block("Step 1: a\n\nStep 2: b") == ["a", "b"]
    assert split_reasoning_block("Answer: B") == ["Answer: B"]  # the block is not searched for an answer


# ----------------------------------------------------------------------------------------------
# upstream: one test per quirk
# ----------------------------------------------------------------------------------------------
def test_upstream_first_answer_wins():
    # the body ends at the first Answer:, and the answer runs from there to the end
    assert up("[Reasoning]\nfoo\nAnswer: A\nbar\nAnswer: B") == ["foo", "Answer: A\nbar\nAnswer: B"]
    assert up("[Reasoning]\nStep 1: Answer: maybe A\nStep 2: no, it is B\nAnswer:   B \n") == [
        "", "Answer: maybe A\nStep 2: no, it is B\nAnswer:   B"]
    # the answer is searched in the whole candidate, even before [Reasoning]
    assert up("Answer: A [Reasoning] x Answer: B") == ["x", "Answer: A [Reasoning] x Answer: B"]


def test_upstream_without_reasoning_the_answer_is_duplicated():
    assert up("The bar is tallest.\nAnswer: B") == ["The bar is tallest.\nAnswer: B", "Answer: B"]
    assert up("Answer: blue") == ["Answer: blue", "Answer: blue"]
    # [Reasoning] without a later Answer: is no body either: the whole text is, tag included
    assert up("[Reasoning]\nfoo\nbar") == ["[Reasoning]\nfoo\nbar"]
    assert up("Answer: A\n[Reasoning]\nfoo") == ["Answer: A\n[Reasoning]\nfoo", "Answer: A\n[Reasoning]\nfoo"]


def test_upstream_reasoning_tag_is_case_sensitive():
    assert up("[reasoning]\nfoo\nAnswer: B") == ["[reasoning]\nfoo\nAnswer: B", "Answer: B"]
    assert up("[REASONING] foo Answer: B") == ["[REASONING] foo Answer: B", "Answer: B"]


def test_upstream_answer_marker_is_exact():
    # lower case and the full-width colon are not answer markers
    assert up("[Reasoning]\nx\nanswer: B") == ["[Reasoning]\nx\nanswer: B"]
    assert up("[Reasoning]\nfoo\nAnswer：红色") == ["[Reasoning]\nfoo\nAnswer：红色"]
    assert up("[Reasoning]\nfoo\nAnswer： 红\nAnswer: x") == ["foo\nAnswer： 红", "Answer: x"]


def test_upstream_answer_lookahead_optional_newline():
    # (?=\n?Answer:): a line break before Answer: is optional, and Answer: may end a word
    assert up("[Reasoning]\nfoo Answer: B") == ["foo", "Answer: B"]
    assert up("[Reasoning]\nx\nFinalAnswer: B") == ["x\nFinal", "Answer: B"]
    assert up("[Reasoning]foo\n\nAnswer: B") == ["foo", "Answer: B"]


def test_upstream_inline_cut_at_mid_line_number_period():
    assert up("[Reasoning]\nThe ratio is 380 / 380. Then we stop.\nAnswer: 1") == [
        "The ratio is 380 /", "Then we stop.", "Answer: 1"]
    assert up("[Reasoning]\nThe year 2023. Then\nAnswer: 1") == ["The year", "Then", "Answer: 1"]
    # no whitespace after the period: no cut (decimals survive mid-line)
    assert up("[Reasoning]\nx is 3.5 or 2.x\nAnswer: 1") == ["x is 3.5 or 2.x", "Answer: 1"]


def test_upstream_inline_cut_at_number_paren():
    assert up("[Reasoning]\nWe take 2) x and go on\nAnswer: x") == ["We take", "x and go on", "Answer: x"]
    assert up("[Reasoning]\nx = 5 / (5 + 2) = 5 / 7\nAnswer: B") == ["x = 5 / (5 +", "= 5 / 7", "Answer: B"]
    # numbers need not be consecutive
    assert up("[Reasoning]\nWe get 3) and then 1) again\nAnswer: 1") == ["We get", "and then", "again", "Answer: 1"]
    assert up("[Reasoning]\nf(x+1) = 2 1) first 2) second\nAnswer: 2") == ["f(x+1) = 2", "first", "second", "Answer: 2"]


def test_upstream_marked_lines_start_a_step_only_at_top_or_after_blank_line():
    # "2.b" (no space after the marker, so no inline cut either) stays in step 1
    assert up("[Reasoning]\n1. a\n2.b\nAnswer: c") == ["a\n2.b", "Answer: c"]
    assert up("[Reasoning]\n1. a\n\n2.b\nAnswer: c") == ["a", "b", "Answer: c"]
    assert up("[Reasoning]\nIntro\n1.x\n\n2.y\nAnswer: c") == ["Intro\n1.x", "y", "Answer: c"]
    assert up("[Reasoning]\nStep 1: a\nStep 2:b\nAnswer: c") == ["a\nStep 2:b", "Answer: c"]
    # with a space the mid-block marker is cut anyway, by the inline rule
    assert up("[Reasoning]\n1. a\n2. b\nAnswer: c") == ["a", "b", "Answer: c"]
    # under the marker rule a blank line followed by an unmarked line does not cut
    assert up("[Reasoning]\n1. a\n\nmore\n\n2. b\nAnswer: c") == ["a\n\nmore", "b", "Answer: c"]


def test_upstream_single_marked_line_does_not_trigger_marker_rule():
    # one marked line: blank-line blocks, so "more" is a step of its own ...
    assert up("[Reasoning]\nIntro\n\n1. a\n\nmore\nAnswer: c") == ["Intro", "a", "more", "Answer: c"]
    # ... two marked lines: the marker rule, "more" continues step "a"
    assert up("[Reasoning]\nIntro\n\n1. a\n\nmore\n\n2. b\nAnswer: c") == ["Intro", "a\n\nmore", "b", "Answer: c"]
    # a lone "1.the" (no space) is neither a step start nor an inline cut
    assert up("[Reasoning]\nWe know:\n1.the sum is 5\nso x = 2\nAnswer: 2") == [
        "We know:\n1.the sum is 5\nso x = 2", "Answer: 2"]


def test_upstream_blank_line_blocks():
    assert up("[Reasoning]\nFirst paragraph\nstill first.\n\n  \nSecond one.\n\nThird.\nAnswer: 4") == [
        "First paragraph\nstill first.", "Second one.", "Third.", "Answer: 4"]
    assert up("[Reasoning]\nfoo\n\nbar\nAnswer: B") == ["foo", "bar", "Answer: B"]
    assert up("[Reasoning]\nfoo\nbar\nAnswer: B") == ["foo\nbar", "Answer: B"]


def test_upstream_circled_numbers():
    assert up("[Reasoning]\n① 看图。\n② 颜色。\nAnswer: 红") == ["看图。", "颜色。", "Answer: 红"]
    # no space after ②: not cut inline, and not at the top or after a blank line
    assert up("[Reasoning]\n①看图。\n②颜色是红色。\nAnswer: 红色") == ["看图。\n②颜色是红色。", "Answer: 红色"]
    # inline, a circled number needs whitespace on both sides ("先看①" is not cut)
    assert up("[Reasoning]\n先看① 形状 ② 颜色\nAnswer: 红") == ["先看① 形状", "颜色", "Answer: 红"]
    # ⑳ is the last marker; ㉑ is plain text
    assert up("[Reasoning]\n⑳ a\n\n㉑ b\nAnswer: c") == ["a", "㉑ b", "Answer: c"]


def test_upstream_step_markers_case_insensitive():
    assert up("[Reasoning]\nSTEP 1 look\nstep2: more\nAnswer: x") == ["look", "more", "Answer: x"]
    assert up("[Reasoning]\n步骤 1. 看图\n\n步骤2 红色\nAnswer: 红色") == ["看图", "红色", "Answer: 红色"]
    assert up("[Reasoning]\n步骤1：看图\n步骤2：红色\nAnswer: 红色") == ["看图\n步骤2：红色", "Answer: 红色"]
    assert up("[Reasoning]\nIn step 2 we add\nAnswer: 7") == ["In", "we add", "Answer: 7"]


def test_upstream_numbers_any_digits_and_unicode():
    assert up("[Reasoning]\n123. a\n124. b\nAnswer: d") == ["a", "b", "Answer: d"]
    assert up("[Reasoning]\n１. a\n٢. b\nAnswer: c") == ["a", "b", "Answer: c"]
    assert up("[Reasoning]\n１．a\n２．b\nAnswer: c") == ["１．a\n２．b", "Answer: c"]  # full-width period: no marker
    assert up("[Reasoning]\n1）a\n2）b\nAnswer: d") == ["1）a\n2）b", "Answer: d"]  # full-width paren: no marker


def test_upstream_leading_marker_stripped_twice():
    assert up("[Reasoning]\n3.5 is half of 7\nAnswer: 7") == ["5 is half of 7", "Answer: 7"]
    assert up("[Reasoning]\n1. 2.5 apples\nAnswer: 7") == ["5 apples", "Answer: 7"]


def test_upstream_empty_step_when_nothing_left():
    assert up("[Reasoning]\nAnswer: B") == ["", "Answer: B"]
    assert up("[Reasoning]\nStep 1:\nAnswer: B") == ["", "Answer: B"]
    assert up("") == [""]
    assert up("1.") == [""]
    assert up("[Reasoning]\n  \nAnswer:   \n") == [""]


def test_upstream_crlf():
    # blank-line blocks keep "\r\n" inside a step; the lookahead leaves a "\r" that strip removes
    assert up("[Reasoning]\r\nfoo\r\nbar\r\nAnswer: x\r\n") == ["foo\r\nbar", "Answer: x"]
    assert up("[Reasoning]\nfoo\r\n\r\nbar\r\nAnswer: x") == ["foo", "bar", "Answer: x"]
    # marker-rule steps are rebuilt from str.splitlines() and joined with "\n"
    assert up("[Reasoning]\r\n1. a\r\nmore\r\n\r\n2. b\r\nAnswer: c") == ["a\nmore", "b", "Answer: c"]


def test_upstream_answer_keeps_inner_newlines():
    assert up("[Reasoning]\nfoo\nAnswer: B\nbecause\n  reasons  \n") == ["foo", "Answer: B\nbecause\n  reasons"]
    assert up("[Reasoning]\nA\nAnswer:\n\nB\n\n") == ["A", "Answer: B"]


# ----------------------------------------------------------------------------------------------
# upstream: independent oracle + random candidates
# ----------------------------------------------------------------------------------------------
# A literal transcription of the reference (utils.py: split_reasoning_block and the candidate
# handling of select_best_answer), kept separate from dreamprm.steps on purpose.
_O_TOP = re.compile(r"^\s*(?:(?:Step|步骤)\s*\d+\s*[:：\.]?|\d+\s*[\.、\)]|[①-⑳])\s*", re.IGNORECASE)
_O_INLINE = re.compile(r"(?:^|\s)(?:(?:Step|步骤)\s*\d+\s*[:：\.]?|\d+\s*[\.、\)]|[①-⑳])\s+", re.IGNORECASE)
_O_BLANK = re.compile(r"(?:\r?\n\s*){2,}")


def _o_unmark(s):
    return _O_TOP.sub("", s, count=1).strip()


def _o_inline(text):
    found = list(_O_INLINE.finditer(text))
    if not found:
        return [text.strip()] if text.strip() else []
    starts = ([] if found[0].start() == 0 else [0]) + [m.start() for m in found]
    out = []
    for n, st in enumerate(starts):
        en = starts[n + 1] if n + 1 < len(starts) else len(text)
        seg = text[st:en].strip()
        if not seg:
            continue
        seg = _o_unmark(seg)
        if seg:
            out.append(seg)
    return out or ([text.strip()] if text.strip() else [])


def _oracle_block(block, stats=None):
    block = (block or "").strip()
    if not block:
        return [""]
    lines = block.splitlines()
    segs, cur = [], []

    def flush():
        if cur:
            seg = "\n".join(cur).rstrip()
            if seg.strip():
                segs.append(seg)
            cur.clear()

    if sum(bool(_O_TOP.match(ln)) for ln in lines) >= 2:
        if stats is not None:
            stats["marker_rule"] += 1
        for n, ln in enumerate(lines):
            if _O_TOP.match(ln) and (n == 0 or not lines[n - 1].strip()):
                flush()
                cur.append(_o_unmark(ln))
            else:
                cur.append(ln.rstrip())
        flush()
    else:
        blocks = [b for b in _O_BLANK.split(block) if b.strip()]
        if stats is not None:
            stats["blank_blocks" if len(blocks) >= 2 else "one_block"] += 1
        segs = blocks if len(blocks) >= 2 else [block]
    final = []
    for seg in segs:
        parts = _o_inline(seg)
        if stats is not None and len(parts) > 1:
            stats["inline_cut"] += 1
        for p in parts:
            c = _o_unmark(p)
            if c:
                final.append(c)
    return final or [""]


def _oracle_split(cand, stats=None):
    m_reason = re.search(r"\[Reasoning\](.*?)(?=\n?Answer:)", cand, re.S)
    reasoning = m_reason.group(1) if m_reason else cand
    m_ans = re.search(r"Answer:\s*(.*)", cand, re.S)
    out = _oracle_block(reasoning, stats)
    answer = m_ans.group(1).strip() if m_ans else ""
    if answer:
        out.append(f"Answer: {answer}")
    if stats is not None:
        stats["empty_step"] += "" in out
        stats["with_reasoning_body"] += m_reason is not None
        stats["whole_text_body"] += m_reason is None
    return out


def _number(rng):
    n = rng.choice([1, 2, 3, 9, 10, 12, 380, 2023])
    digits = rng.choice(["0123456789", "０１２３４５６７８９", "٠١٢٣٤٥٦٧٨٩"]) if rng.random() < 0.15 else "0123456789"
    return "".join(digits[int(d)] for d in str(n))


def _marker(rng):
    k = rng.randrange(12)
    n = _number(rng)
    sp = rng.choice(["", " ", "  ", "\t"])
    return [
        lambda: f"{rng.choice(['Step', 'step', 'STEP', 'sTeP'])}{sp}{n}{rng.choice([':', '：', '.', '', ' :'])}",
        lambda: f"步骤{sp}{n}{rng.choice(['：', ':', '.', ''])}",
        lambda: f"{n}{rng.choice(['', ' '])}.",
        lambda: f"{n})",
        lambda: f"{n}、",
        lambda: f"{n}{rng.choice(['）', '．'])}",
        lambda: chr(0x2460 + rng.randrange(20)),
        lambda: rng.choice(["⓪", "㉑", "⑳", "①"]),
        lambda: f"{n}.{rng.randrange(10)}",
        lambda: f"({n})",
        lambda: f"{n}",
        lambda: rng.choice(["-", "*", "•"]),
    ][k]()


WORDS = ["the bar is red", "x = 2. Then", "so", "3.5 is half", "380 / 380. Then we stop", "f(x+1) = 2",
         "看图。", "颜色是红色", "we get", "and then", "answer", "Answer:", "Answer：", "answer:", "FinalAnswer:",
         "[Reasoning]", "[reasoning]", "B", "(B)", "ok.", "step", "2.x", "e.g.", "Answer: C", "\\boxed{4}"]
SPACES = [" ", " ", " ", "  ", "\t", "\xa0", "\u3000", ""]
BREAKS = ["\n", "\n", "\n", "\n\n", "\n \n", "\n\n\n", "\r\n", "\r\n\r\n", "\r", "\x0b", "\x0c", "\x1c", "\x85",
          "\u2028", "\n\t\n"]


def _line(rng):
    out = []
    if rng.random() < 0.5:
        out.append(_marker(rng) + rng.choice(SPACES))
    for _ in range(rng.randint(0, 5)):
        if rng.random() < 0.25:
            out.append(rng.choice(SPACES) + _marker(rng) + rng.choice(SPACES))
        else:
            out.append(rng.choice(WORDS) + rng.choice(SPACES))
    return rng.choice(["", "", " ", "  "]) + "".join(out)


def _random_candidate(rng):
    if rng.random() < 0.1:  # token soup
        pool = WORDS + BREAKS + SPACES + ["[Reasoning]", "Answer:", "Answer: A", "1. ", "2) ", "① "]
        return "".join(rng.choice(pool) for _ in range(rng.randint(0, 25)))
    parts = []
    if rng.random() < 0.15:
        parts.append(rng.choice(["Intro ", "Answer: A ", "[reasoning] ", "Let me think.\n"]))
    if rng.random() < 0.75:
        parts.append(rng.choice(["[Reasoning]", "[Reasoning]", "[Reasoning]", "[REASONING]"]))
        parts.append(rng.choice(["\n", "\n", " ", "", "\r\n", "\n\n"]))
    for _ in range(rng.randint(0, 7)):
        parts.append(_line(rng))
        parts.append(rng.choice(BREAKS))
    r = rng.random()
    if r < 0.65:
        parts.append(rng.choice(["Answer:", "Answer: ", "Answer:  ", "Answer:\n", "Answer："]))
        parts.append(rng.choice(["B", "B.", " (B) ", "42", "红色。", "", "  ", "B\nbecause\n  of it  ",
                                 "A\nAnswer: B", "1. x\n2. y"]))
        parts.append(rng.choice(["", "", "\n", "\r\n", " \n\n"]))
    elif r < 0.8:
        parts.append(rng.choice(["so Answer: B", "Answer: maybe A\n", "the answer: C"]))
        parts.append(_line(rng))
        parts.append(rng.choice(["\nAnswer: D", "", "\n"]))
    return "".join(parts)


def test_upstream_matches_oracle_on_random_candidates():
    rng = random.Random(20240915)
    stats = dict.fromkeys(["marker_rule", "blank_blocks", "one_block", "inline_cut", "empty_step",
                           "with_reasoning_body", "whole_text_body"], 0)
    for i in range(6000):
        cand = _random_candidate(rng)
        expected = _oracle_split(cand, stats)
        assert up(cand) == expected, (i, cand)
        assert split_steps(cand) == expected
    # the generator reaches every branch of the reference often
    assert min(stats.values()) >= 200, stats


def test_split_reasoning_block_matches_oracle_on_random_blocks():
    rng = random.Random(7)
    for i in range(4000):
        block = "".join(_line(rng) + rng.choice(BREAKS) for _ in range(rng.randint(0, 6)))
        assert split_reasoning_block(block) == _oracle_block(block), (i, block)


@pytest.mark.parametrize("text", [
    "[Reasoning]\nStep 1: The circle is blue.\nStep 2: So blue.\nAnswer: blue",
    "[Reasoning]\n1. a\n\n2. b\n\n3. c\n\nAnswer: B",
    "[Reasoning]\n- a\n- b\n\nAnswer: A",
    "D",
    "[Reasoning]\nx = 5 / (5 + 2) = 5 / 7 ≈ 0.714\n\nAnswer: D",
])
def test_upstream_matches_oracle_on_meta_like_responses(text):
    assert up(text) == _oracle_split(text)


# ----------------------------------------------------------------------------------------------
# clean
# ----------------------------------------------------------------------------------------------
CLEAN_CASES = {
    "no markers: one step + answer": (
        "[Reasoning]\nThe shape is red, so the answer is red.\nAnswer: red",
        ["The shape is red, so the answer is red.", "Answer: red"],
    ),
    "no [Reasoning]: whole text before Answer": (
        "The bar is tallest.\nAnswer: B",
        ["The bar is tallest.", "Answer: B"],
    ),
    "blank-line paragraphs": (
        "[Reasoning]\nFirst paragraph\nstill first.\n\n  \nSecond one.\n\nThird.\nAnswer: 4",
        ["First paragraph\nstill first.", "Second one.", "Third.", "Answer: 4"],
    ),
    "inline enumeration": (
        "[Reasoning]\nFirst we see 1) the angle is 30 2) so x = 4\nAnswer: 4",
        ["First we see", "the angle is 30", "so x = 4", "Answer: 4"],
    ),
    "inline enumeration, non-consecutive numbers do not split": (
        "[Reasoning]\nWe get 3) and then 1) again\nAnswer: 1",
        ["We get 3) and then 1) again", "Answer: 1"],
    ),
    "inline: f(x+1) is not a marker": (
        "[Reasoning]\nf(x+1) = 2 1) first 2) second\nAnswer: 2",
        ["f(x+1) = 2", "first", "second", "Answer: 2"],
    ),
    "Step N: markers with preamble and continuation lines": (
        "[Reasoning]\nLet me look.\nStep 1: The circle is blue.\nIt is large.\n"
        "step 2. So blue.\nSTEP 3: Done\nAnswer: blue",
        ["Let me look.", "The circle is blue.\nIt is large.", "So blue.", "Done", "Answer: blue"],
    ),
    "N. lines; decimals and mid-line 'x = 2. Then' do not split": (
        "[Reasoning]\n1. We have x = 2. Then y = 3.5\n2.  3.5 is half of 7\n3.5 is kept in step 2\nAnswer: 7.",
        ["We have x = 2. Then y = 3.5", "3.5 is half of 7\n3.5 is kept in step 2", "Answer: 7."],
    ),
    "N) lines": (
        "[Reasoning]\n1) red\n2) green\nAnswer: green",
        ["red", "green", "Answer: green"],
    ),
    "circled numbers": (
        "[Reasoning]\n① 看图。\n②颜色是红色。\nAnswer：红色。",
        ["看图。", "颜色是红色。", "Answer: 红色。"],
    ),
    "CJK N、 markers and full-width colon": (
        "[Reasoning]\n1、图中是一个圆。\n2、圆是蓝色的。\nAnswer：蓝色",
        ["图中是一个圆。", "圆是蓝色的。", "Answer: 蓝色"],
    ),
    "inline circled numbers": (
        "[Reasoning]\n先看① 形状 ② 颜色\nAnswer: 红",
        ["先看", "形状", "颜色", "Answer: 红"],
    ),
    "empty reasoning": ("[Reasoning]\nAnswer: B", ["Answer: B"]),
    "missing Answer: everything after [Reasoning]": (
        "Intro ignored [Reasoning]\nStep 1: a\nStep 2: b\n",
        ["a", "b"],
    ),
    "single marked line does not trigger marker splitting": (
        "[Reasoning]\nWe know:\n1. the sum is 5\nso x = 2\nAnswer: 2",
        ["We know:\n1. the sum is 5\nso x = 2", "Answer: 2"],
    ),
    "last Answer: wins, earlier one stays in the body": (
        "[Reasoning]\nStep 1: Answer: maybe A\nStep 2: no, it is B\nAnswer:   B \n",
        ["Answer: maybe A", "no, it is B", "Answer: B"],
    ),
    "empty marker pieces are dropped": (
        "[Reasoning]\nStep 1:\nStep 2: only this\n\nAnswer: x",
        ["only this", "Answer: x"],
    ),
    "marker lines split, then inline inside a step": (
        "[Reasoning]\nStep 1: check 1) colour 2) size\nStep 2: blue\nAnswer: blue",
        ["check", "colour", "size", "blue", "Answer: blue"],
    ),
    "empty answer adds no step": ("[Reasoning]\nStep one.\nAnswer:  ", ["Step one."]),
    "CRLF line endings": (
        "[Reasoning]\r\n1. a\r\n2. b\r\nAnswer: c",
        ["a", "b", "Answer: c"],
    ),
    "empty text": ("", []),
    # differences from upstream, as stated in the module docstring
    "case-insensitive [reasoning]": ("[reasoning]\nfoo\nAnswer: B", ["foo", "Answer: B"]),
    "answer whitespace collapsed": ("[Reasoning]\nfoo\nAnswer: B\nbecause\n  x  \n", ["foo", "Answer: B because x"]),
    "every marked line starts a step": ("[Reasoning]\n1. a\n2.b\nAnswer: c", ["a", "b", "Answer: c"]),
    "full-width markers": ("[Reasoning]\n1）a\n2．b\nAnswer: d", ["a", "b", "Answer: d"]),
    "Step N needs punctuation, no 步骤": ("[Reasoning]\nSTEP 1 look\n步骤2：more\nAnswer: x",
                                        ["STEP 1 look\n步骤2：more", "Answer: x"]),
    "three-digit bare numbers are no marker": ("[Reasoning]\n123. a\n124. b\nAnswer: d",
                                               ["123. a\n124. b", "Answer: d"]),
    "lone marked paragraph keeps its marker, decimals intact": (
        "[Reasoning]\nIntro\n\n1. a\n\n3.5 is half\nAnswer: c", ["Intro", "1. a", "3.5 is half", "Answer: c"]),
    "mid-line words and numbers never cut": ("[Reasoning]\nIn step 2 we add 380 / 380. Then\nAnswer: 7",
                                            ["In step 2 we add 380 / 380. Then", "Answer: 7"]),
    "CRLF in paragraphs normalised": ("[Reasoning]\r\nfoo\r\nbar\r\nAnswer: x\r\n", ["foo\nbar", "Answer: x"]),
    "unmarked text only": ("1.", ["1."]),
}


@pytest.mark.parametrize("text,expected", CLEAN_CASES.values(), ids=list(CLEAN_CASES))
def test_split_steps_clean(text, expected):
    assert split_steps(text, "clean") == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("[Reasoning]\nStep 1: x\nAnswer: red", "red"),
        ("[Reasoning]\nStep 1: x\nAnswer: 7.", "7"),
        ("Answer: A\nmore\nAnswer:  3.5 ", "3.5"),
        ("[Reasoning]\n看图\nAnswer：红色。", "红色"),
        ("[Reasoning]\nno answer here", None),
        ("[Reasoning]\nAnswer:", None),
        ("the answer: lowercase is not a marker", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_upstream_body_equals_the_regex_and_is_linear():
    """The reasoning-body search returns exactly what upstream's regex does, and 1 MB of
    repeated '[Reasoning]' without an answer (quadratic for the regex) takes milliseconds."""
    import time

    rng = random.Random(5)
    atoms = ["[Reasoning]", "Answer:", "\n", "Answer", "[Reasoning", "x", " ", "1. ", ":"]
    for _ in range(20_000):
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(0, 12)))
        found = steps_mod._UPSTREAM_BODY.search(text)
        assert steps_mod._upstream_body(text) == (found.group(1) if found else None), repr(text)
    big = "[Reasoning] x " * 80_000
    start = time.perf_counter()
    assert steps_mod._upstream_body(big) is None
    assert split_steps(big + "\n", "upstream")
    assert time.perf_counter() - start < 30  # the regex alone took more than 10 minutes
