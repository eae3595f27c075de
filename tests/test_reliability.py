"""Nothing lost: validated inputs, atomic checkpoints, exact resume, signals, non-finite losses.

(a) malformed training / meta / test files: one DataError naming file, record and field;
    ``skip_bad`` keeps exactly the good records (property-based and one test per case);
(b) a run interrupted at iteration 3 and resumed equals an uninterrupted run, bit for bit;
(c) a real SIGTERM to ``train.py``: exit 143, a checkpoint, a message about --resume;
(d) a non-finite loss skips the update, is counted, and --max_bad_steps stops the run;
(e) checkpoint files: kept count, no temporaries, safetensors, weights_only trainer state.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file

from dreamprm.data import DataError, load_records

# A skipped first update makes Betty step the scheduler before any optimizer step: expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------------------------------------
# (a) validation
# ---------------------------------------------------------------------------------------------

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
    assert "Traceback" not in message
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
        assert str(err.value) == f"{path}: the top level must be a JSON list of records, got {type(top).__name__}"


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(["train", "meta", "test"]), cut=st.integers(1, 400), junk=st.sampled_from(["", "}", ",", "x"]))
def test_invalid_json_text(tmp_path_factory, kind, cut, junk):
    text = json.dumps(VALID[kind][:2])
    path = _write(tmp_path_factory.mktemp("json"), None, text[: min(cut, len(text) - 1)] + junk)
    with pytest.raises(DataError) as err:
        load_records(path, kind)
    message = str(err.value)
    assert message.startswith(f"{path}: not valid JSON (") and "\n" not in message


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
    with pytest.raises(DataError, match=r"file not found$"):
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
    assert "Traceback" not in err
    assert err.splitlines()[0] == f"error: {path}: 1 bad record (use --skip_bad_records to drop them):"
    assert err.splitlines()[1].startswith(f"{path}: record 2 (id 'train_002'): field 'conversations[")
    assert train.main(argv + ["--skip_bad_records", "--figs_dir", str(tmp_path / "f")]) == 0
    assert f"{path}: 3 train records" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# training runs (tiny model, CPU, fp32)
# ---------------------------------------------------------------------------------------------

def _argv(weights: Path, *extra: str) -> list[str]:
    return ["--reward_model", "tiny", "--device", "cpu", "--precision", "fp32", "--weights_path", str(weights),
            "--meta_lr", "5e-3", "--figs_dir", str(weights / "figs"), "--no_progress",
            "--train_json_file", str(DATA / "train.json"), "--meta_json_file", str(DATA / "meta.json"), *extra]


def _args(weights: Path, *extra: str):
    from arguments import train_parser

    return train_parser().parse_args(_argv(weights, *extra))


def _run(weights: Path, *extra: str, stop_at: int | None = None, each=None):
    """Run a Trainer in-process; ``stop_at`` delivers SIGTERM (via the handler) during that iteration."""
    from dreamprm.trainer import Trainer

    trainer = Trainer(_args(weights, *extra))
    inner = trainer.engine.on_iteration

    def on_iteration(it):
        if stop_at is not None and it == stop_at:
            trainer._handle_signal(signal.SIGTERM, None)
        if each is not None:
            each(trainer, it)
        return inner(it)

    trainer.engine.on_iteration = on_iteration
    trainer.run()
    return trainer


def _metrics(weights: Path) -> list[dict]:
    return [json.loads(line) for line in (weights / "metrics.jsonl").read_text().splitlines()]


COMMON = ("--iteration_num", "6", "--save_every_iterations", "2", "--seed", "3")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Run A for both weighting methods: 6 iterations in one go."""
    out = {}
    for method in ("table", "net"):
        w = tmp_path_factory.mktemp(f"A-{method}")
        _run(w, *COMMON, "--reweighting", method)
        out[method] = w
    return out


@pytest.mark.parametrize("method,stop", [("table", 3), ("net", 1)])
def test_interrupted_and_resumed_equals_uninterrupted(uninterrupted, tmp_path, method, stop):
    from dreamprm.trainer import TrainingInterrupted

    a, b = uninterrupted[method], tmp_path / "B"
    with pytest.raises(TrainingInterrupted) as err:
        _run(b, *COMMON, "--reweighting", method, stop_at=stop)
    assert err.value.exit_code == 128 + signal.SIGTERM
    assert "--resume" in str(err.value) and f"iter-{stop:08d}" in str(err.value)
    assert (b / "checkpoints" / f"iter-{stop:08d}").is_dir()
    assert len(_metrics(b)) == stop

    _run(b, *COMMON, "--reweighting", method, "--resume")

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert json.loads((a / "instance_weights.json").read_text()) == json.loads((b / "instance_weights.json").read_text())
    ca, cb = (load_file(str(w / "checkpoints" / "iter-00000006" / "weight_model.safetensors")) for w in (a, b))
    assert ca.keys() == cb.keys() and all(torch.equal(ca[k], cb[k]) for k in ca)

    ma, mb = _metrics(a), _metrics(b)
    assert [r["iteration"] for r in mb] == [1, 2, 3, 4, 5, 6]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(ma) == strip(mb)


def test_resume_after_a_hard_kill(uninterrupted, tmp_path):
    """A run killed (SIGKILL) mid-way: only iter-4 survived, metrics went on to 6 and a cut line.

    Resuming redoes 5 and 6 from iter-4, drops the stale metrics rows, and ends where A did.
    """
    a, c = uninterrupted["table"], tmp_path / "C"
    shutil.copytree(a, c)
    shutil.rmtree(c / "checkpoints" / "iter-00000006")
    for name in ("model.safetensors", "instance_weights.json"):
        (c / name).unlink()
    with open(c / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 7, "lower_lo')
    _run(c, *COMMON, "--reweighting", "table", "--resume")
    wa, wc = load_file(str(a / "model.safetensors")), load_file(str(c / "model.safetensors"))
    assert wa.keys() == wc.keys() and all(torch.equal(wa[k], wc[k]) for k in wa)
    assert (a / "instance_weights.json").read_text() == (c / "instance_weights.json").read_text()
    assert [r["iteration"] for r in _metrics(c)] == [1, 2, 3, 4, 5, 6]


def test_checkpoint_files(uninterrupted, tmp_path):
    """keep_checkpoints, no temporaries, safetensors weights, weights_only trainer state."""
    from dreamprm.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint

    w = uninterrupted["table"]
    names = sorted(p.name for p in (w / "checkpoints").iterdir())
    assert names == ["iter-00000004", "iter-00000006"]  # saved at 2, 4, 6; --keep_checkpoints 2
    leftovers = [p for p in w.rglob("*") if p.name.startswith((".tmp", ".export")) or p.name.endswith(".tmp")]
    assert leftovers == []
    ckpt = latest_checkpoint(w)
    assert ckpt.name == "iter-00000006"
    prm_files = {p.name for p in (ckpt / "prm").iterdir()}
    assert "model.safetensors" in prm_files and not any(n.endswith((".bin", ".pt", ".pth")) for n in prm_files)
    with safe_open(str(ckpt / "prm" / "model.safetensors"), "pt") as f:
        assert len(list(f.keys())) > 10
    load_file(str(ckpt / "weight_model.safetensors"))
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True, map_location="cpu")
    assert state["iteration"] == 6
    for key in ("train_stream", "meta_stream", "net_seen", "rng", "lower", "upper"):
        assert key in state, key
    for level in ("lower", "upper"):
        assert state[level]["optimizer"]["state"] and state[level]["scheduler"] is not None
        assert state[level]["count"] == 6
    assert {"python", "numpy_keys", "torch"} <= set(state["rng"])
    assert state["train_stream"]["taken"] + state["train_stream"]["epoch"] > 0

    # keep=1 and a half-written checkpoint: the temporary folder is never picked up, the
    # finished checkpoints stay, and the next save clears the temporary.
    copy_root = tmp_path / "w"
    shutil.copytree(w / "checkpoints", copy_root / "checkpoints")
    (copy_root / "checkpoints" / ".tmp-iter-00000009").mkdir()
    assert latest_checkpoint(copy_root).name == "iter-00000006"

    class Boom(Exception):
        pass

    class FailingPRM:
        def save_pretrained(self, path):
            raise Boom

    with pytest.raises(Boom):
        save_checkpoint(copy_root, 9, FailingPRM(), None, {}, {}, keep=1)
    assert [p.name for p in list_checkpoints(copy_root)] == ["iter-00000004", "iter-00000006"]


def test_keep_checkpoints_flag(tmp_path):
    w = tmp_path / "k"
    _run(w, "--iteration_num", "3", "--save_every_iterations", "1", "--keep_checkpoints", "1", "--baseline")
    assert sorted(p.name for p in (w / "checkpoints").iterdir()) == ["iter-00000003"]


# -- (d) non-finite losses -------------------------------------------------------------------

def _nan_on(monkeypatch, iterations) -> dict:
    """Make the lower loss NaN at ``iterations`` (None: always); returns a dict that holds the
    run's Trainer under "trainer" once it is built."""
    import dreamprm.problems as problems
    import dreamprm.trainer as trainer_mod

    trainer_box: dict = {}
    real_init = trainer_mod.Trainer.__init__

    def init(self, args):
        real_init(self, args)
        trainer_box["trainer"] = self

    monkeypatch.setattr(trainer_mod.Trainer, "__init__", init)
    real = problems.instance_losses

    def losses(*args, **kwargs):
        out = real(*args, **kwargs)
        trainer = trainer_box.get("trainer")
        if trainer is not None and (iterations is None or trainer.engine.global_step in iterations):
            out = out * float("nan")
        return out

    monkeypatch.setattr(problems, "instance_losses", losses)
    return trainer_box


def _params(trainer) -> dict:
    return {k: v.detach().clone() for k, v in trainer.prm.model.state_dict().items()}


@pytest.mark.parametrize("mode", ["--baseline", "bilevel"])
def test_nan_loss_is_skipped_and_counted(monkeypatch, tmp_path, mode):
    _nan_on(monkeypatch, {2})
    after: dict = {}  # PRM parameters after each iteration

    def each(trainer, it):
        after[it] = _params(trainer)

    extra = ("--baseline",) if mode == "--baseline" else ()
    trainer = _run(tmp_path / "n", "--iteration_num", "3", "--save_every_iterations", "3", *extra, each=each)
    rows = _metrics(tmp_path / "n")
    assert [r["skipped_lower"] for r in rows] == [0, 1, 1]
    assert rows[1]["lower_loss"] != rows[1]["lower_loss"]  # NaN is recorded as such
    p1, p2, p3 = after[1], after[2], after[3]
    changed = lambda x, y: any(not torch.equal(x[k], y[k]) for k in x)  # noqa: E731
    if mode == "--baseline":
        assert all(torch.equal(p1[k], p2[k]) for k in p1), "a skipped update changed the PRM"
    else:
        # Betty's darts perturbs the PRM by +eps*v, -2eps*v, +eps*v around the meta gradient,
        # which restores it only up to rounding; the skipped optimizer step adds nothing.
        for k in p1:
            assert torch.allclose(p1[k], p2[k], rtol=0, atol=1e-6), k
        assert rows[1]["skipped_upper"] == 1 and rows[0]["skipped_upper"] == 0
    assert changed(p2, p3), "the next (finite) step must update the PRM again"
    assert trainer.lower.bad_in_a_row == 0 and trainer.lower.skipped_updates == 1
    assert all(torch.isfinite(v).all() for v in trainer.prm.model.state_dict().values())


def test_persistent_nan_stops_the_run(monkeypatch, tmp_path, capsys):
    import dreamprm.trainer as trainer_mod
    import train

    _nan_on(monkeypatch, None)
    w = tmp_path / "d"
    rc = train.main(_argv(w, "--iteration_num", "10", "--save_every_iterations", "10", "--max_bad_steps", "2",
                          "--baseline"))
    assert rc == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: stopped at iteration 2: 2 non-finite lower-level updates in a row "
                              "(--max_bad_steps 2)")
    assert [r["skipped_lower"] for r in _metrics(w)] == [1, 2]
    with pytest.raises(trainer_mod.TrainingDiverged, match="non-finite"):
        trainer_mod.Trainer(_args(tmp_path / "e", "--iteration_num", "5", "--max_bad_steps", "1")).run()


# -- (c) a real SIGTERM ------------------------------------------------------------------------

def test_sigterm_saves_and_resumes(tmp_path):
    import train

    w = tmp_path / "s"
    argv = _argv(w, "--iteration_num", "100000", "--save_every_iterations", "100000", "--baseline")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        metrics = w / "metrics.jsonl"
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    assert "Traceback" not in err
    assert "SIGTERM received: saved a checkpoint at iteration" in err and "--resume" in err
    done = len(_metrics(w))
    assert (w / "checkpoints" / f"iter-{done:08d}" / "trainer_state.pt").is_file()

    rc = train.main(_argv(w, "--iteration_num", str(done + 2), "--save_every_iterations", "100000", "--baseline",
                          "--resume"))
    assert rc == 0
    assert [r["iteration"] for r in _metrics(w)] == list(range(1, done + 3))
    assert (w / "checkpoints" / f"iter-{done + 2:08d}").is_dir()
