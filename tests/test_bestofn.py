"""Best-of-N: aggregation, selection, baselines, scoring equal to the naive path, the CLI."""

import json
import math
import random
import runpy
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

from dreamprm.bestofn import (
    AGGREGATION_NAMES,
    Scorer,
    accuracy_vs_n,
    first_candidate,
    majority_index,
    oracle,
    pass_at_1,
    question_result,
    random_pick,
    select,
    self_consistency_index,
    summarise,
)

ROOT = Path(__file__).resolve().parents[1]


# -- selection -------------------------------------------------------------------------------
def _upstream_select(scores):
    """The selection loop of upstream's utils.select_best_answer: max_score = 0; for each
    candidate in order, ``if score >= max_score`` it becomes the best."""
    max_score, best_index = 0, 0
    for index, score in enumerate(scores):
        if score >= max_score:
            max_score, best_index = score, index
    return best_index


def test_select_ties_go_to_the_later_candidate_as_upstream():
    assert select([0.3, 0.7, 0.7]) == 2
    assert select([0.5, 0.5, 0.5]) == 2
    assert select([0.1, 0.9, 0.2, 0.9]) == 3
    assert select([0.9, 0.1]) == 0
    assert select([float("nan"), 0.1]) == 1
    assert select([float("nan"), float("nan")]) == 0
    assert select([0.4, float("nan")]) == 0
    assert select([-math.inf, -math.inf]) == 1
    assert select([None, 0.0]) == 1
    for scores in ([0.3, 0.7, 0.7], [1.0, 1.0, 0.5, 1.0], [0.0, 0.0], [0.25, 0.5, 0.5, 0.125], [0.6]):
        assert select(scores) == _upstream_select(scores)
    with pytest.raises(ValueError):
        select([])


# -- baselines ----------------------------------------------------------------------------
def test_simple_baselines():
    # pass@1: the expected accuracy of one random candidate (c/k), whatever the order
    assert pass_at_1([False, True, True]) == 2 / 3
    assert pass_at_1([True, False]) == 0.5
    assert first_candidate([False, True, True]) == 0.0 and first_candidate([True, False]) == 1.0
    assert random_pick([True, False, False, True]) == 0.5
    assert random_pick([False, False, True]) == pytest.approx(1 / 3)
    assert oracle([False, False, True]) == 1.0
    assert oracle([False, False]) == 0.0


def test_majority_vote():
    # clear majority, normalised case and whitespace; winner's first carrier is selected
    assert majority_index(["A", " b", "B ", "b"]) == 1
    assert majority_index(["Red  car", "red car", "blue"]) == 0
    # 2-2 tie: the answer that occurs first wins
    assert majority_index(["x", "y", "y", "x"]) == 0
    assert majority_index(["y", "x", "x", "y", "z"]) == 0
    assert majority_index(["z", "x", "y", "y", "x"]) == 1
    # no-answer candidates do not vote
    assert majority_index([None, None, "q", "r", "r"]) == 3
    assert majority_index([None, "q"]) == 1
    # nobody votes: the first candidate
    assert majority_index([None, None]) == 0
    # through extract_answer on free text
    cands = [
        "[Reasoning]\nIt is 3.\nAnswer: 3",
        "[Reasoning]\nno final answer here",
        "[Reasoning]\n1. a\n2. b\nAnswer: 4.",
        "[Reasoning]\nAnswer:  4",
    ]
    assert self_consistency_index(cands) == 2


def test_summary_on_hand_made_questions():
    q1 = question_result("a", [False, True, True], [[0.9, 0.1], [0.6, 0.6], [0.6]])
    q2 = question_result(7, [True, False], [[0.2], [0.3]])
    assert q1["scores"]["mean"] == pytest.approx([0.5, 0.6, 0.6])
    assert q1["selected"] == {"mean": 2, "log_mean": 2, "max": 0, "min": 2, "log_odds": 2}  # 1 vs 2: ties -> later
    assert q2["selected"] == dict.fromkeys(AGGREGATION_NAMES, 1)
    cands = [
        ["Answer: 5", "Answer: 6", "Answer: 6"],  # majority 6 -> candidate 1 (correct)
        ["Answer: 1", "Answer: 2"],  # tie -> first -> candidate 0 (correct)
    ]
    s = summarise([q1, q2], cands)
    assert s["n_questions"] == 2
    assert s["accuracy"] == {"mean": 0.5, "log_mean": 0.5, "max": 0.0, "min": 0.5, "log_odds": 0.5}  # q1: 2 is right too
    assert s["pass@1"] == pytest.approx((2 / 3 + 1 / 2) / 2)  # c/k per question, averaged
    assert s["first_candidate"] == 0.5
    assert s["oracle"] == 1.0
    assert s["self_consistency"] == 1.0

    curve = accuracy_vs_n([q1, q2], cands, draws=5, seed=3)
    assert curve["n"] == [1, 2, 3]
    # at N = all candidates the subset is the full set: same numbers as the summary, exactly
    for name in AGGREGATION_NAMES:
        assert curve[name][-1] == s["accuracy"][name]
    assert curve["oracle"][-1] == 1.0 and curve["self_consistency"][-1] == 1.0
    # with one candidate every method is a random pick: pass@1, exactly
    for name in (*AGGREGATION_NAMES, "random", "oracle", "self_consistency"):
        assert curve[name][0] == s["pass@1"], name
    assert curve["random"] == [s["pass@1"]] * 3
    # q1 at N = 2 (q2 keeps both): max picks candidate 0 (wrong) from {0,1} and {0,2}, 2 from {1,2}
    assert curve["max"][1] == pytest.approx((1 / 3 + 0.0) / 2)
    assert curve["self_consistency_exact"] == [True, True, True]


# -- scoring equals the naive path --------------------------------------------------------
@pytest.fixture(scope="module")
def prm():
    from dreamprm.prm import ProcessRewardModel

    model = ProcessRewardModel.from_pretrained("tiny", device="cpu", precision="fp32")
    # The random tiny model gives p(+) ~ 1/vocab everywhere; sharpen the "+" row so scores
    # spread out and differ between images and steps (a stricter comparison).
    with torch.no_grad():
        model.model.lm_head.weight[model.plus_id] *= 30
    return model


def _image(w, h, seed):
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr, "RGB")


def _naive(prm, image, question, step_lists):
    """One stock forward per candidate, each with its own freshly tiled pixel_values."""
    from dreamprm.examples import ExampleBuilder, collate
    from dreamprm.prompt import candidate_conversation

    builder = ExampleBuilder(prm.processor, 12)
    out = []
    with torch.no_grad():
        for steps in step_lists:
            item = builder.build(candidate_conversation(question, steps), image)
            batch = collate([item], prm.processor.tokenizer.pad_token_id)
            out.append(prm(**batch.model_inputs()).p_plus.tolist())
    return out


def _assert_close(got, want):
    assert [len(x) for x in got] == [len(x) for x in want]
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            assert abs(a - b) <= 1e-5 and abs(a - b) <= 1e-5 * abs(b), (got, want)


def test_shared_image_scoring_equals_naive(prm):
    image = _image(150, 70, 0)  # 3 tiles + thumbnail at the tiny 56 px tile
    question = "Which colour dominates the picture?"
    step_lists = [
        ["The left side is red.", "Answer: red"],
        ["First look at the picture.", "It is mostly green,\nclearly.", "So green.", "Answer: green"],
        ["Answer: blue"],
    ]
    want = _naive(prm, image, question, step_lists)
    assert len({round(p, 6) for ps in want for p in ps}) > 3  # the comparison is not vacuous
    for prefix_cache in (True, False):
        for batch_size in (1, 2, 8):  # 2: padding inside a batch and more than one batch
            scorer = Scorer(prm, max_patch_num=12, batch_size=batch_size, prefix_cache=prefix_cache)
            _assert_close(scorer.score_step_lists(image, question, step_lists), want)
    scorer = Scorer(prm, batch_size=2)
    _assert_close([scorer.score_steps(image, question, step_lists[1])], want[1:2])
    # score_candidates splits free text with steps.split_steps
    from dreamprm.steps import split_steps

    cands = ["[Reasoning]\nStep 1: red on the left\nStep 2: so red\nAnswer: red", "Answer: blue", ""]
    got = scorer.score_candidates(image, question, cands)
    _assert_close(got[:2], _naive(prm, image, question, [split_steps(c) for c in cands[:2]]))
    # upstream's splitter turns an empty candidate into one empty step [""], scored like any other
    _assert_close(got[2:], _naive(prm, image, question, [[""]]))
    # the clean splitter gives no step at all: no score, never selected
    assert Scorer(prm, batch_size=2, splitter="clean").score_candidates(image, question, [""]) == [[]]
    # the image matters
    other = scorer.score_step_lists(_image(90, 120, 1), question, step_lists)
    assert other != want


def test_image_encoded_once_per_question(prm, monkeypatch):
    calls = []
    original = prm.image_features

    def counting(pixel_values):
        calls.append(pixel_values.shape[0])
        return original(pixel_values)

    monkeypatch.setattr(prm, "image_features", counting)
    scorer = Scorer(prm, batch_size=2)
    scorer.score_step_lists(_image(100, 100, 2), "q?", [["a"], ["b", "c"], ["d"], ["e", "f", "g"], ["h"]])
    assert len(calls) == 1


def test_prepared_pixels_score_the_same(prm, tmp_path):
    """score_step_lists takes a PIL image, a path, or prepare_image's tensor: the same scores."""
    image = _image(130, 60, 5)
    image.save(tmp_path / "a.png")
    question = "What is drawn?"
    step_lists = [["A square.", "Answer: square"], ["Answer: circle"]]
    scorer = Scorer(prm, batch_size=2)
    want = scorer.score_step_lists(image, question, step_lists)
    pv = scorer.prepare_image(tmp_path / "a.png")
    assert isinstance(pv, torch.Tensor) and pv.shape[0] > 1  # tiles + thumbnail
    assert torch.equal(pv, scorer.prepare_image(image))
    assert scorer.prepare_image(pv) is pv and scorer.prepare_image(None) is None
    assert scorer.score_step_lists(pv, question, step_lists) == want
    assert scorer.score_step_lists(str(tmp_path / "a.png"), question, step_lists) == want
    cands = ["[Reasoning]\nStep 1: four sides.\nAnswer: square", "Answer: circle", ""]
    assert scorer.score_candidates(pv, question, cands) == scorer.score_candidates(image, question, cands)
    # text only: no image, no image tokens; differs from the image's scores
    text_only = scorer.score_step_lists(scorer.prepare_image(None), question, step_lists)
    assert text_only == scorer.score_step_lists(None, question, step_lists) != want


def _eval_records(tmp_path, n=5):
    (tmp_path / "img").mkdir(exist_ok=True)
    recs = []
    for i in range(n):
        _image(40 + 37 * i, 90 - 11 * i, 10 + i).save(tmp_path / "img" / f"e{i}.png")  # varying tile counts
        recs.append({"id": f"e{i}", "question": f"How many sides does shape {i} have?", "image_path": f"img/e{i}.png",
                     "candidates": [f"[Reasoning]\nStep 1: count them.\nStep 2: {i + 3}.\nAnswer: {i + 3}",
                                    f"[Reasoning]\nIt has {i} sides.\nAnswer: {i}", ""][: 2 + i % 2],
                     "true_false": [True, False, False][: 2 + i % 2]})
    return recs


def test_evaluate_prefetch_equals_serial(prm, tmp_path, monkeypatch):
    from dreamprm.bestofn import evaluate

    recs = _eval_records(tmp_path)
    json_path = tmp_path / "test.json"  # image paths resolve beside it
    scorer = Scorer(prm, batch_size=2)
    serial_q, serial_c = evaluate(scorer, recs, json_path, progress=False, prefetch=0)
    assert [q["id"] for q in serial_q] == [r["id"] for r in recs]
    assert len({q["step_scores"][0][0] for q in serial_q}) == len(recs)  # every image scores differently

    # with prefetch the images are prepared in a background thread, ahead of the scoring:
    # scoring question 0 waits until question 1's image is being prepared (impossible when serial)
    threads, second_started = [], threading.Event()
    prepare, score = scorer.prepare_image, scorer.score_candidates

    def prepare_spy(image, **kw):
        if isinstance(image, torch.Tensor):  # score_step_lists passing the prepared tensor through
            return prepare(image, **kw)
        threads.append(threading.current_thread())
        if len(threads) == 2:
            second_started.set()
        return prepare(image, **kw)

    def score_spy(image, question, candidates):
        if question == recs[0]["question"]:
            assert second_started.wait(timeout=60), "question 1 was not prepared while question 0 was scored"
        return score(image, question, candidates)

    monkeypatch.setattr(scorer, "prepare_image", prepare_spy)
    monkeypatch.setattr(scorer, "score_candidates", score_spy)
    for prefetch in (1, 2, 7):
        threads.clear()
        second_started.clear()
        got_q, got_c = evaluate(scorer, recs, json_path, progress=False, prefetch=prefetch)
        assert got_q == serial_q and got_c == serial_c  # exact: step scores, aggregates, selections, order
        assert len(threads) == len(recs) and threading.main_thread() not in threads
    assert not [t for t in threading.enumerate() if t.name.startswith("bestofn-prefetch")]  # worker stopped


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_evaluate_prefetch_bad_image_same_error(prm, tmp_path, monkeypatch, damage):
    from dreamprm.bestofn import evaluate

    recs = _eval_records(tmp_path)
    if damage == "missing":
        recs[2]["image_path"] = "img/nope.png"
    else:
        (tmp_path / "img" / "e2.png").write_bytes(b"not an image at all")
    scorer = Scorer(prm, batch_size=2)
    scored = []
    score = scorer.score_candidates
    monkeypatch.setattr(scorer, "score_candidates", lambda im, q, c: scored.append(q) or score(im, q, c))
    errors = {}
    for prefetch in (0, 1, 2):
        scored.clear()
        with pytest.raises(Exception) as info:
            evaluate(scorer, recs, tmp_path / "test.json", progress=False, prefetch=prefetch)
        errors[prefetch] = (type(info.value), str(info.value))
        assert scored == [r["question"] for r in recs[:2]]  # raised at question 2, as when serial
    assert errors[1] == errors[2] == errors[0]
    assert issubclass(errors[0][0], OSError) and str(tmp_path / "img" / recs[2]["image_path"][4:]) in errors[0][1]
    assert not [t for t in threading.enumerate() if t.name.startswith("bestofn-prefetch")]  # worker stopped


# -- the CLI ----------------------------------------------------------------------------------
def _write_test_file(tmp_path, records):
    path = tmp_path / "test.json"
    path.write_text(json.dumps(records))
    return path


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


def _main(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    return runpy.run_path(str(ROOT / "test.py"))["main"]


def test_cli_report_shape(tmp_path, monkeypatch, capsys):
    main = _main(monkeypatch)
    path = _write_test_file(tmp_path, _good_records(tmp_path))
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
    assert s["scoring"]["ties"].startswith("later")
    assert set(s["accuracy"]) == set(AGGREGATION_NAMES)
    assert s["n_questions"] == 3
    for v in [*s["accuracy"].values(), s["pass@1"], s["first_candidate"], s["oracle"], s["self_consistency"]]:
        assert 0.0 <= v <= 1.0
    assert s["first_candidate"] == 1.0 and s["oracle"] == 1.0
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
        assert set(q["scores"]) == set(q["selected"]) == set(AGGREGATION_NAMES)
        for name in AGGREGATION_NAMES:
            assert len(q["scores"][name]) == n
            assert q["selected"][name] == select(q["scores"][name])
    assert (tmp_path / "figs" / "bestofn_accuracy_vs_n.png").stat().st_size > 0
    for word in ("log_odds", "pass@1", "oracle", "self_consistency", "questions", str(out)):
        assert word in captured.out


BAD_CASES = {
    "missing image": ({"image_path": "img/nope.png"}, "image not found"),
    "empty candidates": ({"candidates": [], "true_false": []}, "field 'candidates'"),
    "length mismatch": ({"true_false": [True]}, "1 value for 3 candidates"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_cli_bad_input(tmp_path, monkeypatch, capsys, case):
    main = _main(monkeypatch)
    recs = _good_records(tmp_path)
    change, expected = BAD_CASES[case]
    recs[2].update(change)
    path = _write_test_file(tmp_path, recs)
    rc = main(["--test_json_file", str(path), "--reward_model", "tiny", "--device", "cpu",
               "--output_file", str(tmp_path / "out.json"), "--figs_dir", str(tmp_path / "figs")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert str(path) in err[0] and "record 2 (id 'q2')" in err[0] and expected in err[0]
    assert "--skip_bad_records" in err[0]
    assert not (tmp_path / "out.json").exists()


def test_cli_bad_input_process_exit_code(tmp_path):
    recs = _good_records(tmp_path, 1)
    recs[0]["true_false"] = [True]
    path = _write_test_file(tmp_path, recs)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "test.py"), "--test_json_file", str(path), "--reward_model", "tiny"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "record 0 (id 'q0')" in proc.stderr


def test_cli_skip_bad_records(tmp_path, monkeypatch, capsys):
    main = _main(monkeypatch)
    recs = _good_records(tmp_path, 3)
    for i, (change, _) in enumerate(BAD_CASES.values()):
        rec = dict(recs[i], id=f"bad-{i}")
        rec.update(change)
        recs.append(rec)
    path = _write_test_file(tmp_path, recs)
    out = tmp_path / "out.json"
    rc = main(["--test_json_file", str(path), "--reward_model", "tiny", "--device", "cpu", "--precision", "fp32",
               "--output_file", str(out), "--figs_dir", str(tmp_path / "figs"), "--skip_bad_records",
               "--aggregation_function", "log_odds"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "skipped 3 bad records" in captured.err and "skipped 3 bad records" in captured.out
    report = json.loads(out.read_text())
    assert report["summary"]["n_questions"] == 3
    assert set(report["summary"]["accuracy"]) == set(AGGREGATION_NAMES)  # all five always
    assert "PRM log_odds" in captured.out and "PRM mean" not in captured.out


# -- ties: test.py picks what upstream's rule picks ---------------------------------------------
def _bf16_model(tmp_path, name, head_row):
    """The tiny PRM with its "+" row of the LM head replaced, saved for test.py to load in bf16."""
    from dreamprm.prm import ProcessRewardModel

    model = ProcessRewardModel.from_pretrained("tiny", device="cpu", precision="fp32")
    with torch.no_grad():
        model.model.lm_head.weight[model.plus_id] = head_row(model)
    model.save_pretrained(tmp_path / name)
    return tmp_path / name


def _saturating_row(model):
    """Aligned with the hidden state at the label positions: p(+) rounds to 1.0 in bf16."""
    from dreamprm.examples import ExampleBuilder, collate
    from dreamprm.prompt import candidate_conversation

    item = ExampleBuilder(model.processor, 12).build(candidate_conversation("q", ["a", "b"]), _image(60, 50, 0))
    batch = collate([item], 0)
    with torch.no_grad():
        hidden = model.hidden_states(batch.input_ids, batch.attention_mask, batch.pixel_values)
        direction = hidden[batch.label_batch, batch.label_pos].mean(0)
    return direction / direction.norm() * 200


def _upstream_scores(model_dir, image, question, candidates):
    """Upstream's test-time score, per candidate: one full forward of the bf16 model, softmax over
    the full vocabulary in bf16, p(+) at the label positions, torch.mean in bf16."""
    from dreamprm.examples import ExampleBuilder, collate
    from dreamprm.prm import ProcessRewardModel
    from dreamprm.prompt import candidate_conversation
    from dreamprm.steps import split_steps

    model = ProcessRewardModel.from_pretrained(model_dir, device="cpu", precision="bf16").eval()
    builder = ExampleBuilder(model.processor, 12)
    scores = []
    with torch.no_grad():
        for cand in candidates:
            batch = collate([builder.build(candidate_conversation(question, split_steps(cand)), image)], 0)
            logits = model.full_logits(batch.input_ids, batch.attention_mask, batch.pixel_values)
            probs = torch.softmax(logits, dim=-1)  # bf16 in, bf16 out: no upcast
            assert probs.dtype == torch.bfloat16
            scores.append(torch.mean(probs[batch.label_batch, batch.label_pos, model.plus_id], dim=0).item())
    return scores


def test_cli_on_ties_picks_what_upstreams_rule_picks(tmp_path, monkeypatch, capsys):
    """Duplicated candidates and saturated bf16 scores tie; test.py must select as upstream's
    ``score >= max_score`` loop does on upstream's own scores: the later candidate."""
    main = _main(monkeypatch)
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
    path = _write_test_file(tmp_path, records)
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
            assert q["selected"]["mean"] == _upstream_select(upstream), (name, q["scores"]["mean"], upstream)
            picks[name, rec["id"]] = q["selected"]["mean"]
            if rec["id"] == "dup":  # identical candidates, identical scores, whatever their batch
                assert q["step_scores"][0] == q["step_scores"][2] and q["step_scores"][1] == q["step_scores"][3]
    # the cases really are ties: the later duplicate, and the last of four saturated scores
    assert picks["sharp", "dup"] == 2
    assert picks["saturated", "dup"] == 3 and picks["saturated", "mixed"] == 3


# -- pass@1 and the accuracy-vs-N curve: one definition, exact -------------------------------
def _random_question(rng, k):
    """Scores with ties (a coarse grid), NaN, None and -inf, some candidates without an answer."""
    pool = [0.1, 0.5, 0.5, 0.9, 0.9, -math.inf, float("nan"), None]
    scores = {name: [rng.choice(pool) for _ in range(k)] for name in AGGREGATION_NAMES}
    tf = [rng.random() < 0.5 for _ in range(k)]
    answers = [rng.choice(["A", "a ", "B", "C", None]) for _ in range(k)]
    cands = [f"[Reasoning]\nx\nAnswer: {a}" if a is not None else "[Reasoning]\nno answer" for a in answers]
    q = {"id": "r", "true_false": tf, "scores": scores, "selected": {n: select(s) for n, s in scores.items()}}
    return q, cands


def test_selection_order_is_select_on_every_subset():
    from dreamprm.bestofn import selection_order

    rng = random.Random(7)
    checked = 0
    for _ in range(300):
        k = rng.randint(1, 7)
        scores = _random_question(rng, k)[0]["scores"]["mean"]
        order = selection_order(scores)
        assert sorted(order) == list(range(k))
        for _ in range(10):
            subset = sorted(rng.sample(range(k), rng.randint(1, k)))  # original order kept
            picked = subset[select([scores[i] for i in subset])]
            assert picked == next(i for i in order if i in subset), (scores, subset)
            checked += 1
    assert checked == 3000
    assert selection_order([0.3, float("nan"), 0.7, 0.7, None, -math.inf]) == [3, 2, 0, 5, 1, 4]


def test_curve_is_the_exact_expectation_and_meets_the_summary():
    """Every point equals the average over ALL subsets of size min(N, k) of what select() /
    majority vote / any() gives; N = 1 is pass@1 and N = k the summary, both to the last bit."""
    from fractions import Fraction
    from itertools import combinations

    from dreamprm.steps import extract_answer

    rng = random.Random(3)
    made = [_random_question(rng, k) for k in (1, 2, 3, 5, 6, 7, 7)]
    questions, cands = [m[0] for m in made], [m[1] for m in made]
    curve = accuracy_vs_n(questions, cands)
    assert curve["n"] == list(range(1, 8)) and all(curve["self_consistency_exact"])
    for n in curve["n"]:
        want = dict.fromkeys((*AGGREGATION_NAMES, "random", "oracle", "self_consistency"), Fraction(0))
        for q, c in made:
            tf, k = q["true_false"], len(q["true_false"])
            subsets = list(combinations(range(k), min(n, k)))
            for name in AGGREGATION_NAMES:
                want[name] += Fraction(sum(tf[s[select([q["scores"][name][i] for i in s])]] for s in subsets),
                                       len(subsets))
            want["random"] += Fraction(sum(tf), k)
            want["oracle"] += Fraction(sum(any(tf[i] for i in s) for s in subsets), len(subsets))
            want["self_consistency"] += Fraction(
                sum(tf[s[majority_index([extract_answer(c[i]) for i in s])]] for s in subsets), len(subsets))
        for name, value in want.items():
            assert curve[name][n - 1] == pytest.approx(float(value / len(made)), abs=1e-12), (name, n)
    s = summarise(questions, cands)
    for name in (*AGGREGATION_NAMES, "random", "oracle", "self_consistency"):
        assert curve[name][0] == s["pass@1"], name  # exactly, not approximately
    for name in AGGREGATION_NAMES:
        assert curve[name][-1] == s["accuracy"][name], name
    assert curve["oracle"][-1] == s["oracle"] and curve["self_consistency"][-1] == s["self_consistency"]
    assert s["pass@1"] == pytest.approx(sum(sum(q["true_false"]) / len(q["true_false"]) for q in questions) / 7)


def test_self_consistency_samples_only_beyond_the_exact_limit():
    rng = random.Random(5)
    made = [_random_question(rng, 9) for _ in range(4)]
    questions, cands = [m[0] for m in made], [m[1] for m in made]
    exact = accuracy_vs_n(questions, cands)
    sampled = accuracy_vs_n(questions, cands, draws=50, seed=1, exact_limit=36)  # C(9, N) > 36 for N = 3..6
    assert sampled["self_consistency_exact"] == [True, True, False, False, False, False, True, True, True]
    assert all(exact["self_consistency_exact"])
    for n in (1, 2, 7, 8, 9):
        assert sampled["self_consistency"][n - 1] == exact["self_consistency"][n - 1]
    for n in (3, 4, 5, 6):
        assert abs(sampled["self_consistency"][n - 1] - exact["self_consistency"][n - 1]) < 0.25
    assert accuracy_vs_n(questions, cands, draws=50, seed=1, exact_limit=36) == sampled  # seeded
    for name in AGGREGATION_NAMES:  # the PRM lines never sample
        assert sampled[name] == exact[name]


def _drawn_curve_figure(curve, names=AGGREGATION_NAMES):
    from dreamprm.bestofn import curve_figure

    fig = curve_figure(curve, names)
    fig.tight_layout()
    fig.canvas.draw()
    return fig


def test_figure_every_line_visible_and_readable_ticks():
    import matplotlib.pyplot as plt

    same = [0.5, 0.55, 0.6]
    curve = {"n": [1, 2, 3], "mean": same, "log_mean": list(same), "log_odds": list(same),
             "min": [0.5, 0.52, 0.58], "max": [0.5, 0.6, 0.7], "random": [0.5] * 3, "oracle": [0.5, 0.8, 0.9],
             "self_consistency": [0.5, 0.5, 0.6], "self_consistency_exact": [True] * 3, "draws": 20, "seed": 0,
             "exact_limit": 256}
    fig = _drawn_curve_figure(curve)
    ax = fig.axes[0]
    prm = [l for l in ax.get_lines() if l.get_label().startswith("PRM ")]
    assert len(prm) == 5
    points = [frozenset(map(tuple, l.get_transform().transform(l.get_xydata()).round(1))) for l in prm]
    for i in range(5):  # no line is hidden under another: their drawn points differ everywhere
        for j in range(i):
            assert not points[i] & points[j], (prm[i].get_label(), prm[j].get_label())
    assert len({l.get_marker() for l in prm}) == 5  # and each its own marker
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "PRM log_mean (same as mean)" in labels and "PRM log_odds (same as mean)" in labels
    assert "random pick (= pass@1)" in labels and "oracle (pass@N)" in labels
    plt.close(fig)

    # 64 candidates: integer ticks whose labels do not overlap
    many = {k: (v * 22)[:64] if isinstance(v, list) else v for k, v in curve.items()}
    many["n"] = list(range(1, 65))
    fig = _drawn_curve_figure(many, ["mean"])
    ax = fig.axes[0]
    ticks = [t for t in ax.get_xticklabels() if t.get_text() and 0.5 <= t.get_position()[0] <= 64.5]
    assert 5 <= len(ticks) <= 16 and all(float(t.get_text()).is_integer() for t in ticks)
    boxes = [t.get_window_extent(renderer=fig.canvas.get_renderer()) for t in ticks]
    assert all(not a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert "exact" in ax.get_title()
    plt.close(fig)


# -- --max_length: over-long candidates are truncated to the steps that fit -------------------
def test_scorer_max_length_keeps_the_steps_that_fit(prm):
    from dreamprm.prompt import candidate_conversation, encode_conversation

    image = _image(60, 50, 4)
    question = "What is drawn?"
    lists = [["First a short step.", "Then a second one.", "A third step here.", "Answer: 3"],
             ["Only one."], ["x" * 400 + " a first step far too long", "Answer: 1"]]
    full = Scorer(prm, batch_size=2, max_length=None)
    assert full.max_length == 32768  # the tiny model's max_position_embeddings
    want = full.score_step_lists(image, question, lists)
    n_img = full.prepare_image(image).shape[0] * full.builder.tokens_per_tile
    lengths = [[len(encode_conversation(prm.processor.tokenizer, candidate_conversation(question, s[:j]), n_img)
                    .input_ids) for j in range(1, len(s) + 1)] for s in lists]
    limit = lengths[0][1] + 1  # two steps of candidate 0 fit, three do not; candidate 2's first does not
    assert lengths[0][2] > limit >= lengths[1][0] and lengths[2][0] > limit
    for prefix_cache in (True, False):
        got = Scorer(prm, batch_size=2, max_length=limit, prefix_cache=prefix_cache).score_step_lists(
            image, question, lists)
        assert got.n_steps == [4, 1, 2]
        assert [len(ps) for ps in got] == [2, 1, 0]
        assert got.truncated == [0] and got.unscorable == [2]
        _assert_close([got[0], got[1]], [want[0][:2], want[1]])  # the kept steps score as in the whole
    q = question_result("t", [True, False, True], got, n_steps=got.n_steps)
    assert q["truncated"] == [0] and q["unscorable"] == [2] and q["nonfinite"] == []
    assert all(math.isnan(q["scores"][name][2]) for name in AGGREGATION_NAMES)
    assert all(q["selected"][name] != 2 for name in AGGREGATION_NAMES)  # never selected
