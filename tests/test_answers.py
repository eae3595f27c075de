"""dreamprm.answers: the answer checker (tests/test_prepare_data.py covers its rules through
data/prepare_meta_test.py, which imports it from here)."""

import importlib.util
from pathlib import Path

import pytest

from dreamprm import answers
from dreamprm.answers import answer_key, answer_text, has_answer, is_correct, options_block

MC = {"options": ["41", "42", "a cat", "none of these"], "answer": "B"}


@pytest.mark.parametrize("candidate, ok", [
    ("[Reasoning]\nStep 1: count.\nAnswer: B", True),
    ("[Reasoning]\nStep 1: count.\nAnswer: (b).", True),
    ("Answer: 42", True),              # the option's text
    ("the answer is B", True),         # no Answer: line, a phrase
    ("Answer: A", False),
    ("Answer: E", False),              # no such option
    ("no answer at all", False),
])
def test_multiple_choice(candidate, ok):
    assert is_correct(candidate, MC) is ok


def test_multiple_choice_option_forms_and_text_key():
    assert is_correct("Answer: C", {"options": {"A": "dog", "B": "bird", "C": "cat"}, "answer": "(C)"})
    assert is_correct("Answer: C", {"options": "['dog', 'bird', 'cat']", "answer": "cat"})  # key given as text
    assert is_correct("Answer: C", {"options": {"A": "dog", "B": "bird", "C": "cat"}, "answer": "C"})


@pytest.mark.parametrize("candidate, answer, ok", [
    ("Answer: 1,000", "1000", True),
    ("Answer: 0.75", "3/4", True),
    ("Answer: Paris.", "paris", True),
    ("Answer: 7", ["6", "7.0"], True),
    ("Answer: 7", "['6', '7']", True),   # the string form of a list
    ("Answer: 12", 12, True),            # a number key
    ("Answer: 3.14", "3.2", False),
    ("\\boxed{5}", "5", True),
])
def test_free_text(candidate, answer, ok):
    assert is_correct(candidate, {"answer": answer}) is ok
    assert is_correct(candidate, {"answer": answer, "options": []}) is ok  # no options = free text


def test_answer_key_and_errors():
    opts = {"A": "x", "B": "y"}
    assert answer_key("b", opts) == "B" and answer_key("y", opts) == "B" and answer_key(" (A) ", opts) == "A"
    assert answer_key(3.5, {}) == "3.5" and answer_key("[1, 2]", {}) == ["1", "2"]
    with pytest.raises(ValueError, match="not one of the option letters AB"):
        answer_key("z", opts)
    for missing in (None, "", []):
        with pytest.raises(ValueError, match="missing"):
            answer_key(missing, {})
    with pytest.raises(ValueError, match="missing"):
        is_correct("Answer: B", {"options": ["x", "y"]})
    with pytest.raises(ValueError, match="option letter"):
        answer_key(["A"], opts)


def test_answer_text_has_answer_and_options_block():
    assert answer_text("[Reasoning]\nStep 1: x\nAnswer: **B**.") == "B"
    assert answer_text("[Reasoning]\nStep 1: x") is None
    assert has_answer("Answer: B", MC) and not has_answer("Answer: E", MC) and not has_answer("hmm")
    assert has_answer("Answer: anything")
    assert options_block({"A": "x", "B": "y"}) == "A. x\nB. y"


def test_prepare_meta_test_uses_this_checker():
    path = Path(__file__).resolve().parents[1] / "data" / "prepare_meta_test.py"
    spec = importlib.util.spec_from_file_location("pmt_for_answers", path)
    pm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pm)
    for name in ("answer_text", "normalize_options", "extract_choice", "free_is_correct", "is_correct"):
        assert getattr(pm, name) is getattr(answers, name)
