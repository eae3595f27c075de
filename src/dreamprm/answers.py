"""Is a candidate's final answer right? The answer checker of the meta/test sets and of generation.

The answer text is what follows the last ``Answer:`` (``dreamprm.steps.extract_answer``); without
one, the last "answer is X" / "final answer: X" phrase, else a trailing ``\\boxed{X}``.

* Multiple choice: a leading option letter, alone or followed by punctuation or text
  (``(B)``, ``B.``, ``b``, ``B) 42``, ``Option B``, ``\\boxed{B}``), accepted only when it names an
  existing option; otherwise the answer text is compared with the option texts after
  normalisation (case, spaces, trailing punctuation): an exact match, else the single option
  whose text the answer contains. Right iff the letter equals the answer key.
* Free text: numbers are compared numerically (thousands commas, ``%``, ``$`` and simple
  fractions ``a/b`` understood, ``%`` read as a unit; equal when within 1e-2 relative or 1e-6
  absolute tolerance); otherwise case-, space- and trailing-punctuation-insensitive string
  equality. A list answer key is right when any of its entries matches.

Used by ``data/prepare_meta_test.py`` and ``dreamprm.generate``.
"""

from __future__ import annotations

import ast
import math
import re
import string

from .steps import extract_answer

LETTERS = string.ascii_uppercase

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_PHRASE = re.compile(r"(?:final\s+answer|answer\s+is|answer\s*[:：])\s*[:：]?\s*(.+)", re.IGNORECASE)
_LEAD_LETTER = re.compile(
    r"^\s*(?P<pre>(?:option|choice)\s+)?(?P<open>[(\[]?)(?P<letter>[A-Za-z])(?P<close>[)\]]?)(?=$|[\s.,:;)!?])(?P<rest>.*)$",
    re.IGNORECASE | re.DOTALL,
)
_NUM = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?$", re.IGNORECASE)
_LITERAL_ERRORS = (ValueError, SyntaxError, TypeError, MemoryError, RecursionError)


def answer_text(candidate: str) -> str | None:
    """The candidate's final-answer text (see module docstring), or None."""
    ans = extract_answer(candidate)
    if ans is None:
        hits = list(_PHRASE.finditer(candidate))
        if hits:
            ans = hits[-1].group(1).strip().splitlines()[0]
        else:
            boxes = _BOXED.findall(candidate)
            ans = boxes[-1] if boxes else None
    if ans is None:
        return None
    inner = list(_PHRASE.finditer(ans))  # "Answer: the answer is B"
    if inner:
        ans = inner[-1].group(1)
    box = _BOXED.search(ans)
    if box:
        ans = box.group(1)
    ans = ans.strip().strip("*$ ").rstrip(".。").strip()
    return ans or None


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip().strip(".。,;:!? ").lower()


def normalize_options(options) -> dict[str, str]:
    """``{"A": text, ...}`` from a list, a dict, or the string form of a list; {} for none."""
    if options is None or options == "" or options == []:
        return {}
    if isinstance(options, str):
        try:
            options = ast.literal_eval(options)
        except _LITERAL_ERRORS:
            raise ValueError("string is not a list literal") from None
    if isinstance(options, dict):
        out = {}
        for k, v in options.items():
            if not (isinstance(k, str) and len(k.strip()) == 1 and k.strip().upper() in LETTERS):
                raise ValueError(f"option key {k!r} is not a letter")
            out[k.strip().upper()] = str(v)
        return out
    if isinstance(options, (list, tuple)):
        if len(options) > len(LETTERS):
            raise ValueError("more than 26 options")
        return {LETTERS[i]: str(v) for i, v in enumerate(options)}
    raise ValueError(f"expected a list or a dict, got {type(options).__name__}")


def options_block(options: dict[str, str]) -> str:
    """The options as ``A. text`` lines (how questions show them to the policy and the PRM)."""
    return "\n".join(f"{k}. {v}" for k, v in options.items())


def answer_key(answer, options: dict[str, str]):
    """The answer key: an option letter for multiple choice (the letter, ``(B)`` or the option's
    text), else a string or a list of acceptable strings (a number becomes its string, the string
    form of a list its entries). ValueError (``missing``, not an option) when there is none."""
    if options:
        if answer is not None and not isinstance(answer, str):
            raise ValueError(f"must be an option letter (a string), got {type(answer).__name__}")
        if answer is None or not answer.strip():
            raise ValueError("missing")
        key = answer.strip().strip("()").upper()
        if key not in options:
            by_text = [k for k, v in options.items() if _norm(v) == _norm(answer)]
            if len(by_text) != 1:
                raise ValueError(f"{answer[:40]!r} is not one of the option letters {''.join(options)}")
            key = by_text[0]
        return key
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    elif isinstance(answer, str) and answer.strip().startswith("["):
        try:
            parsed = ast.literal_eval(answer)
            if isinstance(parsed, (list, tuple)):
                answer = [str(a) for a in parsed]
        except _LITERAL_ERRORS:
            pass
    if not answer or not (isinstance(answer, str) or isinstance(answer, list)):
        raise ValueError("missing")
    return answer


def extract_choice(candidate: str, options: dict[str, str]) -> str | None:
    """The option letter a candidate picks, or None (see module docstring)."""
    ans = answer_text(candidate)
    if ans is None:
        return None
    m = _LEAD_LETTER.match(ans)
    if m and m.group("letter").upper() in options:
        letter, rest = m.group("letter").upper(), m.group("rest")
        marked = bool(m.group("pre") or m.group("open") or m.group("close"))
        # "B", "(B)", "Option B", "B.", "B) 42", "B: 42" name a letter; "a cat" may be option text
        if marked or not rest.strip() or rest[:1] in ".,:;)!?" or _norm(rest) == _norm(options[letter]):
            return letter
    na = _norm(ans)
    exact = [k for k, v in options.items() if _norm(v) == na]
    if len(exact) == 1:
        return exact[0]
    contained = [k for k, v in options.items()
                 if _norm(v) and re.search(r"(?<!\w)" + re.escape(_norm(v)) + r"(?!\w)", na)]
    if len(contained) == 1:
        return contained[0]
    return None


def choice_is_correct(candidate: str, options: dict[str, str], key: str) -> bool:
    return extract_choice(candidate, options) == key


def to_number(text: str) -> float | None:
    """A float from '1,234.5', '45%', '$3', '3/4', or None."""
    t = str(text).strip().replace("$", "").replace("\\%", "%").strip()
    t = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", t)  # thousands separators only: "1,000" but not "1,2"
    t = t.rstrip("%").strip()
    if re.fullmatch(r"[-+]?\d+\s*/\s*\d+", t):
        a, b = (float(x) for x in t.split("/"))
        return None if b == 0 else a / b
    if _NUM.match(t):
        return float(t)  # a trailing % is read as a unit: "45%" == "45"
    return None


def free_is_correct(pred: str | None, gold) -> bool:
    """Free-text answer check with numeric tolerance (see module docstring)."""
    if pred is None:
        return False
    golds = gold if isinstance(gold, (list, tuple)) else [gold]
    p_num = to_number(pred)
    for g in golds:
        g_num = to_number(str(g))
        if p_num is not None and g_num is not None:
            if math.isclose(p_num, g_num, rel_tol=1e-2, abs_tol=1e-6):
                return True
        elif _norm(pred) == _norm(str(g)):
            return True
    return False


def is_correct(candidate: str, question: dict) -> bool:
    """Whether ``candidate`` answers ``question`` right: ``question["answer"]`` and the optional
    ``question["options"]`` in any form :func:`normalize_options` and :func:`answer_key` accept
    (already normalised ones too). ValueError for unusable options or a missing answer."""
    options = normalize_options(question.get("options"))
    key = answer_key(question.get("answer"), options)
    if options:
        return choice_is_correct(candidate, options, key)
    return free_is_correct(answer_text(candidate), key)


def has_answer(candidate: str, question: dict | None = None) -> bool:
    """Whether the checker finds a final answer in ``candidate`` (for multiple choice: one that
    names an option). Candidates without one are kept, and counted as wrong."""
    if answer_text(candidate) is None:
        return False
    options = normalize_options((question or {}).get("options"))
    return not options or extract_choice(candidate, options) is not None
