"""Step splitting and answer extraction on tricky candidates; every case checks the full list."""

import pytest

from dreamprm.steps import extract_answer, split_steps

CASES = {
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
}


@pytest.mark.parametrize("text,expected", CASES.values(), ids=list(CASES))
def test_split_steps(text, expected):
    assert split_steps(text) == expected


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
