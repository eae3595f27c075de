"""dreamprm.scoring: scores equal to the naive path, the image encoded once, prefetching, --max_length."""

import math
import multiprocessing
import threading

import pytest
import torch
from PIL import Image

from dreamprm.aggregation import AGGREGATIONS
from dreamprm.batching import ExampleBuilder, collate
from dreamprm.prm import ProcessRewardModel
from dreamprm.prompt import candidate_conversation, encode_conversation
from dreamprm.results import question_result
from dreamprm.scoring import Scorer, default_workers, evaluate, iter_evaluate, load_scorer
from dreamprm.steps import split_steps


# -- scoring equals the naive path --------------------------------------------------------
@pytest.fixture(scope="module")
def prm():
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
            assert abs(a - b) <= 1e-5 * abs(b), (got, want)  # relative: b is a probability


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
    recs = _eval_records(tmp_path)
    json_path = tmp_path / "test.json"  # image paths resolve beside it
    scorer = Scorer(prm, batch_size=2)
    serial_q, serial_c = evaluate(scorer, recs, json_path, progress=False, prefetch=0)
    assert [q["id"] for q in serial_q] == [r["id"] for r in recs]
    assert len({q["step_scores"][0][0] for q in serial_q}) == len(recs)  # every image scores differently

    # with prefetch the questions are prepared in a background thread, ahead of the scoring:
    # scoring question 0 waits until question 1 is being prepared (impossible when serial)
    threads, scored, second_started = [], [], threading.Event()
    prepare, score = scorer.prepare_candidates, scorer.score_prepared

    def prepare_spy(*args, **kw):
        threads.append(threading.current_thread())
        if len(threads) == 2:
            second_started.set()
        return prepare(*args, **kw)

    def score_spy(question):
        scored.append(question)
        if len(scored) == 1:
            assert second_started.wait(timeout=60), "question 1 was not prepared while question 0 was scored"
        return score(question)

    monkeypatch.setattr(scorer, "prepare_candidates", prepare_spy)
    monkeypatch.setattr(scorer, "score_prepared", score_spy)
    for prefetch in (1, 2, 7):
        threads.clear()
        scored.clear()
        second_started.clear()
        got_q, got_c = evaluate(scorer, recs, json_path, progress=False, prefetch=prefetch)
        assert got_q == serial_q and got_c == serial_c  # exact: step scores, aggregates, selections, order
        assert len(threads) == len(recs) and threading.main_thread() not in threads
    assert not [t for t in threading.enumerate() if t.name.startswith("bestofn-prefetch")]  # worker stopped


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_evaluate_prefetch_bad_image_same_error(prm, tmp_path, monkeypatch, damage):
    recs = _eval_records(tmp_path)
    if damage == "missing":
        recs[2]["image_path"] = "img/nope.png"
    else:
        (tmp_path / "img" / "e2.png").write_bytes(b"not an image at all")
    scorer = Scorer(prm, batch_size=2)
    scored = []
    score = scorer.score_prepared
    monkeypatch.setattr(scorer, "score_prepared", lambda q: scored.append(q) or score(q))
    errors = {}
    for prefetch, workers in ((0, 0), (1, 0), (2, 0), (1, 1), (2, 2)):
        scored.clear()
        with pytest.raises(Exception) as info:
            evaluate(scorer, recs, tmp_path / "test.json", progress=False, prefetch=prefetch, workers=workers)
        errors[prefetch, workers] = (type(info.value), str(info.value))
        assert len(scored) == 2  # raised at question 2, as when serial
    assert len(set(errors.values())) == 1  # the same exception, thread, worker processes or serial
    assert issubclass(errors[0, 0][0], OSError) and str(tmp_path / "img" / recs[2]["image_path"][4:]) in errors[0, 0][1]
    assert not [t for t in threading.enumerate() if t.name.startswith("bestofn-prefetch")]  # worker stopped
    assert not multiprocessing.active_children()  # worker processes stopped


def test_evaluate_bad_candidate_same_error_every_way(prm, tmp_path, monkeypatch):
    """Candidates are tokenised ahead too: one that cannot be raises at its question, as when serial."""
    recs = _eval_records(tmp_path)
    recs[3]["candidates"][1] = {"not": "text"}
    scorer = Scorer(prm, batch_size=2)
    scored = []
    score = scorer.score_prepared
    monkeypatch.setattr(scorer, "score_prepared", lambda q: scored.append(q) or score(q))
    errors = set()
    for prefetch, workers in ((0, 0), (2, 0), (2, 2)):
        scored.clear()
        with pytest.raises(Exception) as info:
            evaluate(scorer, recs, tmp_path / "test.json", progress=False, prefetch=prefetch, workers=workers)
        errors.add((type(info.value), str(info.value)))
        assert len(scored) == 3
    assert len(errors) == 1
    assert not multiprocessing.active_children()


def test_evaluate_in_worker_processes_equals_serial(prm, tmp_path, monkeypatch):
    recs = _eval_records(tmp_path)
    json_path = tmp_path / "test.json"
    scorer = Scorer(prm, batch_size=2)
    serial = evaluate(scorer, recs, json_path, progress=False, prefetch=0)
    alive = []  # worker processes alive while each question is scored
    score = scorer.score_prepared
    monkeypatch.setattr(scorer, "score_prepared",
                        lambda q: alive.append(len(multiprocessing.active_children())) or score(q))
    for prefetch, workers in ((1, 1), (2, 2), (7, 2)):
        alive.clear()
        assert evaluate(scorer, recs, json_path, progress=False, prefetch=prefetch, workers=workers) == serial
        assert alive[0] == workers  # the images come from the worker processes
        assert not multiprocessing.active_children()  # and they are stopped at the end

    # a caller that stops after the first question stops the workers at once
    scored = iter_evaluate(scorer, recs, json_path, progress=False, prefetch=2, workers=2)
    first, _ = next(scored)
    assert first == serial[0][0] and len(multiprocessing.active_children()) == 2
    scored.close()
    assert not multiprocessing.active_children()


def test_default_workers_are_processes_on_cuda_only():
    assert default_workers("cpu") == 0
    assert 0 <= default_workers("cuda:1") <= 2


# -- --max_length: over-long candidates are truncated to the steps that fit -------------------
def test_scorer_max_length_keeps_the_steps_that_fit(prm):
    image = _image(60, 50, 4)
    question = "What is drawn?"
    lists = [["First a short step.", "Then a second one.", "A third step here.", "Answer: 3"],
             ["Only one."], ["x" * 400 + " a first step far too long", "Answer: 1"]]
    full = Scorer(prm, batch_size=2, max_length=None)
    assert full.max_length == 32768  # the tiny model's max_position_embeddings
    want = full.score_step_lists(image, question, lists)
    n_img = full.prepare_image(image).shape[0] * full.encoder.builder.tokens_per_tile
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
    assert all(math.isnan(q["scores"][name][2]) for name in AGGREGATIONS)
    assert all(q["selected"][name] != 2 for name in AGGREGATIONS)  # never selected


def test_load_scorer_defaults_to_the_device_test_py_picks(tiny_dir, monkeypatch):
    if torch.cuda.is_available():
        scorer = load_scorer("tiny")
        assert scorer.device.type == "cuda" and scorer.dtype == torch.bfloat16
        return
    assert load_scorer("tiny").device.type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine: cuda is asked for
    with pytest.raises(Exception, match=r"(?i)cuda|nvidia"):
        load_scorer("tiny")


def test_worker_processes_stay_quiet_about_a_handover_the_main_process_broke(monkeypatch, capsys):
    """A Ctrl-C or SIGTERM can land while a worker hands a tensor over; the worker's handover
    thread must not print the broken connection's traceback into the user's terminal."""
    import sys

    from dreamprm.scoring import _quiet_handover_errors

    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    _quiet_handover_errors(0)
    for kind in (EOFError, ConnectionResetError, BrokenPipeError, multiprocessing.AuthenticationError):
        sys.excepthook(kind, kind("the main process went away"), None)
    assert capsys.readouterr().err == ""
    sys.excepthook(ValueError, ValueError("a real problem"), None)
    assert "ValueError: a real problem" in capsys.readouterr().err
