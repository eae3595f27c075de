"""Best-of-N: aggregation, selection, baselines, scoring equal to the naive path, the CLI."""

import json
import math
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
    EPS,
    Scorer,
    accuracy_vs_n,
    aggregate,
    agg_log_mean,
    agg_log_odds,
    agg_max,
    agg_mean,
    agg_min,
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


# -- aggregation and selection --------------------------------------------------------------
def test_aggregations_exact():
    ps = [0.5, 0.8, 0.2]
    assert agg_mean(ps) == pytest.approx(0.5, abs=1e-12)
    assert agg_log_mean(ps) == pytest.approx((math.log(0.5) + math.log(0.8) + math.log(0.2)) / 3, abs=1e-12)
    assert agg_max(ps) == 0.8
    assert agg_min(ps) == 0.2
    # (log(1) + log(4) + log(1/4)) / 3 = 0: DreamPRM's mean step log-odds
    assert agg_log_odds(ps) == pytest.approx(0.0, abs=1e-12)
    assert agg_log_odds([0.9, 0.75]) == pytest.approx((math.log(9) + math.log(3)) / 2, abs=1e-12)
    # clamping to [1e-6, 1 - 1e-6] for the logarithms
    assert agg_log_odds([1.0]) == pytest.approx(math.log((1 - EPS) / EPS), abs=1e-9)
    assert agg_log_odds([0.0]) == pytest.approx(math.log(EPS / (1 - EPS)), abs=1e-9)
    assert agg_log_mean([0.0, 1.0]) == pytest.approx((math.log(EPS) + math.log(1 - EPS)) / 2, abs=1e-12)
    # no steps: never preferred
    for name in AGGREGATION_NAMES:
        assert aggregate([[]], name) == [-math.inf]
    assert aggregate([[0.2, 0.4], [1.0]], "mean") == pytest.approx([0.3, 1.0])


def test_mean_in_bf16_is_torch_mean_of_the_bf16_step_scores():
    """Upstream's score is torch.mean over bf16 probabilities, rounded to bf16: near 1 its
    resolution is 2**-8, so close candidates tie."""
    ps = [0.99609375, 1.0, 0.9921875]  # bf16 values
    assert agg_mean(ps, torch.bfloat16) == float(torch.tensor(ps, dtype=torch.bfloat16).mean())
    assert agg_mean(ps, torch.bfloat16) == 0.99609375  # 0.99609... exactly a bf16 step
    assert agg_mean([1.0, 0.99609375], torch.bfloat16) == agg_mean([0.99609375, 1.0, 1.0, 0.99609375], torch.bfloat16)
    assert aggregate([ps], "mean", torch.bfloat16) == [agg_mean(ps, torch.bfloat16)]
    assert aggregate([ps], "max", torch.bfloat16) == [1.0]


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
    assert pass_at_1([False, True, True]) == 0.0
    assert pass_at_1([True, False]) == 1.0
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
    assert s["pass@1"] == 0.5
    assert s["random"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert s["oracle"] == 1.0
    assert s["self_consistency"] == 1.0

    curve = accuracy_vs_n([q1, q2], cands, draws=5, seed=3)
    assert curve["n"] == [1, 2, 3]
    # at N = all candidates the subset is the full set: same numbers as the summary
    for name in AGGREGATION_NAMES:
        assert curve[name][-1] == pytest.approx(s["accuracy"][name])
    assert curve["oracle"][-1] == 1.0 and curve["self_consistency"][-1] == 1.0
    assert curve["random"][-1] == pytest.approx(s["random"])
    # with one candidate every method is a random pick: oracle == random for each draw
    assert curve["oracle"][0] == pytest.approx(curve["random"][0])
    assert accuracy_vs_n([q1, q2], cands, draws=5, seed=3) == curve  # seeded


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
    assert set(report) == {"summary", "questions"}
    s = report["summary"]
    assert set(s) == {"n_questions", "accuracy", "pass@1", "random", "oracle", "self_consistency", "scoring"}
    assert s["scoring"]["score_dtype"] == "float32" and s["scoring"]["step_splitter"] == "upstream"
    assert s["scoring"]["ties"].startswith("later")
    assert set(s["accuracy"]) == set(AGGREGATION_NAMES)
    assert s["n_questions"] == 3
    for v in [*s["accuracy"].values(), s["pass@1"], s["random"], s["oracle"], s["self_consistency"]]:
        assert 0.0 <= v <= 1.0
    assert s["pass@1"] == 1.0 and s["oracle"] == 1.0
    assert s["random"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert [q["id"] for q in report["questions"]] == ["q0", 1, "q2"]
    for q, rec in zip(report["questions"], json.loads(path.read_text())):
        assert set(q) == {"id", "true_false", "step_scores", "scores", "selected"}
        assert q["true_false"] == rec["true_false"]
        n = len(rec["candidates"])
        assert len(q["step_scores"]) == n
        assert [len(ps) for ps in q["step_scores"]][:2] == [3, 2][: n]  # steps + answer step
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
    "length mismatch": ({"true_false": [True]}, "1 values for 3 candidates"),
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
