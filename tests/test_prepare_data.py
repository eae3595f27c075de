"""data/prepare_visualprm.py and data/prepare_meta_test.py on small files in the published schemas."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, DATA / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


pv = _load("prepare_visualprm")
pm = _load("prepare_meta_test")

from dreamprm.prompt import SYSTEM_PROMPT  # noqa: E402
from dreamprm.steps import split_steps  # noqa: E402


# ------------------------------------------------------------------------------ VisualPRM400K
def _vprm(i, scores, **extra):
    """A VisualPRM400K-v1.1-Raw record: image, question, answer, response, steps_with_score."""
    return {"image": f"Geo/{i}.png", "question": f"<image>\nWhat is x{i}?", "answer": "3",
            "response": " ".join(f"s{j}" for j in range(len(scores))), "num_mc_sequences": 16,
            "steps_with_score": [{"step": f"step {j} of {i}", "score": s} for j, s in enumerate(scores)], **extra}


@pytest.fixture
def vprm_dir(tmp_path):
    d = tmp_path / "annotations"
    d.mkdir()
    # 12 positive (all > 0) and 8 negative (some step 0) instances in "geo"; 6 + 4 in "chart"
    geo = [_vprm(i, [0.5, 0.25]) for i in range(12)] + [_vprm(100 + i, [0.5, 0.0, 0.0]) for i in range(8)]
    chart = [_vprm(200 + i, [1.0]) for i in range(6)] + [_vprm(300 + i, [0.0], data_source="ChartQA") for i in range(4)]
    (d / "geo.jsonl").write_text("".join(json.dumps(r) + "\n" for r in geo))
    (d / "chart.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chart))
    return d


def test_visualprm_labels_and_format(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps(_vprm(1, [0.75, 0.0625, 0.0])) + "\n")
    rec = pv.convert_record(json.loads(f.read_text()), f"{f}:1", "a")
    assert rec["id"] == "a:1" and rec["image"] == "Geo/1.png" and rec["dataset"] == "a"
    conv = rec["conversations"]
    assert conv[0] == {"from": "human", "value": "### Question:\nWhat is x1?"}
    assert [t["value"] for t in conv[1::2]] == ["step 0 of 1", "step 1 of 1", "step 2 of 1"]
    assert [t["value"] for t in conv[2::2]] == ["+", "+", "-"]  # mc > 0
    assert all(t["from"] == "human" for t in conv[1::2]) and all(t["from"] == "gpt" for t in conv[2::2])
    strict = pv.convert_record(json.loads(f.read_text()), f"{f}:1", "a", mc_threshold=0.1)
    assert [t["value"] for t in strict["conversations"][2::2]] == ["+", "-", "-"]
    # score from num_mc_correct / num_mc_total when absent
    r = _vprm(2, [0.0])
    r["steps_with_score"] = [{"step": "x", "num_mc_correct": 1, "num_mc_total": 16}]
    assert pv.convert_record(r, "f:1", "f")["conversations"][2]["value"] == "+"


def test_visualprm_balance_counts_and_datasets(vprm_dir, tmp_path):
    out = tmp_path / "train.json"
    assert pv.main([str(vprm_dir), "--output", str(out), "--num_samples", "10", "--seed", "1"]) == 0
    recs = json.loads(out.read_text())
    pos = [r for r in recs if pv.is_positive(r)]
    assert len(recs) == 10 and len(pos) == 5
    # all data, balanced: 12 negatives in total (8 geo + 4 chart) vs 18 positives -> 12 + 12
    recs, counts = pv.prepare([vprm_dir], None, seed=0)
    assert counts["records_read"] == 30 and counts["instances"] == 24
    assert counts["positive_instances"] == counts["negative_instances"] == 12
    assert counts["per_dataset"]["ChartQA"]["negative_instances"] == 4  # data_source field wins
    assert counts["per_dataset"]["geo"]["negative_instances"] == 8
    assert counts["steps"] == counts["positive_steps"] + counts["negative_steps"]
    assert sum(d["instances"] for d in counts["per_dataset"].values()) == 24
    _, c2 = pv.prepare([vprm_dir], None, seed=0, balance=False)
    assert c2["instances"] == 30


def test_visualprm_deterministic_sampling(vprm_dir):
    ids = lambda seed: [r["id"] for r in pv.prepare([vprm_dir], 8, seed=seed)[0]]  # noqa: E731
    assert ids(3) == ids(3)
    assert ids(3) != ids(4)
    assert len(set(ids(3))) == 8


def test_visualprm_presets_and_shortfall(vprm_dir, tmp_path, capsys):
    out = tmp_path / "t.json"
    assert pv.main([str(vprm_dir / "geo.jsonl"), "-o", str(out), "--preset", "table"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["instances"] == 16 and counts["shortfall"] == 12_000 - 16
    assert pv.PRESETS == {"table": 12_000, "net": 100_000, "coldstart": 20_000}


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r.pop("question"), "question"),
    (lambda r: r.pop("image"), "image"),
    (lambda r: r.pop("steps_with_score"), "steps_with_score"),
    (lambda r: r.update(steps_with_score=[]), "steps_with_score"),
    (lambda r: r["steps_with_score"][1].update(score="high"), "steps_with_score[1].score"),
    (lambda r: r["steps_with_score"][0].pop("step"), "steps_with_score[0].step"),
])
def test_visualprm_malformed(tmp_path, capsys, mutate, field):
    good, bad = _vprm(1, [0.5, 0.5]), _vprm(2, [0.5, 0.5])
    mutate(bad)
    f = tmp_path / "in.jsonl"
    f.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    assert pv.main([str(f), "-o", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {f}:2: {field}:") and err.count("\n") == 1


def test_visualprm_bad_json_and_duplicates(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text(json.dumps(_vprm(1, [0.5])) + "\n{not json\n")
    with pytest.raises(pv.DataError, match=rf"{f}:2: <json>"):
        pv.prepare([f])
    f.write_text(json.dumps(_vprm(1, [0.5], id="x")) + "\n" + json.dumps(_vprm(2, [0.5], id="x")) + "\n")
    with pytest.raises(pv.DataError, match=rf"{f}:2: id: duplicate"):
        pv.prepare([f])
    f.write_text(json.dumps({"image": "a.png", "conversations": []}) + "\n")
    with pytest.raises(pv.DataError, match=r"steps_with_score: missing \(a conversation-form"):
        pv.prepare([f])


# ------------------------------------------------------------------------------ meta / test
QUESTIONS = [
    {"id": "validation_Art_1", "question": "<image 1> Which color?", "options": "['red', 'blue', 'green']",
     "answer": "B", "image_1": "imgs/1.png"},
    {"id": 2, "question": "How many apples?", "options": [], "answer": "12", "image_path": "imgs/2.png"},
    {"id": "q3", "question": "Pick one", "options": {"A": "a cat", "B": "a dog"}, "answer": "A", "image": "imgs/3.png"},
    {"id": "q4", "question": "Capital?", "answer": "['Paris', 'paris, france']", "image": "imgs/4.png"},
    {"id": "q5", "question": "Unused", "options": ["x", "y"], "answer": "A", "image": "imgs/5.png"},
]
CANDIDATES = [
    ("validation_Art_1", "[Reasoning] Step 1: The sky part is blue.\nStep 2: So blue.\nAnswer: (B)"),
    ("validation_Art_1", "It looks red to me, so the answer is a."),
    ("validation_Art_1", "Answer: blue"),
    ("validation_Art_1", "Answer: B) blue"),
    (2, "[Reasoning] 1. Count rows: 3\n2. 4 per row\nAnswer: 12.0"),
    (2, "Answer: 1,2"),
    ("q3", "Answer: A cat"),
    ("q3", "Answer: \\boxed{b}"),
    ("q4", "Answer: PARIS."),
]


@pytest.fixture
def qc(tmp_path):
    q = tmp_path / "questions.jsonl"
    q.write_text("".join(json.dumps(r) + "\n" for r in QUESTIONS))
    c = tmp_path / "cands.jsonl"
    c.write_text("".join(json.dumps({("id" if i % 2 else "question_id"): qid, "candidate": t}) + "\n"
                         for i, (qid, t) in enumerate(CANDIDATES)))
    return q, c


def test_meta_and_test_outputs(qc, tmp_path, capsys):
    q, c = qc
    meta_p, test_p = tmp_path / "meta.json", tmp_path / "test.json"
    assert pm.main(["--questions", str(q), "--candidates", str(c), "--meta_out", str(meta_p), "--test_out", str(test_p)]) == 0
    counts = json.loads(capsys.readouterr().out)
    meta, test = json.loads(meta_p.read_text()), json.loads(test_p.read_text())
    assert counts["questions"] == 5 and counts["questions_without_candidates"] == 1
    assert counts["candidates"] == len(meta) == 9 and counts["test_records"] == len(test) == 4
    t0 = test[0]
    assert t0["id"] == "validation_Art_1" and t0["image_path"] == "imgs/1.png"
    assert t0["question"] == "<image 1> Which color?\nA. red\nB. blue\nC. green"
    assert t0["true_false"] == [True, False, True, True]
    assert test[1]["true_false"] == [True, False] and test[1]["id"] == 2
    assert test[2]["true_false"] == [True, False]
    assert test[3]["true_false"] == [True]
    assert counts["correct_candidates"] == 6 and counts["incorrect_candidates"] == 3
    m0 = meta[0]
    # upstream's meta_MMMU_Pro.json record shape, keys in its order
    assert list(m0) == ["id", "response", "true_false", "image", "conversations"]
    assert m0["id"] == "validation_Art_1#0" and m0["image"] == "imgs/1.png" and m0["true_false"] is True
    assert m0["response"] == CANDIDATES[0][1]
    conv = m0["conversations"]
    assert conv[0] == {"from": "system", "value": SYSTEM_PROMPT}
    assert conv[1] == {"from": "human", "value": "### Question:\n" + t0["question"]}
    assert [t["value"] for t in conv[2::2]] == ["The sky part is blue.", "So blue.", "Answer: (B)"]
    assert [t["value"] for t in conv[3::2]] == ["+", "+", "+"]
    assert all(t["from"] == "human" for t in conv[2::2]) and all(t["from"] == "gpt" for t in conv[3::2])
    # without [Reasoning] upstream's split keeps the answer in the body step too
    assert [t["value"] for t in meta[2]["conversations"][2::2]] == ["Answer: blue", "Answer: blue"]
    for m, (qid, text) in zip(meta, CANDIDATES):
        assert m["response"] == text
        assert [t["value"] for t in m["conversations"][2::2]] == split_steps(text, "upstream")
    assert counts["steps"] == sum(len(split_steps(text)) for _, text in CANDIDATES)


def test_meta_step_splitter_flag(qc, tmp_path, capsys):
    q, c = qc
    meta_p = tmp_path / "meta.json"
    args = ["--questions", str(q), "--candidates", str(c), "--meta_out", str(meta_p)]
    assert pm.main(args + ["--step_splitter", "clean"]) == 0
    meta = json.loads(meta_p.read_text())
    for m, (qid, text) in zip(meta, CANDIDATES):
        assert [t["value"] for t in m["conversations"][2::2]] == split_steps(text, "clean")
    assert [t["value"] for t in meta[2]["conversations"][2::2]] == ["Answer: blue"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        pm.main(args + ["--step_splitter", "nope"])
    assert "invalid choice" in capsys.readouterr().err


def test_meta_record_question_strip_and_empty_step():
    rec = pm.meta_record("q#0", "  <image 1> Which?\nA. x\nB. y \n", "i.png", "[Reasoning]\nAnswer: B", False)
    assert rec == {"id": "q#0", "response": "[Reasoning]\nAnswer: B", "true_false": False, "image": "i.png",
                   "conversations": [{"from": "system", "value": SYSTEM_PROMPT},
                                     {"from": "human", "value": "### Question:\n<image 1> Which?\nA. x\nB. y"},
                                     {"from": "human", "value": ""}, {"from": "gpt", "value": "+"},
                                     {"from": "human", "value": "Answer: B"}, {"from": "gpt", "value": "+"}]}


@pytest.mark.parametrize("splitter", ["upstream", "clean"])
def test_meta_rejects_candidate_without_any_step(qc, tmp_path, capsys, splitter):
    q, c = qc
    n = len(c.read_text().splitlines()) + 1
    c.write_text(c.read_text() + json.dumps({"id": "q3", "candidate": "[Reasoning]\nStep 1:\nStep 2:\nAnswer:"}) + "\n")
    args = ["--questions", str(q), "--candidates", str(c), "--test_out", str(tmp_path / "t.json")]
    assert pm.main(args + ["--step_splitter", splitter]) == 2
    assert capsys.readouterr().err.startswith(f"error: {c}:{n}: candidate: no non-empty step")


@pytest.mark.parametrize("text, letter", [
    ("Answer: (B)", "B"), ("so the answer is b.", "B"), ("Answer: B) 42", "B"), ("Answer: 42", "B"),
    ("Answer: a cat", "C"), ("Answer: Option c", "C"), ("Answer: \\boxed{D}", "D"), ("Answer: [A]", "A"),
    ("Answer: The answer is B", "B"), ("Final answer: d", "D"), ("Answer: E", None), ("nothing", None),
    ("Answer: 41 or 42", None),
])
def test_extract_choice(text, letter):
    options = pm.normalize_options(["41", "42", "a cat", "none of these"])
    assert pm.extract_choice(text, options) == letter


@pytest.mark.parametrize("pred, gold, ok", [
    ("1,000.0", "1000", True), ("3/4", "0.75", True), ("0.333", "1/3", True), (" Paris. ", "paris", True),
    ("3.14", "3.2", False), ("45%", "45", True), ("7", ["6", "7.0"], True), ("New  York", "new york", True),
    ("12", "12 apples", False), (None, "1", False),
])
def test_free_answers(pred, gold, ok):
    assert pm.free_is_correct(pred, gold) is ok


def test_normalize_options_forms():
    assert pm.normalize_options("['x', 'y']") == {"A": "x", "B": "y"}
    assert pm.normalize_options({"a": 1, "B": 2}) == {"A": "1", "B": "2"}
    assert pm.normalize_options(None) == {} and pm.normalize_options("[]") == {}
    with pytest.raises(ValueError):
        pm.normalize_options({"AB": "x"})


@pytest.mark.parametrize("which, line, field", [
    ("q", '{"id": "z", "options": ["a"], "answer": "A", "image": "i.png"}', "question"),
    ("q", '{"id": "z", "question": "?", "options": ["a", "b"], "answer": "C", "image": "i.png"}', "answer"),
    ("q", '{"id": "z", "question": "?", "options": 5, "answer": "A", "image": "i.png"}', "options"),
    ("q", '{"id": "z", "question": "?", "answer": "1"}', "image_path"),
    ("q", '{"question": "?", "answer": "1", "image": "i.png"}', "id"),
    ("q", "{oops", "<json>"),
    ("c", '{"id": "nope", "candidate": "Answer: A"}', "id"),
    ("c", '{"question_id": "nope", "candidate": "Answer: A"}', "question_id"),
    ("c", '{"id": "q3", "candidate": ""}', "candidate"),
    ("c", '{"candidate": "Answer: A"}', "id"),
])
def test_meta_malformed(qc, tmp_path, capsys, which, line, field):
    q, c = qc
    target = q if which == "q" else c
    n = len(target.read_text().splitlines()) + 1
    target.write_text(target.read_text() + line + "\n")
    assert pm.main(["--questions", str(q), "--candidates", str(c), "--test_out", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {target}:{n}: {field}:"), err
    assert err.count("\n") == 1


# ------------------------------------------------------------------------------ any input, any flag
def _one_error_line(capsys, prefix: str) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert captured.err.startswith(prefix) and captured.err.count("\n") == 1, captured.err
    return captured.err


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_invalid_utf8_is_one_line_naming_file_and_line(tmp_path, capsys, suffix):
    good = json.dumps(_vprm(1, [0.5]))
    f = tmp_path / f"in{suffix}"
    if suffix == ".jsonl":
        f.write_bytes(good.encode() + b"\n" + good.encode() + b"\n" + b'{"question": "caf\xe9"}\n')
    else:
        f.write_bytes(b"[" + good.encode() + b",\n" + b'{"question": "caf\xe9"}]')
    assert pv.main([str(f), "-o", str(tmp_path / "o.json")]) == 2
    line = 3 if suffix == ".jsonl" else 2
    _one_error_line(capsys, f"error: {f}:{line}: <utf-8>: invalid UTF-8 (byte 0xe9 at column 18)")
    q = tmp_path / f"q{suffix}"
    good = [json.dumps(r).encode() for r in QUESTIONS[:2]]
    if suffix == ".jsonl":
        q.write_bytes(good[0] + b"\n" + good[1] + b"\n" + b'{"question": "caf\xe9"}\n')
    else:
        q.write_bytes(b"[" + good[0] + b",\n" + b'{"question": "caf\xe9"}]')
    c = tmp_path / "c.jsonl"
    c.write_text("")
    assert pm.main(["--questions", str(q), "--candidates", str(c), "--test_out", str(tmp_path / "t.json")]) == 2
    _one_error_line(capsys, f"error: {q}:{line}: <utf-8>: invalid UTF-8")
    assert not (tmp_path / "o.json").exists() and not (tmp_path / "t.json").exists()


def test_a_byte_order_mark_is_read_and_a_lone_surrogate_is_refused(tmp_path, capsys):
    f = tmp_path / "in.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + json.dumps(_vprm(1, [0.5])).encode() + b"\n")
    assert pv.main([str(f), "-o", str(tmp_path / "o.json"), "--no_balance"]) == 0
    capsys.readouterr()
    f.write_text(json.dumps(_vprm(1, [0.5])) + "\n" + json.dumps(_vprm(2, [0.5])).replace("step 0", "\\udc80") + "\n")
    assert pv.main([str(f), "-o", str(tmp_path / "o.json")]) == 2
    _one_error_line(capsys, f"error: {f}:2: <json>: a string holds the lone surrogate \\udc80")


def test_output_equal_to_an_input_is_refused_and_the_input_kept(vprm_dir, tmp_path, capsys):
    f = vprm_dir / "geo.jsonl"
    before = f.read_bytes()
    for target in (f, vprm_dir / "." / "geo.jsonl"):
        assert pv.main([str(vprm_dir), "-o", str(target)]) == 2
        _one_error_line(capsys, f"error: {target}: is also an input file")
    assert f.read_bytes() == before
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps(QUESTIONS[1]) + "\n")
    c = tmp_path / "c.jsonl"
    c.write_text(json.dumps({"id": 2, "candidate": "Answer: 12"}) + "\n")
    for flags in (["--meta_out", str(q)], ["--test_out", str(c)]):
        assert pm.main(["--questions", str(q), "--candidates", str(c), *flags]) == 2
        _one_error_line(capsys, "error: ")
    assert pm.main(["--questions", str(q), "--candidates", str(c), "--meta_out", str(tmp_path / "x.json"),
                    "--test_out", str(tmp_path / "x.json")]) == 2
    _one_error_line(capsys, f"error: {tmp_path / 'x.json'}: --meta_out and --test_out name the same file")
    assert q.read_text() == json.dumps(QUESTIONS[1]) + "\n"


def test_output_that_is_a_folder_or_unwritable_is_one_line(vprm_dir, tmp_path, capsys):
    assert pv.main([str(vprm_dir), "-o", str(tmp_path)]) == 2
    _one_error_line(capsys, f"error: {tmp_path}: is a folder; give the output a file name")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert pv.main([str(vprm_dir), "-o", str(blocker / "out.json")]) == 2
    _one_error_line(capsys, f"error: {blocker / 'out.json'}: cannot write (")
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps(QUESTIONS[1]) + "\n")
    c = tmp_path / "c.jsonl"
    c.write_text(json.dumps({"id": 2, "candidate": "Answer: 12"}) + "\n")
    assert pm.main(["--questions", str(q), "--candidates", str(c), "--meta_out", str(tmp_path)]) == 2
    _one_error_line(capsys, f"error: {tmp_path}: --meta_out is a folder")
    assert pm.main(["--questions", str(q), "--candidates", str(c), "--test_out", str(blocker / "t.json")]) == 2
    _one_error_line(capsys, f"error: {blocker / 't.json'}: cannot write (")


def test_records_with_several_images_are_skipped_and_counted(tmp_path, capsys):
    f = tmp_path / "in.jsonl"
    recs = [_vprm(1, [0.5]), _vprm(2, [0.0]), _vprm(3, [0.5], image=["a.png", "b.png"]),
            _vprm(4, [0.0], image=["c.png"])]
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "o.json"
    assert pv.main([str(f), "-o", str(out), "--no_balance"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["records_read"] == 4 and counts["skipped_several_images"] == 1 and counts["instances"] == 3
    written = json.loads(out.read_text())
    assert sorted(r["image"] for r in written) == ["Geo/1.png", "Geo/2.png", "c.png"]  # one-path lists kept

    q = tmp_path / "q.jsonl"
    several = [dict(QUESTIONS[1], id="two", image_2="imgs/2b.png"), dict(QUESTIONS[2], id="list", image=["x", "y"])]
    q.write_text("".join(json.dumps(r) + "\n" for r in QUESTIONS[1:3] + several))
    c = tmp_path / "c.jsonl"
    c.write_text("".join(json.dumps({"id": i, "candidate": "Answer: 12"}) + "\n" for i in (2, "q3", "two", "list", "two")))
    meta, test = tmp_path / "meta.json", tmp_path / "test.json"
    assert pm.main(["--questions", str(q), "--candidates", str(c), "--meta_out", str(meta), "--test_out", str(test)]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["questions"] == 2 and counts["questions_skipped_several_images"] == 2
    assert counts["candidates_of_skipped_questions"] == 3
    assert [r["id"] for r in json.loads(test.read_text())] == [2, "q3"]
    assert len(json.loads(meta.read_text())) == 2


@pytest.mark.parametrize("make_args, message", [
    (lambda d: [str(d / "empty")], "empty: a folder without .jsonl or .json files"),
    (lambda d: [str(d / "deep.jsonl")], "deep.jsonl:1: <json>: nested too deeply"),
    (lambda d: [str(d / "bigint.jsonl")], "bigint.jsonl:1: <json>: Exceeds the limit"),
    (lambda d: [str(d / "hugescore.jsonl")], "hugescore.jsonl:1: steps_with_score[0].score: not a finite number"),
    (lambda d: [str(d / "ok.jsonl"), "--mc_threshold", "nan"], "--mc_threshold must be a finite number"),
])
def test_visualprm_bad_input_is_one_line_never_a_traceback(tmp_path, capsys, make_args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "deep.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    (tmp_path / "bigint.jsonl").write_text('{"id": ' + "9" * 5000 + "}\n")
    big = _vprm(1, [0.5])
    big["steps_with_score"][0]["score"] = 10 ** 400
    (tmp_path / "hugescore.jsonl").write_text(json.dumps(big) + "\n")
    (tmp_path / "ok.jsonl").write_text(json.dumps(_vprm(1, [0.5])) + "\n")
    assert pv.main(make_args(tmp_path) + ["-o", str(tmp_path / "o.json")]) == 2
    assert message in _one_error_line(capsys, "error: ")
    assert not (tmp_path / "o.json").exists()


def test_meta_questions_given_as_a_folder_or_with_a_bad_options_literal(tmp_path, capsys):
    c = tmp_path / "c.jsonl"
    c.write_text("")
    assert pm.main(["--questions", str(tmp_path), "--candidates", str(c), "--test_out", str(tmp_path / "t.json")]) == 2
    _one_error_line(capsys, f"error: {tmp_path}: is a folder, not a .json or .jsonl file")
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps(dict(QUESTIONS[0], options="[" * 5000 + "]" * 5000)) + "\n")
    assert pm.main(["--questions", str(q), "--candidates", str(c), "--test_out", str(tmp_path / "t.json")]) == 2
    _one_error_line(capsys, f"error: {q}:1: options:")


def test_scripts_report_bad_input_without_traceback_from_the_command_line(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"a": "\xff"}\n')
    for script, args in (("prepare_visualprm.py", [str(bad), "-o", str(bad)]),
                         ("prepare_meta_test.py", ["--questions", str(bad), "--candidates", str(bad),
                                                   "--test_out", str(tmp_path / "t.json")])):
        proc = subprocess.run([sys.executable, str(DATA / script), *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
