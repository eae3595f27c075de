"""python -m dreamprm.meta_split: a test file split by question into a meta set and a held-out test
set, with no question on both sides (ids, question text and image), deterministic by seed."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dreamprm.meta_split import (SplitError, group_questions, main, meta_count, question_keys, shared_questions,
                                 split_by_question)
from dreamprm.records import load_records, resolve_image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
TEST = DATA / "test.json"


def _records():
    return json.loads(TEST.read_text())


def _ids(records):
    return [r["id"] for r in records]


def _repeated():
    """Ten records, five questions: ids repeat, a record without an id matches one by text and
    image, and q4's records chain by id to one whose text and image another record shares."""
    def rec(qid, question, image="images/chart_096.png"):
        r = {"question": question, "image_path": image, "candidates": ["[Reasoning]\nStep 1: x.\nAnswer: A"],
             "true_false": [True]}
        return r if qid is None else {"id": qid, **r}
    return [rec("q1", "Q1"), rec("q2", "Q2"), rec("q1", "Q1 again"), rec(None, "Q2", "./images/chart_096.png"),
            rec("q3", "Q3"), rec("q4", "Q4"), rec("q5", "Q5", "images/scene_097.png"), rec("q4", "Q4b"),
            rec(None, "Q4b"), rec("q3", "Q3", "images/scene_097.png")]


# ----------------------------------------------------------------------------------------------
# the library
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fraction, meta", [(0.25, 2), (0.5, 4), (0.01, 1), (0.99, 7), (0.3, 2), (0.0625, 1),
                                            (0.1875, 2)])
def test_the_test_file_splits_into_the_rounded_share_of_its_questions(fraction, meta):
    records = _records()
    meta_side, test_side = split_by_question(records, fraction, seed=3)
    assert (len(meta_side), len(test_side)) == (meta, 8 - meta)
    assert sorted(_ids(meta_side) + _ids(test_side)) == sorted(_ids(records))
    assert shared_questions(meta_side, test_side) == set()
    # each side keeps the file's order
    order = {r["id"]: i for i, r in enumerate(records)}
    assert all(sorted(side, key=lambda r: order[r["id"]]) == side for side in (meta_side, test_side))


def test_rounding_is_half_up_and_keeps_a_question_on_each_side():
    assert [meta_count(f, 8) for f in (0.0625, 0.1875, 0.5, 0.9375, 0.999)] == [1, 2, 4, 7, 7]
    assert meta_count(0.5, 5) == 3 and meta_count(0.1, 2) == 1 and meta_count(0.9, 2) == 1


@pytest.mark.parametrize("fraction", [0, 1, -0.5, 1.5, math.nan, math.inf])
def test_a_fraction_outside_zero_to_one_is_refused(fraction):
    with pytest.raises(SplitError, match="strictly between 0 and 1"):
        split_by_question(_records(), fraction, 0)


def test_a_single_question_cannot_be_split():
    one = [r for r in _repeated() if r.get("id") == "q1"]
    with pytest.raises(SplitError, match="1 question: a split needs at least 2"):
        split_by_question(one, 0.5, 0)


def test_the_split_is_deterministic_by_seed():
    records = _records()
    splits = {seed: _ids(split_by_question(records, 0.5, seed)[0]) for seed in range(6)}
    assert all(_ids(split_by_question(records, 0.5, seed)[0]) == ids for seed, ids in splits.items())
    assert len({tuple(ids) for ids in splits.values()}) > 1


def test_records_of_one_question_share_a_side():
    records = _repeated()
    groups = group_questions(records)
    # q1 (0, 2); q2 and the id-less record with its text and image (1, 3);
    # q3 (4, 9); q4, its second text and the id-less record with that text (5, 7, 8); q5 (6)
    assert groups == [[0, 2], [1, 3], [4, 9], [5, 7, 8], [6]]
    for seed in range(20):
        meta_side, test_side = split_by_question(records, 0.4, seed)
        assert len(group_questions(meta_side)) == 2 and len(group_questions(test_side)) == 3
        assert shared_questions(meta_side, test_side) == set()
        assert len(meta_side) + len(test_side) == 10


_record = st.fixed_dictionaries(
    {"question": st.sampled_from(["Q1", "Q2", " Q1 ", "Q3", "Q4"]),
     "image_path": st.sampled_from(["a.png", "./a.png", "b.png", "c/d.png"])},
    optional={"id": st.one_of(st.integers(0, 5), st.sampled_from(["0", "1", "x", "y"]))})


@settings(max_examples=300, deadline=None)
@given(records=st.lists(_record, min_size=2, max_size=25),
       fraction=st.floats(min_value=0, max_value=1, exclude_min=True, exclude_max=True), seed=st.integers(0, 2**32))
def test_no_question_is_on_both_sides_for_any_fraction_and_seed(records, fraction, seed):
    questions = len(group_questions(records))
    if questions < 2:
        with pytest.raises(SplitError, match="a split needs at least 2"):
            split_by_question(records, fraction, seed)
        return
    meta_side, test_side = split_by_question(records, fraction, seed)
    # every record on exactly one side (records are compared by identity: equal dicts may repeat)
    assert sorted(map(id, meta_side + test_side)) == sorted(map(id, records))
    ids = lambda side: {str(r["id"]) for r in side if "id" in r}  # noqa: E731
    text_image = lambda side: {(r["question"].strip(), os.path.normpath(r["image_path"])) for r in side}  # noqa: E731
    assert not ids(meta_side) & ids(test_side)
    assert not text_image(meta_side) & text_image(test_side)
    meta_questions = len(group_questions(meta_side))
    assert meta_questions == min(max(math.floor(fraction * questions + 0.5), 1), questions - 1)
    assert meta_questions + len(group_questions(test_side)) == questions
    assert split_by_question(records, fraction, seed) == (meta_side, test_side)


def test_question_keys_are_the_id_and_the_stripped_text_with_the_normalised_image():
    assert question_keys({"id": 3, "question": " Q ", "image_path": "./a/../b.png"}) == [
        ("text+image", "Q", "b.png"), ("id", "3")]


# ----------------------------------------------------------------------------------------------
# the command line
# ----------------------------------------------------------------------------------------------
def _split(tmp_path, *extra, source=TEST, fraction="0.25", meta="meta.json", test="heldout.json"):
    return main(["--test_json_file", str(source), "--meta_from_test", fraction,
                 "--meta_out", str(tmp_path / meta), "--test_out", str(tmp_path / test), *extra])


def test_the_cli_writes_a_meta_file_and_a_held_out_test_file(tmp_path, capsys):
    assert _split(tmp_path, "--seed", "1") == 0
    records = _records()
    meta_side, test_side = split_by_question(records, 0.25, 1)
    candidates = sum(len(r["candidates"]) for r in meta_side)
    assert capsys.readouterr().out == (
        f"{TEST}: 8 questions split by question (seed 1): 2 into {tmp_path / 'meta.json'} ({candidates} meta "
        f"records), 6 into {tmp_path / 'heldout.json'}; no test question is in the meta set\n")

    meta, report = load_records(tmp_path / "meta.json", "meta")
    want = [(f"{r['id']}#{k}", c, ok) for r in meta_side for k, (c, ok) in enumerate(zip(r["candidates"],
                                                                                           r["true_false"]))]
    assert [(m["id"], m["response"], m["true_false"]) for m in meta] == want  # one record per candidate
    by_id = {r["id"]: r for r in meta_side}
    for m in meta:
        source = by_id[m["id"].split("#")[0]]
        assert resolve_image(m["image"], tmp_path / "meta.json").samefile(DATA / source["image_path"])
        assert m["conversations"][1]["value"] == "### Question:\n" + source["question"]

    held, _ = load_records(tmp_path / "heldout.json", "test")
    assert [{k: v for k, v in r.items() if k != "image_path"} for r in held] == [
        {k: v for k, v in r.items() if k != "image_path"} for r in test_side]
    for r, source in zip(held, test_side):
        assert resolve_image(r["image_path"], tmp_path / "heldout.json").samefile(DATA / source["image_path"])
    assert not {r["id"] for r in held} & {m["id"].split("#")[0] for m in meta}


def test_image_paths_are_kept_where_they_resolve_and_rewritten_where_not(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(DATA / "images", src / "images")
    shutil.copy(TEST, src / "test.json")
    # beside the input: the same relative paths
    assert _split(src, source=src / "test.json", meta="meta.json", test="heldout.json") == 0
    held = json.loads((src / "heldout.json").read_text())
    assert all(r["image_path"].startswith("images/") for r in held)
    assert all(m["image"].startswith("images/") for m in json.loads((src / "meta.json").read_text()))
    # in another folder: relative to it
    assert _split(tmp_path / "out", source=src / "test.json") == 0
    held = json.loads((tmp_path / "out" / "heldout.json").read_text())
    assert all(r["image_path"].startswith("../src/images/") for r in held)
    load_records(tmp_path / "out" / "heldout.json", "test")
    load_records(tmp_path / "out" / "meta.json", "meta")


def test_repeated_ids_jsonl_outputs_and_records_without_an_id(tmp_path, capsys):
    (tmp_path / "images").symlink_to(DATA / "images")
    source = tmp_path / "repeated.json"
    source.write_text(json.dumps(_repeated()))
    assert _split(tmp_path, "--seed", "4", source=source, fraction="0.6", meta="m.jsonl", test="t.jsonl") == 0
    assert "5 questions split by question (seed 4): 3 into" in capsys.readouterr().out
    meta, _ = load_records(tmp_path / "m.jsonl", "meta")
    held, _ = load_records(tmp_path / "t.jsonl", "test")
    records = _repeated()
    meta_side, test_side = split_by_question(records, 0.6, 4)
    assert len(meta) == len(meta_side) and held == test_side  # one candidate per record here
    # a record without an id is named by its index in the file
    index = {id(r): i for i, r in enumerate(records)}
    assert [m["id"] for m in meta] == [f"{r.get('id', f'record_{index[id(r)]}')}#0" for r in meta_side]
    assert any("id" not in r for r in meta_side + test_side)


@pytest.mark.parametrize("fraction", ["0", "1", "1.5", "-0.2", "nan"])
def test_the_cli_refuses_a_bad_fraction_in_one_line(tmp_path, capsys, fraction):
    assert _split(tmp_path, fraction=fraction) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --meta_from_test must be a fraction strictly between 0 and 1 (got {float(fraction)})"
    assert list(tmp_path.iterdir()) == []


def test_the_cli_refuses_a_file_of_one_question(tmp_path, capsys):
    (tmp_path / "images").symlink_to(DATA / "images")
    source = tmp_path / "one.json"
    source.write_text(json.dumps([r for r in _repeated() if r.get("id") == "q1"]))
    assert _split(tmp_path, source=source) == 2
    assert capsys.readouterr().err.strip() == (f"error: {source}: 1 question; a split needs at least 2, "
                                               "one for each side")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "one.json"]


@pytest.mark.parametrize("meta, test, fragment", [
    ("in.json", "t.json", "--meta_out {d}/in.json is the --test_json_file"),
    ("m.json", "in.json", "--test_out {d}/in.json is the --test_json_file"),
    ("m.json", "m.json", "--meta_out and --test_out are the same file"),
    ("sub", "t.json", "--meta_out {d}/sub is a folder"),
])
def test_the_cli_refuses_clashing_outputs_in_one_line(tmp_path, capsys, meta, test, fragment):
    shutil.copy(TEST, tmp_path / "in.json")
    (tmp_path / "sub").mkdir()
    before = (tmp_path / "in.json").read_text()
    assert _split(tmp_path, source=tmp_path / "in.json", meta=meta, test=test) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: " + fragment.format(d=tmp_path)), err
    assert (tmp_path / "in.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.json", "sub"]


def test_the_module_runs_as_a_command(tmp_path):
    def run(*argv):
        return subprocess.run([sys.executable, "-m", "dreamprm.meta_split", *argv], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
    done = run("--test_json_file", str(TEST), "--meta_from_test", "0.5", "--meta_out", "m.json", "--test_out", "t.json")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.count("\n") == 1 and "4 into m.json" in done.stdout and "4 into t.json" in done.stdout
    missing = run("--test_json_file", "nope.json", "--meta_from_test", "0.5", "--meta_out", "m2.json",
                  "--test_out", "t2.json")
    assert missing.returncode == 2 and missing.stderr.strip() == "error: nope.json: no such file"
