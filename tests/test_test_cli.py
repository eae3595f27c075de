"""test.py as a user meets it: the report, bad records, ties decided as upstream decides them,
non-finite scores, over-long candidates, output paths, interrupts, model load errors and
mistyped flags, each answered in one line with a documented exit code."""

import json
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from upstream_oracles import upstream_select

from dreamprm.aggregation import AGGREGATIONS
from dreamprm.batching import ExampleBuilder, collate
from dreamprm.prm import ModelLoadError, ProcessRewardModel
from dreamprm.prompt import candidate_conversation, encode_conversation
from dreamprm.selection import select
from dreamprm.steps import split_steps

ROOT = Path(__file__).resolve().parents[1]

FIGURE_PIXELS = (1080, 576)  # the accuracy-vs-N figure: 9 x 4.8 inches at 120 dpi


def _png_size(path):
    """The pixel size of a PNG file (and a proof that it is one)."""
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def _image(w, h, seed):
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr, "RGB")


def _records(tmp_path, n=2, candidates=None):
    (tmp_path / "img").mkdir(exist_ok=True)
    _image(60, 50, 0).save(tmp_path / "img" / "q.png")
    cands = candidates or [
        "[Reasoning]\nStep 1: We add one.\nStep 2: That gives 2.\nAnswer: 2",
        "[Reasoning]\nIt is 1.\nAnswer: 1",
        "[Reasoning]\n1) add 2) get it\nAnswer: 2",
    ]
    return [{"id": f"q{i}", "question": f"What is {i} + 1?", "image_path": "img/q.png", "candidates": list(cands),
             "true_false": [True, False, True][: len(cands)] + [False] * max(0, len(cands) - 3)} for i in range(n)]


def _write(tmp_path, records, name="test.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


@pytest.fixture
def main(monkeypatch, tiny_dir):
    monkeypatch.syspath_prepend(str(ROOT))
    return runpy.run_path(str(ROOT / "test.py"))["main"]


def _base(path, out, *extra):
    return ["--test_json_file", str(path), "--reward_model", "tiny", "--device", "cpu", "--precision", "fp32",
            "--output_file", str(out), *extra]


def _strict_load(text):
    """json.loads that refuses NaN / Infinity, as every strict JSON parser does."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def _err_lines(captured):
    """stderr's lines less progress bars (model loading, scoring)."""
    return [l for l in captured.err.splitlines() if l.strip() and not re.search(r"\d+%\|", l)]


# -- 1. the report and bad records ------------------------------------------------------------
def _good_records(tmp_path, n=3):
    (tmp_path / "img").mkdir(exist_ok=True)
    recs = []
    for i in range(n):
        _image(60 + 30 * i, 50, i).save(tmp_path / "img" / f"q{i}.png")
        recs.append({
            "id": f"q{i}" if i % 2 == 0 else i,
            "question": f"What is {i} + 1?",
            "image_path": f"img/q{i}.png",
            "candidates": [
                f"[Reasoning]\nStep 1: We add one.\nStep 2: That gives {i + 1}.\nAnswer: {i + 1}",
                f"[Reasoning]\nIt is {i}.\nAnswer: {i}",
                f"[Reasoning]\n1) add 2) get it\nAnswer: {i + 1}",
            ][: 3 - (i % 2)],
            "true_false": [True, False, True][: 3 - (i % 2)],
        })
    return recs


def test_cli_report_shape(tmp_path, main, capsys):
    path = _write(tmp_path, _good_records(tmp_path))
    out = tmp_path / "results" / "bestofn.json"
    rc = main([
        "--test_json_file", str(path), "--reward_model", "tiny", "--device", "cpu", "--precision", "fp32",
        "--output_file", str(out), "--figs_dir", str(tmp_path / "figs"), "--batch_size", "2",
    ])
    assert rc == 0
    captured = capsys.readouterr()
    report = json.loads(out.read_text())
    assert set(report) == {"partial", "summary", "questions"} and report["partial"] is False
    s = report["summary"]
    assert set(s) == {"n_questions", "n_candidates", "accuracy", "pass@1", "first_candidate", "oracle",
                      "self_consistency", "truncated_candidates", "unscorable_candidates", "nonfinite_candidates",
                      "definitions", "scoring"}
    assert s["scoring"]["score_dtype"] == "float32" and s["scoring"]["step_splitter"] == "upstream"
    assert s["scoring"]["max_length"] == 32768  # the tiny model's max_position_embeddings
    assert s["scoring"]["ties"] == "later candidate (upstream's >=)"
    assert set(s["accuracy"]) == set(AGGREGATIONS)
    assert s["n_questions"] == 3
    for name in AGGREGATIONS:  # the share of questions whose selected candidate is correct
        assert s["accuracy"][name] == sum(q["true_false"][q["selected"][name]] for q in report["questions"]) / 3
    # every first candidate is correct and carries its question's majority answer
    assert s["first_candidate"] == s["oracle"] == s["self_consistency"] == 1.0
    assert s["pass@1"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert s["truncated_candidates"] == s["unscorable_candidates"] == s["nonfinite_candidates"] == 0
    assert [q["id"] for q in report["questions"]] == ["q0", 1, "q2"]
    for q, rec in zip(report["questions"], json.loads(path.read_text())):
        assert set(q) == {"id", "true_false", "step_scores", "n_steps", "truncated", "unscorable", "nonfinite",
                          "scores", "selected"}
        assert q["true_false"] == rec["true_false"]
        n = len(rec["candidates"])
        assert len(q["step_scores"]) == n
        assert [len(ps) for ps in q["step_scores"]][:2] == [3, 2][: n]  # steps + answer step
        assert q["n_steps"] == [len(ps) for ps in q["step_scores"]]
        assert q["truncated"] == q["unscorable"] == q["nonfinite"] == []
        assert all(0.0 < p < 1.0 for ps in q["step_scores"] for p in ps)
        assert set(q["scores"]) == set(q["selected"]) == set(AGGREGATIONS)
        for name in AGGREGATIONS:
            assert len(q["scores"][name]) == n
            assert q["selected"][name] == select(q["scores"][name])
    assert _png_size(tmp_path / "figs" / "bestofn_accuracy_vs_n.png") == FIGURE_PIXELS
    for word in ("log_odds", "pass@1", "oracle", "self_consistency", "questions", str(out)):
        assert word in captured.out


BAD_CASES = {
    "missing image": ({"image_path": "img/nope.png"}, "image not found"),
    "empty candidates": ({"candidates": [], "true_false": []}, "field 'candidates'"),
    "length mismatch": ({"true_false": [True]}, "1 value for 3 candidates"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_cli_bad_input(tmp_path, main, capsys, case):
    recs = _good_records(tmp_path)
    change, expected = BAD_CASES[case]
    recs[2].update(change)
    path = _write(tmp_path, recs)
    rc = main(["--test_json_file", str(path), "--reward_model", "tiny", "--device", "cpu",
               "--output_file", str(tmp_path / "out.json"), "--figs_dir", str(tmp_path / "figs")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert str(path) in err[0] and "record 2 (id 'q2')" in err[0] and expected in err[0]
    assert "--skip_bad_records" in err[0]
    assert not (tmp_path / "out.json").exists()


@pytest.mark.slow
def test_cli_bad_input_process_exit_code(tmp_path):
    recs = _good_records(tmp_path, 1)
    recs[0]["true_false"] = [True]
    path = _write(tmp_path, recs)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "test.py"), "--test_json_file", str(path), "--reward_model", "tiny"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()  # one line, so no traceback
    assert len(lines) == 1 and lines[0].startswith("error: ") and "record 0 (id 'q0')" in lines[0], lines


def test_cli_skip_bad_records(tmp_path, main, capsys):
    recs = _good_records(tmp_path, 3)
    for i, (change, _) in enumerate(BAD_CASES.values()):
        rec = dict(recs[i], id=f"bad-{i}")
        rec.update(change)
        recs.append(rec)
    path = _write(tmp_path, recs)
    out = tmp_path / "out.json"
    rc = main(["--test_json_file", str(path), "--reward_model", "tiny", "--device", "cpu", "--precision", "fp32",
               "--output_file", str(out), "--figs_dir", str(tmp_path / "figs"), "--skip_bad_records",
               "--aggregation_function", "log_odds"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "skipped 3 bad records" in captured.err and "skipped 3 bad records" in captured.out
    report = json.loads(out.read_text())
    assert report["summary"]["n_questions"] == 3
    assert set(report["summary"]["accuracy"]) == set(AGGREGATIONS)  # all five always
    assert "PRM log_odds" in captured.out and "PRM mean" not in captured.out


# -- 2. ties: test.py picks what upstream's rule picks ------------------------------------------
def _bf16_model(tmp_path, name, head_row):
    """The tiny PRM with its "+" row of the LM head replaced, saved for test.py to load in bf16."""
    model = ProcessRewardModel.from_pretrained("tiny", device="cpu", precision="fp32")
    with torch.no_grad():
        model.model.lm_head.weight[model.plus_id] = head_row(model)
    model.save_pretrained(tmp_path / name)
    return tmp_path / name


def _saturating_row(model):
    """Aligned with the hidden state at the label positions: p(+) rounds to 1.0 in bf16."""
    item = ExampleBuilder(model.processor, 12).build(candidate_conversation("q", ["a", "b"]), _image(60, 50, 0))
    batch = collate([item], 0)
    with torch.no_grad():
        hidden = model.hidden_states(batch.input_ids, batch.attention_mask, batch.pixel_values)
        direction = hidden[batch.label_batch, batch.label_pos].mean(0)
    return direction / direction.norm() * 200


def _upstream_scores(model_dir, image, question, candidates):
    """Upstream's test-time score, per candidate: one full forward of the bf16 model, softmax over
    the full vocabulary in bf16, p(+) at the label positions, torch.mean in bf16."""
    model = ProcessRewardModel.from_pretrained(model_dir, device="cpu", precision="bf16").eval()
    builder = ExampleBuilder(model.processor, 12)
    scores = []
    with torch.no_grad():
        for cand in candidates:
            batch = collate([builder.build(candidate_conversation(question, split_steps(cand)), image)], 0)
            logits = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                 pixel_values=batch.pixel_values).logits  # the stock forward
            probs = torch.softmax(logits, dim=-1)  # bf16 in, bf16 out: no upcast
            assert probs.dtype == torch.bfloat16
            scores.append(torch.mean(probs[batch.label_batch, batch.label_pos, model.plus_id], dim=0).item())
    return scores


def test_cli_on_ties_picks_what_upstreams_rule_picks(tmp_path, main, capsys):
    """Duplicated candidates and saturated bf16 scores tie; test.py must select as upstream's
    ``score >= max_score`` loop does on upstream's own scores: the later candidate."""
    x = "[Reasoning]\nStep 1: We add one.\nStep 2: That gives 2.\nAnswer: 2"
    y = "[Reasoning]\nIt is 1.\nAnswer: 1"
    z = "[Reasoning]\n1) add 2) get it\nAnswer: 2"
    (tmp_path / "img").mkdir()
    _image(60, 50, 0).save(tmp_path / "img" / "q.png")
    question = "  What is 1 + 1?\n"  # upstream strips the question
    records = [
        {"id": "dup", "question": question, "image_path": "img/q.png", "candidates": [z, x, z, x],
         "true_false": [False, True, True, True]},
        {"id": "mixed", "question": question, "image_path": "img/q.png", "candidates": [x, y, z, y],
         "true_false": [True, False, True, False]},
    ]
    path = _write(tmp_path, records)
    sharp = _bf16_model(tmp_path, "sharp", lambda m: m.model.lm_head.weight[m.plus_id] * 30)
    saturated = _bf16_model(tmp_path, "saturated", _saturating_row)
    picks = {}
    for name, model_dir in (("sharp", sharp), ("saturated", saturated)):
        out = tmp_path / f"{name}.json"
        rc = main(["--test_json_file", str(path), "--reward_model", str(model_dir), "--device", "cpu",
                   "--precision", "bf16", "--output_file", str(out), "--figs_dir", str(tmp_path / "figs"),
                   "--batch_size", "3"])
        assert rc == 0
        assert "softmax and mean in bfloat16" in capsys.readouterr().out
        report = json.loads(out.read_text())
        assert report["summary"]["scoring"]["score_dtype"] == "bfloat16"
        image = Image.open(tmp_path / "img" / "q.png").convert("RGB")
        for rec, q in zip(records, report["questions"]):
            upstream = _upstream_scores(model_dir, image, question, rec["candidates"])
            assert q["selected"]["mean"] == upstream_select(upstream), (name, q["scores"]["mean"], upstream)
            picks[name, rec["id"]] = q["selected"]["mean"]
            if rec["id"] == "dup":  # identical candidates, identical scores, whatever their batch
                assert q["step_scores"][0] == q["step_scores"][2] and q["step_scores"][1] == q["step_scores"][3]
    # the cases really are ties: the later duplicate, and the last of four saturated scores
    assert picks["sharp", "dup"] == 2
    assert picks["saturated", "dup"] == 3 and picks["saturated", "mixed"] == 3


# -- 3. non-finite step scores ----------------------------------------------------------------
GOOD = ["[Reasoning]\nStep 1: We add one.\nStep 2: That gives 2.\nAnswer: 2", "[Reasoning]\nIt is 1.\nAnswer: 1"]
BAD = "[Reasoning]\nStep 1: We add one.\nStep 2: It gives @@ 2.\nAnswer: 2"  # "@@": in no other prompt


@pytest.fixture(scope="module")
def nan_models(tmp_path_factory, tiny_dir):
    """Two tiny PRMs that diverged: 'all' has a NaN LM head (every score NaN); 'marked' has NaN
    embeddings for the tokens only BAD holds (in its second step), so BAD alone scores NaN."""
    root = tmp_path_factory.mktemp("nan-models")
    model = ProcessRewardModel.from_pretrained(tiny_dir, device="cpu", precision="fp32")
    with torch.no_grad():
        model.model.lm_head.weight[model.plus_id] *= 30  # scores that differ between candidates
    head = model.model.lm_head.weight.detach().clone()
    with torch.no_grad():
        model.model.lm_head.weight.fill_(float("nan"))
    model.save_pretrained(root / "all")

    def ids(cand, question):
        conv = candidate_conversation(question, split_steps(cand))
        return set(encode_conversation(model.processor.tokenizer, conv, 4).input_ids)

    questions = [f"What is {i} + 1?" for i in range(2)]
    only_bad = ids(BAD, questions[0]) - set().union(*(ids(c, q) for c in GOOD for q in questions))
    assert only_bad and not only_bad & ids(BAD.split("Step 2")[0] + "Answer: 2", questions[0])
    with torch.no_grad():
        model.model.lm_head.weight.copy_(head)
        model.model.get_input_embeddings().weight[sorted(only_bad)] = float("nan")
    model.save_pretrained(root / "marked")
    return root


def test_nonfinite_scores_are_an_error_by_default(tmp_path, main, capsys, nan_models):
    root = nan_models
    path = _write(tmp_path, _records(tmp_path))
    out = tmp_path / "out.json"
    rc = main(_base(path, out, "--reward_model", str(root / "all"), "--figs_dir", str(tmp_path / "figs")))
    assert rc == 3  # the project's "diverged" exit code
    err = _err_lines(capsys.readouterr())
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and "record 0 (id 'q0')" in err[0]
    assert "non-finite step scores" in err[0] and "3 of 3 candidates" in err[0] and "--allow_nonfinite" in err[0]
    assert not out.exists()  # nothing scored, nothing written


def test_allow_nonfinite_never_selects_them_and_writes_strict_json(tmp_path, main, capsys, nan_models):
    root = nan_models
    recs = _records(tmp_path, 2, [GOOD[0], BAD, GOOD[1]])
    recs[1]["candidates"] = [GOOD[0], GOOD[1], GOOD[0]]  # a question without the NaN tokens
    path = _write(tmp_path, recs)

    out = tmp_path / "out.json"
    rc = main(_base(path, out, "--reward_model", str(root / "marked"), "--figs_dir", str(tmp_path / "figs")))
    assert rc == 3
    err = _err_lines(capsys.readouterr())
    assert len(err) == 1 and "1 of 3 candidates" in err[0] and "(id 'q0')" in err[0]

    rc = main(_base(path, out, "--reward_model", str(root / "marked"), "--figs_dir", str(tmp_path / "figs"),
                    "--allow_nonfinite"))
    assert rc == 0
    captured = capsys.readouterr()
    text = out.read_text()
    report = _strict_load(text)  # strict: no bare NaN / Infinity anywhere
    assert "NaN" not in text and "Infinity" not in text
    s, q0, q1 = report["summary"], report["questions"][0], report["questions"][1]
    assert s["nonfinite_candidates"] == 1
    assert q0["nonfinite"] == [1] and q1["nonfinite"] == []
    assert q0["step_scores"][1] == [None, None, None]  # NaN anywhere in a sequence reaches every position
    assert all(isinstance(p, float) for i in (0, 2) for p in q0["step_scores"][i])  # its batch mates are fine
    assert all(q0["scores"][name][1] is None for name in q0["scores"])
    assert all(sel != 1 for sel in q0["selected"].values())  # never selected
    assert "note: 1 candidate got non-finite step scores (--allow_nonfinite); never selected" in captured.out
    curve = _strict_load((tmp_path / "figs" / "bestofn_accuracy_vs_n.json").read_text())
    assert curve["mean"][0] == s["pass@1"]


# -- 4. --max_length: a 1 MB candidate ---------------------------------------------------------
def test_megabyte_candidate_is_truncated_in_seconds(tmp_path, main, capsys):
    short = "[Reasoning]\nStep 1: We add one.\nStep 2: That gives 2.\nAnswer: 2"
    huge_later = "[Reasoning]\nStep 1: We add one.\nStep 2: " + "and we keep adding one " * 45_000 + "\nAnswer: 2"
    huge_first = "[Reasoning]\n" + "so we keep on adding one " * 42_000 + "\nAnswer: 2"
    assert len(huge_later) > 1_000_000 and len(huge_first) > 1_000_000
    recs = _records(tmp_path, 1, [short, huge_later, huge_first])
    recs[0]["true_false"] = [False, True, True]
    path = _write(tmp_path, recs)
    out = tmp_path / "out.json"
    start = time.perf_counter()
    rc = main(_base(path, out, "--prefetch", "0", "--figs_dir", str(tmp_path / "figs")))
    elapsed = time.perf_counter() - start
    assert rc == 0
    assert elapsed < 60, f"{elapsed:.1f} s for a 1 MB candidate"
    captured = capsys.readouterr()
    report = _strict_load(out.read_text())
    s, q = report["summary"], report["questions"][0]
    assert s["scoring"]["max_length"] == 32768
    assert s["truncated_candidates"] == 1 and s["unscorable_candidates"] == 1
    assert q["truncated"] == [1] and q["unscorable"] == [2]
    assert q["n_steps"] == [3, 3, 2] and [len(ps) for ps in q["step_scores"]] == [3, 1, 0]
    assert q["step_scores"][1][0] == pytest.approx(q["step_scores"][0][0], rel=1e-5)  # same first step
    assert all(sel != 2 for sel in q["selected"].values())
    assert "note: 1 candidate longer than 32768 tokens (--max_length) was scored over the steps that fit" in captured.out
    assert "note: 1 candidate could not be scored: not even the first step fits in 32768 tokens" in captured.out


# -- 5. paths: checked before any work; figures beside the results ------------------------------
@pytest.mark.parametrize("case", ["folder", "under a file", "no new files there"])
def test_unusable_output_file_is_refused_before_the_model_loads(tmp_path, main, capsys, case):
    path = _write(tmp_path, _records(tmp_path))
    if case == "folder":
        out = tmp_path / "results"
        out.mkdir()
        expected = "is a folder"
    elif case == "under a file":
        (tmp_path / "notes.txt").write_text("mine")
        out = tmp_path / "notes.txt" / "sub" / "out.json"
        expected = "is a file, not a folder"
    else:
        if not Path("/proc/self").exists():
            pytest.skip("needs Linux /proc")
        out = Path("/proc/dreamprm-no-such-dir/out.json")  # no one may create files in /proc, root included
        expected = "cannot create files in /proc"
    # a model that does not exist: the refusal must come first, before any model or data work
    rc = main(["--test_json_file", str(path), "--reward_model", str(tmp_path / "no-model"), "--device", "cpu",
               "--output_file", str(out)])
    assert rc == 2
    err = _err_lines(capsys.readouterr())
    assert len(err) == 1 and err[0].startswith("error: --output_file ") and expected in err[0], err
    if case == "under a file":
        assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_unwritable_output_folder_is_refused(tmp_path, main, capsys):
    path = _write(tmp_path, _records(tmp_path))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        rc = main(_base(path, locked / "out.json"))
    finally:
        locked.chmod(0o755)
    assert rc == 2
    err = _err_lines(capsys.readouterr())
    assert len(err) == 1 and "cannot create files in" in err[0]


def test_figures_default_beside_the_results_and_an_unwritable_figs_dir_only_warns(tmp_path, main, capsys):
    path = _write(tmp_path, _records(tmp_path))
    out = tmp_path / "run1" / "bestofn.json"
    assert main(_base(path, out)) == 0
    assert _png_size(tmp_path / "run1" / "figs" / "bestofn_accuracy_vs_n.png") == FIGURE_PIXELS
    assert _strict_load((tmp_path / "run1" / "figs" / "bestofn_accuracy_vs_n.json").read_text())["n"] == [1, 2, 3]
    capsys.readouterr()

    (tmp_path / "a-file").write_text("")
    out2 = tmp_path / "run2" / "bestofn.json"
    rc = main(_base(path, out2, "--figs_dir", str(tmp_path / "a-file" / "figs")))
    assert rc == 0
    captured = capsys.readouterr()
    err = _err_lines(captured)
    assert len(err) == 1 and err[0].startswith("warning: figure not written: ") and str(out2) in err[0]
    assert _strict_load(out2.read_text())["summary"]["n_questions"] == 2  # the results are kept


# -- 6. interrupts: partial results, exit 130 / 143 --------------------------------------------
def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background shell may have left it ignored


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, workers, group", [
    (signal.SIGINT, 130, "0", False),
    (signal.SIGTERM, 143, "0", False),
    (signal.SIGTERM, 143, "2", False),  # worker processes prepare the images (the default on cuda)
    (signal.SIGINT, 130, "2", True),  # Ctrl-C in a terminal: every process of the group gets it
], ids=["SIGINT", "SIGTERM", "SIGTERM-workers", "SIGINT-group-workers"])
def test_interrupt_saves_partial_results(tmp_path, tiny_dir, sig, code, workers, group):
    total = 600  # far more than gets scored before the signal lands
    path = _write(tmp_path, _records(tmp_path, total))
    out = tmp_path / "out.json"
    proc = subprocess.Popen([sys.executable, str(ROOT / "test.py"), *_base(path, out, "--num_workers", workers)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=_default_sigint, start_new_session=group)
    err, scored = [], threading.Event()

    def read():
        for chunk in iter(lambda: proc.stderr.read1(4096), b""):
            err.append(chunk.decode(errors="replace"))
            if re.search(r"best-of-N:.*?\|\s*[1-9]\d*/%d \[" % total, "".join(err)):
                scored.set()  # the progress bar says at least one question is done

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert scored.wait(180), "".join(err)[-2000:]
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        proc.wait(120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
    reader.join(10)
    stderr = "".join(err)
    assert proc.returncode == code, stderr[-2000:]
    assert "Traceback" not in stderr
    last = [l for l in re.split(r"[\r\n]", stderr) if l.strip()][-1]
    assert last.startswith(f"interrupted ({sig.name}) after ") and f"of {total} questions" in last and str(out) in last
    report = _strict_load(out.read_text())
    assert report["partial"] is True and report["stopped_by"] == sig.name
    done = report["questions_scored"]
    assert 1 <= done < total and report["questions_total"] == total
    assert len(report["questions"]) == report["summary"]["n_questions"] == done
    assert [q["id"] for q in report["questions"]] == [f"q{i}" for i in range(done)]
    if group:  # no worker process outlives the run
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            pytest.fail("processes of the run are still alive after it exited")


# -- 7. model load errors ----------------------------------------------------------------
@pytest.mark.parametrize("case", ["missing folder", "damaged weights"])
def test_model_load_error_is_one_line(tmp_path, main, capsys, tiny_dir, case):
    model = tmp_path / "model"
    if case == "damaged weights":
        shutil.copytree(tiny_dir, model)
        weights = model / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError) as info:
        ProcessRewardModel.from_pretrained(model)
    path = _write(tmp_path, _records(tmp_path))
    rc = main(["--test_json_file", str(path), "--reward_model", str(model), "--device", "cpu",
               "--output_file", str(tmp_path / "out.json")])
    assert rc == 2
    assert capsys.readouterr().err == f"error: {info.value}\n"
    assert not (tmp_path / "out.json").exists()


# -- 8. whatever a user can type: one line, no traceback ----------------------------------------
def _cases(tmp_path):
    path = _write(tmp_path, _records(tmp_path))
    out = str(tmp_path / "out.json")
    cases = {
        "test file is a folder": (["--test_json_file", str(tmp_path), "--reward_model", "tiny", "--output_file", out],
                                  f"{tmp_path}: is a folder, not a .json or .jsonl file"),
        "unknown device": (["--test_json_file", str(path), "--device", "gpu0", "--output_file", out], "--device gpu0"),
    }
    if not torch.cuda.is_available():
        cases["cuda without a GPU"] = (["--test_json_file", str(path), "--device", "cuda", "--output_file", out],
                                       "CUDA is not available")
    return cases


@pytest.mark.slow
@pytest.mark.parametrize("case", ["test file is a folder", "unknown device", "cuda without a GPU"])
def test_user_mistakes_give_one_line_and_exit_2(tmp_path, tiny_dir, case):
    cases = _cases(tmp_path)
    if case not in cases:
        pytest.skip("this machine has a GPU")
    argv, expected = cases[case]
    proc = subprocess.run([sys.executable, str(ROOT / "test.py"), "--reward_model", "tiny", *argv],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
