"""Malformed training, meta and test files: one DataError naming file, record and field, and
``skip_bad`` keeps exactly the good records (property-based, and one test per case)."""

from __future__ import annotations

import copy
import itertools
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dreamprm.records import DataError, load_records

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


def _valid(kind: str) -> list[dict]:
    """The sample records of ``kind`` with absolute image paths (files go to temp folders)."""
    name = {"train": "train.json", "meta": "meta.json", "test": "test.json"}[kind]
    records = json.loads((DATA / name).read_text(encoding="utf-8"))
    key = "image_path" if kind == "test" else "image"
    for r in records:
        r[key] = str((DATA / r[key]).resolve())
    return records


VALID = {k: _valid(k) for k in ("train", "meta", "test")}
_counter = itertools.count()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("records")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return d


def _write(folder: Path, data, text: str | None = None) -> str:
    path = folder / f"f{next(_counter)}.json"
    path.write_text(json.dumps(data) if text is None else text, encoding="utf-8")
    return str(path)


def _gpt_turns(rec) -> list[int]:
    return [t for t, turn in enumerate(rec["conversations"]) if turn.get("from") == "gpt"]


# A mutation: (name, kinds, apply(rec, draw, ctx) -> expected message fragment after "record i ...: ").
# ``ctx`` holds the folder (for the unreadable image) and the earlier records (for duplicates).

WRONG_ID = st.sampled_from([None, 1.5, [1], {"a": 1}, True])


def _m_drop(key):
    def apply(rec, draw, ctx):
        del rec[key]
        return f"field '{key}'"
    return apply


def _m_type(key, values):
    def apply(rec, draw, ctx):
        rec[key] = draw(st.sampled_from(values))
        return f"field '{key}'"
    return apply


def _m_wrong_id(rec, draw, ctx):
    rec["id"] = draw(WRONG_ID)
    return "field 'id'"


def _m_gpt_value(rec, draw, ctx):
    t = draw(st.sampled_from(_gpt_turns(rec)))
    rec["conversations"][t]["value"] = draw(st.sampled_from(["x", "++", "", "+ ", "yes", "0", "+-"]))
    return f"field 'conversations[{t}]'.value: gpt turns must be '+' or '-'"


def _m_gpt_value_type(rec, draw, ctx):
    t = draw(st.sampled_from(_gpt_turns(rec)))
    rec["conversations"][t]["value"] = draw(st.sampled_from([1, None, ["+"], True]))
    return f"field 'conversations[{t}]'.value: must be a string"


def _m_role(rec, draw, ctx):
    t = draw(st.integers(0, len(rec["conversations"]) - 1))
    rec["conversations"][t]["from"] = draw(st.sampled_from(["assistant", "user", "", None, 3]))
    return f"field 'conversations[{t}]'.from"


def _m_turn_not_object(rec, draw, ctx):
    before_gpt = [t - 1 for t in _gpt_turns(rec)]  # the gpt turn then checks the turn before it
    t = draw(st.one_of(st.sampled_from(before_gpt), st.integers(0, len(rec["conversations"]) - 1)))
    rec["conversations"][t] = draw(st.sampled_from(["+", 1, None, ["gpt", "+"]]))
    return f"field 'conversations[{t}]': must be an object"


def _m_empty_conv(rec, draw, ctx):
    rec["conversations"] = draw(st.sampled_from([[], "text", {"from": "gpt"}, None, 7]))
    return "field 'conversations': must be a non-empty list"


def _m_no_step(rec, draw, ctx):
    rec["conversations"] = [t for t in rec["conversations"] if t["from"] != "gpt"]
    return "field 'conversations': no step"


def _m_missing_image(rec, draw, ctx):
    key = "image_path" if "image_path" in rec else "image"
    rec[key] = draw(st.sampled_from(["images/no_such_file.png", "/nonexistent/x.png", "missing.jpg"]))
    return f"field '{key}': image not found"


def _m_unreadable_image(rec, draw, ctx):
    key = "image_path" if "image_path" in rec else "image"
    rec[key] = str(ctx["folder"] / "broken.png")
    return f"field '{key}': image unreadable"


def _m_duplicate(rec, draw, ctx):
    earlier = [r["id"] for r in ctx["earlier"] if isinstance(r, dict) and isinstance(r.get("id"), str)]
    rec["id"] = draw(st.sampled_from(earlier))
    return "field 'id': duplicate of record"


def _m_not_object(rec, draw, ctx):
    ctx["replace"] = draw(st.sampled_from([5, "record", [1, 2], None]))
    return "must be an object"


def _m_tf_mismatch(rec, draw, ctx):
    if draw(st.booleans()):
        rec["true_false"] = rec["true_false"][:-1]
    else:
        rec["true_false"] = rec["true_false"] + [False]
    return "field 'true_false'"


def _m_tf_items(rec, draw, ctx):
    j = draw(st.integers(0, len(rec["true_false"]) - 1))
    rec["true_false"][j] = draw(st.sampled_from([1, 0, "true", None]))
    return "field 'true_false': must be a list of booleans"


def _m_candidates(rec, draw, ctx):
    choice = draw(st.sampled_from(["empty", "str", "item"]))
    if choice == "empty":
        rec["candidates"] = []
    elif choice == "str":
        rec["candidates"] = "Answer: 3"
    else:
        rec["candidates"][0] = 3
    return "field 'candidates'"


CONV = ("train", "meta")
MUTATIONS = [
    ("drop id", CONV, _m_drop("id")),
    ("drop image", CONV, _m_drop("image")),
    ("drop conversations", CONV, _m_drop("conversations")),
    ("wrong id", ("train", "meta", "test"), _m_wrong_id),
    ("image type", CONV, _m_type("image", [5, None, ["a.png"]])),
    ("dataset type", CONV, _m_type("dataset", [3, None, ["x"]])),
    ("gpt value", CONV, _m_gpt_value),
    ("gpt value type", CONV, _m_gpt_value_type),
    ("role", CONV, _m_role),
    ("turn not object", CONV, _m_turn_not_object),
    ("empty conversations", CONV, _m_empty_conv),
    ("no step", CONV, _m_no_step),
    ("missing image", ("train", "meta", "test"), _m_missing_image),
    ("unreadable image", ("train", "meta", "test"), _m_unreadable_image),
    ("duplicate id", ("train",), _m_duplicate),  # meta and test files may repeat ids
    ("not an object", ("train", "meta", "test"), _m_not_object),
    ("meta without true_false", ("meta",), _m_drop("true_false")),
    ("meta true_false type", ("meta",), _m_type("true_false", [1, "yes", None, [True]])),
    ("drop question", ("test",), _m_drop("question")),
    ("drop image_path", ("test",), _m_drop("image_path")),
    ("drop candidates", ("test",), _m_drop("candidates")),
    ("drop true_false", ("test",), _m_drop("true_false")),
    ("question type", ("test",), _m_type("question", [3, None, ["q"]])),
    ("candidates", ("test",), _m_candidates),
    ("true_false length", ("test",), _m_tf_mismatch),
    ("true_false items", ("test",), _m_tf_items),
]


@st.composite
def bad_files(draw, folder):
    """A kind, a list of records of that kind with some of them broken, and what to expect."""
    kind = draw(st.sampled_from(["train", "meta", "test"]))
    pool = VALID[kind]
    n = draw(st.integers(1, 6))
    picks = draw(st.lists(st.integers(0, len(pool) - 1), min_size=n, max_size=n, unique=True))
    records = [copy.deepcopy(pool[i]) for i in picks]
    bad = draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n))
    expected = {}
    out = []
    for i, rec in enumerate(records):
        if i not in bad:
            out.append(rec)
            continue
        options = [m for m in MUTATIONS if kind in m[1]]
        if i == 0 or not any(isinstance(r, dict) and isinstance(r.get("id"), str) for r in out):
            options = [m for m in options if m[0] != "duplicate id"]
        name, _, apply = draw(st.sampled_from(options))
        ctx = {"folder": folder, "earlier": out}
        fragment = apply(rec, draw, ctx)
        rid = rec.get("id")
        if "replace" in ctx:
            rec, rid = ctx["replace"], None
        out.append(rec)
        expected[i] = (name, fragment, rid)
    return kind, out, expected


def _lines_for(message: str, path: str, index: int) -> list[str]:
    pattern = re.compile(rf"^{re.escape(path)}: record {index}(?![0-9])")
    return [line for line in message.splitlines() if pattern.match(line)]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_malformed_records_are_reported_and_skipped(work, data):
    kind, records, expected = data.draw(bad_files(work))
    path = _write(work, records)
    with pytest.raises(DataError) as err:
        load_records(path, kind, max_errors=10_000)
    message = str(err.value)
    assert message.splitlines()[0].startswith(f"{path}: {len(expected)} bad record")
    assert "--skip_bad_records" in message.splitlines()[0]
    for i, (name, fragment, rid) in expected.items():
        lines = _lines_for(message, path, i)
        assert lines, f"{name}: no line for record {i} in:\n{message}"
        assert any(fragment in line for line in lines), f"{name}: {fragment!r} not in {lines}"
        if rid is not None:
            assert all(f"(id {rid!r})" in line for line in lines)
    for i in set(range(len(records))) - set(expected):
        assert not _lines_for(message, path, i), f"good record {i} reported:\n{message}"

    good = [r for i, r in enumerate(records) if i not in expected]
    if not good:
        with pytest.raises(DataError, match="no usable records"):
            load_records(path, kind, skip_bad=True)
        return
    kept, report = load_records(path, kind, skip_bad=True)
    assert kept == good
    assert report.skipped == len(expected)
    assert report.records == len(good)
    summary = report.summary()
    assert "\n" not in summary and f"skipped {len(expected)} bad record" in summary


JSON_TYPE = {dict: "an object", str: "a string", int: "a number", float: "a number", bool: "true/false",
             type(None): "null"}


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["train", "meta", "test"]),
    top=st.one_of(st.dictionaries(st.text(max_size=5), st.integers(), max_size=3), st.text(max_size=10),
                  st.integers(), st.none(), st.booleans(), st.floats(allow_nan=False)),
)
def test_top_level_not_a_list(tmp_path_factory, kind, top):
    path = _write(tmp_path_factory.mktemp("top"), top)
    for skip in (False, True):
        with pytest.raises(DataError) as err:
            load_records(path, kind, skip_bad=skip)
        assert str(err.value) == f"{path}:1: <json>: expected a list of records, got {JSON_TYPE[type(top)]}"


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(["train", "meta", "test"]), cut=st.integers(1, 400), junk=st.sampled_from(["", "}", ",", "x"]))
def test_invalid_json_text(tmp_path_factory, kind, cut, junk):
    text = json.dumps(VALID[kind][:2])
    path = _write(tmp_path_factory.mktemp("json"), None, text[: min(cut, len(text) - 1)] + junk)
    with pytest.raises(DataError) as err:
        load_records(path, kind)
    message = str(err.value)
    assert re.fullmatch(rf"{re.escape(str(path))}:1: <json>: [^\n]+", message)


# -- one test per case, exact fragments ---------------------------------------------------

def _one_bad(work, kind, mutate, index=1):
    records = copy.deepcopy(VALID[kind][:3])
    mutate(records, index)
    path = _write(work, records)
    with pytest.raises(DataError) as err:
        load_records(path, kind)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{path}: 1 bad record (use --skip_bad_records to drop them):"
    kept, report = load_records(path, kind, skip_bad=True)
    assert report.skipped == 1 and len(kept) == 2 and records[index] not in kept
    return path, lines[1:]


def _set(key, value):
    def mutate(records, i):
        records[i][key] = value
    return mutate


def _delete(key):
    def mutate(records, i):
        del records[i][key]
    return mutate


def _gpt(value):
    def mutate(records, i):
        records[i]["conversations"][_gpt_turns(records[i])[0]]["value"] = value
    return mutate


CASES = [
    ("train", _delete("id"), "record 1: field 'id': missing or not a string/number"),
    ("train", _set("id", 1.5), "record 1 (id 1.5): field 'id': missing or not a string/number"),
    ("train", _delete("image"), "record 1 (id 'train_001'): field 'image': missing or not a string"),
    ("train", _set("image", "nope/none.png"), "record 1 (id 'train_001'): field 'image': image not found: "),
    ("train", _set("dataset", 7), "record 1 (id 'train_001'): field 'dataset': must be a string"),
    ("train", _delete("conversations"),
     "record 1 (id 'train_001'): field 'conversations': must be a non-empty list of turns"),
    ("train", _set("conversations", []),
     "record 1 (id 'train_001'): field 'conversations': must be a non-empty list of turns"),
    ("train", _gpt("yes"), "record 1 (id 'train_001'): field 'conversations[{t}]'.value: "
     "gpt turns must be '+' or '-', got 'yes'"),
    ("train", _gpt(1), "record 1 (id 'train_001'): field 'conversations[{t}]'.value: must be a string, got int"),
    ("train", lambda r, i: r[i].__setitem__("conversations", [c for c in r[i]["conversations"] if c["from"] != "gpt"]),
     "record 1 (id 'train_001'): field 'conversations': no step (no gpt turn)"),
    ("train", lambda r, i: r[i]["conversations"][1].__setitem__("from", "assistant"),
     "record 1 (id 'train_001'): field 'conversations[1]'.from: must be 'system', 'human' or 'gpt', got 'assistant'"),
    ("train", _set("id", "train_000"), "record 1 (id 'train_000'): field 'id': duplicate of record 0"),
    ("train", lambda r, i: r[i]["conversations"].__setitem__(_gpt_turns(r[i])[0] - 1, "text"),
     "record 1 (id 'train_001'): field 'conversations[{u}]': must be an object with 'from' and 'value'"),
    ("meta", _delete("true_false"), "record 1 (id 'meta_001'): field 'true_false': meta records need a boolean"),
    ("meta", _set("true_false", "yes"), "record 1 (id 'meta_001'): field 'true_false': meta records need a boolean"),
    ("test", _delete("question"), "record 1 (id 'test_001'): field 'question': missing or not a string"),
    ("test", _set("image_path", "x.png"), "record 1 (id 'test_001'): field 'image_path': image not found: "),
    ("test", _set("candidates", []),
     "record 1 (id 'test_001'): field 'candidates': must be a non-empty list of strings"),
    ("test", lambda r, i: r[i].__setitem__("true_false", r[i]["true_false"][:-1]),
     "record 1 (id 'test_001'): field 'true_false': {m} values for {n} candidates"),
    ("test", lambda r, i: r[i]["true_false"].__setitem__(0, 1),
     "record 1 (id 'test_001'): field 'true_false': must be a list of booleans"),
    ("train", lambda r, i: r.__setitem__(i, "oops"), "record 1: must be an object, got str"),
]


@pytest.mark.parametrize("kind,mutate,fragment", CASES, ids=[f"{c[0]}-{c[2].split(': ', 1)[1][:40]}" for c in CASES])
def test_each_case_message(work, kind, mutate, fragment):
    rec = VALID[kind][1]
    if kind == "test":
        fragment = fragment.format(m=len(rec["true_false"]) - 1, n=len(rec["candidates"]))
    else:
        fragment = fragment.format(t=_gpt_turns(rec)[0], u=_gpt_turns(rec)[0] - 1)
    path, lines = _one_bad(work, kind, mutate)
    assert any(line.startswith(f"{path}: {fragment}") for line in lines), lines


def test_unreadable_image_message(work):
    path, lines = _one_bad(work, "meta", _set("image", str(work / "broken.png")))
    assert lines[0].startswith(f"{path}: record 1 (id 'meta_001'): field 'image': image unreadable: {work / 'broken.png'} (")


def test_missing_file_and_error_limit(work, tmp_path):
    with pytest.raises(DataError, match=r"absent.json: no such file$"):
        load_records(tmp_path / "absent.json", "train")
    records = copy.deepcopy(VALID["train"][:12])
    for r in records:
        r["image"] = 3
    path = _write(work, records)
    with pytest.raises(DataError) as err:
        load_records(path, "train", max_errors=5)
    lines = str(err.value).splitlines()
    assert lines[0].startswith(f"{path}: 12 bad records")
    assert len(lines) == 1 + 5 + 1 and lines[-1] == "... and 7 more problems"


def test_summary_of_good_files():
    for kind in ("train", "meta", "test"):
        records, report = load_records(DATA / f"{kind}.json", kind)
        summary = report.summary()
        assert "\n" not in summary and f"{len(records)} {kind} records" in summary and "skipped" not in summary


def test_cli_reports_bad_data_without_traceback(work, tmp_path, capsys):
    """train.py: exit 2, the problems as lines, no traceback; --skip_bad_records says how many."""
    import train

    records = copy.deepcopy(VALID["train"][:4])
    records[2]["conversations"][_gpt_turns(records[2])[0]]["value"] = "maybe"
    path = _write(work, records)
    argv = ["--reward_model", "tiny", "--device", "cpu", "--precision", "fp32", "--train_json_file", path,
            "--weights_path", str(tmp_path / "w"), "--no_progress", "--baseline", "--iteration_num", "1"]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"error: {path}: 1 bad record (use --skip_bad_records to drop them):"
    assert err.splitlines()[1].startswith(f"{path}: record 2 (id 'train_002'): field 'conversations[")
    assert train.main(argv + ["--skip_bad_records", "--figs_dir", str(tmp_path / "f")]) == 0
    assert f"{path}: 3 train records" in capsys.readouterr().out


