"""The five aggregations: exact values, both entry points, the meta loss (per CoT and per step),
and one test that pins the scores training aggregates to the scores test.py reports."""

import json
import math
from pathlib import Path

import pytest
import torch

from dreamprm import config, losses, problems
from dreamprm.aggregation import AGGREGATIONS, EPS, aggregate, aggregate_lists, mean_per_group
from dreamprm.batching import ExampleBuilder, collate, load_rgb
from dreamprm.losses import meta_loss
from dreamprm.prm import StepOutputs
from dreamprm.prompt import candidate_conversation
from dreamprm.results import question_result
from dreamprm.scoring import Scorer
from dreamprm.steps import split_steps
from dreamprm.trainer import Trainer
from runs import read_metrics, train_config

ROOT = Path(__file__).resolve().parents[1]
P = [0.5, 0.8, 0.2]


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


# Each aggregation written out by hand for the candidate P and the clamped extremes.
EXPECTED = {
    "mean": (0.5, [0.0, 1.0], 0.5),
    "log_mean": ((0.5 * 0.8 * 0.2) ** (1 / 3), [0.0, 1.0], math.sqrt(EPS)),
    "max": (0.8, [0.0, 1.0], 1.0),
    "min": (0.2, [0.0, 1.0], 0.0),
    # log-odds log 1, log 4, log 1/4 average to 0
    "log_odds": (0.5, [0.0, 1.0], _sigmoid((math.log(EPS / (1 - EPS)) + math.log((1 - EPS) / (1 - (1 - EPS)))) / 2)),
}


@pytest.mark.parametrize("how", AGGREGATIONS)
def test_each_aggregation_has_its_written_out_value_in_both_entry_points(how):
    value, extremes, extreme_value = EXPECTED[how]
    assert aggregate_lists([P], how) == [pytest.approx(value, abs=1e-12)]
    assert aggregate_lists([extremes], how) == [pytest.approx(extreme_value, abs=1e-12)]
    got = aggregate(torch.tensor(P + extremes, dtype=torch.float64), torch.tensor([0, 0, 0, 1, 1]), 2, how)
    assert got.tolist() == pytest.approx([value, extreme_value], abs=1e-12)


def test_log_odds_of_two_steps_is_the_sigmoid_of_their_mean_log_odds():
    assert aggregate_lists([[0.9, 0.75]], "log_odds") == [pytest.approx(_sigmoid((math.log(9) + math.log(3)) / 2))]


@pytest.mark.parametrize("how", AGGREGATIONS)
def test_a_candidate_without_steps_gets_minus_infinity_and_others_are_unaffected(how):
    out = aggregate_lists([[], [0.25, 0.75], []], how)
    assert out[0] == out[2] == -math.inf
    assert out[1] == aggregate_lists([[0.25, 0.75]], how)[0]


def test_an_unknown_aggregation_names_the_choices():
    with pytest.raises(ValueError, match="unknown aggregation 'median'; choose from mean, log_mean"):
        aggregate_lists([P], "median")


def test_a_bf16_mean_equals_torch_mean_of_the_bf16_scores():
    """Upstream's test score is torch.mean over bf16 probabilities: sums in fp32, one rounding."""
    gen = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 7, 40):
        for _ in range(50):
            ps = torch.rand(n, generator=gen).pow(0.05).to(torch.bfloat16)
            assert aggregate_lists([ps.tolist()], "mean", torch.bfloat16) == [float(ps.mean())]
    # near 1 a bf16 mean moves in steps of 2**-8, so these two candidates tie
    # (the exact means 0.998046875 lie halfway between two bf16 values and round to even: 1.0)
    assert aggregate_lists([[1.0, 0.99609375], [0.99609375, 1.0, 1.0, 0.99609375]], "mean", torch.bfloat16) == [
        1.0, 1.0]


def test_mean_per_group_of_fp32_is_index_add_over_counts():
    values = torch.tensor([1.0, 2.0, 4.0, 8.0])
    assert mean_per_group(values, torch.tensor([0, 0, 2, 2]), 3).tolist() == [1.5, 0.0, 6.0]


def _steps(p_plus, p_minus, index):
    return StepOutputs(torch.zeros(len(index)), torch.zeros(len(index)), torch.tensor(p_plus).log(),
                       torch.tensor(p_minus).log(), torch.tensor(index))


@pytest.mark.parametrize("how", AGGREGATIONS)
@pytest.mark.parametrize("target", ["both", "+"])
def test_meta_loss_is_the_squared_error_of_the_aggregate_for_every_mode_and_target(how, target):
    # CoT 0 (correct) has steps 0-1, CoT 1 (wrong) has step 2.
    p_plus, p_minus = [0.9, 0.6, 0.3], [0.05, 0.3, 0.6]
    steps = _steps(p_plus, p_minus, [0, 0, 1])
    correct = torch.tensor([1.0, 0.0])
    loss = float(meta_loss(steps, correct, how, target))
    if target == "both":  # p(+) of the correct CoT's steps, p(-) of the wrong one's, against 1
        scores = aggregate_lists([p_plus[:2], p_minus[2:]], how, torch.float32)
        want = ((scores[0] - 1) ** 2 + (scores[1] - 1) ** 2) / 2
    else:  # p(+) of every step, against correctness
        scores = aggregate_lists([p_plus[:2], p_plus[2:]], how, torch.float32)
        want = ((scores[0] - 1) ** 2 + (scores[1] - 0) ** 2) / 2
    assert loss == pytest.approx(want, rel=1e-6)


def test_the_meta_loss_gradient_reaches_every_step_it_aggregates():
    p = torch.tensor([0.9, 0.6, 0.3], requires_grad=True)
    steps = StepOutputs(p, p, p.log(), (1 - p).log(), torch.tensor([0, 0, 1]))
    meta_loss(steps, torch.tensor([1.0, 1.0]), "log_mean", "+").backward()
    assert bool((p.grad != 0).all())


@pytest.mark.parametrize("how", AGGREGATIONS)
@pytest.mark.parametrize("target,errors", [
    # p(+) of the correct CoT's two steps and p(-) of the wrong CoT's step, each against 1
    ("both", [[(0.9 - 1) ** 2, (0.6 - 1) ** 2], [(0.6 - 1) ** 2]]),
    # p(+) of every step against its CoT's correctness
    ("+", [[(0.9 - 1) ** 2, (0.6 - 1) ** 2], [(0.3 - 0) ** 2]]),
])
def test_the_step_meta_loss_is_the_mean_squared_error_over_all_steps(how, target, errors):
    steps = _steps([0.9, 0.6, 0.3], [0.05, 0.3, 0.6], [0, 0, 1])
    correct = torch.tensor([1.0, 0.0])
    loss = float(meta_loss(steps, correct, how, target, per="step"))
    every_step = errors[0] + errors[1]
    assert loss == pytest.approx(sum(every_step) / 3, rel=1e-6)  # the same whatever the (unused) aggregation
    # every step weighs the same: not the mean over CoTs of their steps' mean squared error
    by_cot = (sum(errors[0]) / 2 + sum(errors[1]) / 1) / 2
    assert loss != pytest.approx(by_cot, rel=1e-3)


def test_the_step_meta_loss_gradient_reaches_every_step_as_its_own_squared_error():
    p_plus = torch.tensor([0.9, 0.6, 0.3, 0.2], dtype=torch.float64, requires_grad=True)
    p_minus = torch.tensor([0.05, 0.3, 0.6, 0.7], dtype=torch.float64, requires_grad=True)
    steps = StepOutputs(p_plus, p_minus, p_plus.log(), p_minus.log(), torch.tensor([0, 0, 1, 1]))
    meta_loss(steps, torch.tensor([1.0, 0.0]), target="both", per="step").backward()
    # d/dp of mean((p - 1)^2) over 4 steps: 2 (p - 1) / 4, on the score each step is judged by
    assert p_plus.grad.tolist() == pytest.approx([2 * (0.9 - 1) / 4, 2 * (0.6 - 1) / 4, 0, 0])
    assert p_minus.grad.tolist() == pytest.approx([0, 0, 2 * (0.6 - 1) / 4, 2 * (0.7 - 1) / 4])


def test_the_meta_loss_names_its_choices():
    steps = _steps([0.5], [0.5], [0])
    with pytest.raises(ValueError, match="unknown meta loss 'cot'; choose from aggregate, step"):
        meta_loss(steps, torch.tensor([1.0]), per="cot")
    with pytest.raises(ValueError, match="unknown loss target '-'"):
        meta_loss(steps, torch.tensor([1.0]), target="-", per="step")
    assert config.META_LOSSES == losses.META_LOSSES


@pytest.mark.parametrize("target", ["both", "+"])
def test_a_bilevel_run_with_the_step_meta_loss_trains_on_the_step_loss(tmp_path, tiny_dir, monkeypatch, target):
    """train.py --meta_loss step, 2 iterations on the tiny model: the meta loss it logs is the mean
    squared error over the meta steps, written out here from the step scores the upper level saw."""
    seen = []
    real = problems.meta_loss

    def recording(steps, correct, how, target, per):
        seen.append((steps.p_plus.detach().tolist(), steps.p_minus.detach().tolist(),
                     steps.batch_index.tolist(), correct.tolist(), per))
        return real(steps, correct, how, target, per=per)

    monkeypatch.setattr(problems, "meta_loss", recording)
    weights = tmp_path / "w"
    trainer = Trainer(train_config(weights, "--meta_loss", "step", "--loss_target", target, "--iteration_num", "2",
                                   "--batch_size", "2", "--meta_batch_size", "2"))
    raw_before = trainer.weight_model.raw.detach().clone()
    trainer.run()
    rows = read_metrics(weights)
    assert [r["iteration"] for r in rows] == [1, 2] and len(seen) == 2
    for row, (p_plus, p_minus, cot, correct, per) in zip(rows, seen):
        assert per == "step"
        if target == "both":
            scores, goals = [p_plus[i] if correct[c] else p_minus[i] for i, c in enumerate(cot)], [1.0] * len(cot)
        else:
            scores, goals = p_plus, [correct[c] for c in cot]
        by_hand = sum((p - g) ** 2 for p, g in zip(scores, goals)) / len(scores)
        assert row["meta_loss"] == pytest.approx(by_hand, abs=5e-7)  # fp32 against float64
    # at iteration 1 the meta batch holds a correct CoT of 5 steps and a wrong one of 4: weighing
    # steps, not CoTs, shows with --loss_target + (with both, the tiny PRM's near-equal scores
    # make the two losses differ only in the fifth decimal)
    p_plus, p_minus, cot, correct, _ = seen[0]
    assert [cot.count(k) for k in range(len(correct))] == [5, 4] and correct == [1.0, 0.0]
    if target == "both":
        by_cot = [[p_plus[i] if correct[k] else p_minus[i] for i, c in enumerate(cot) if c == k] for k in (0, 1)]
        aggregated = sum((sum(ps) / len(ps) - 1) ** 2 for ps in by_cot) / 2
        assert abs(rows[0]["meta_loss"] - aggregated) > 1e-5
    else:
        by_cot = [[p_plus[i] for i, c in enumerate(cot) if c == k] for k in (0, 1)]
        aggregated = ((sum(by_cot[0]) / 5 - 1) ** 2 + (sum(by_cot[1]) / 4) ** 2) / 2
        assert abs(rows[0]["meta_loss"] - aggregated) > 1e-2
    assert not torch.equal(trainer.weight_model.raw.detach(), raw_before)  # the weights learned
    assert json.loads((weights / "train_args.json").read_text())["meta_loss"] == "step"


def test_training_and_evaluation_aggregate_the_same_step_scores_to_the_same_numbers(tiny_prm):
    """A test question's candidates, scored the way the meta loss sees them (training forward of
    each candidate's conversation) and the way test.py does (Scorer with its prefix cache): the
    aggregates test.py reports are the ones the meta loss computes."""
    rec = json.loads((ROOT / "data" / "test.json").read_text())[0]
    image = load_rgb(ROOT / "data" / rec["image_path"])
    builder = ExampleBuilder(tiny_prm.processor, max_patch_num=2)
    step_lists = [split_steps(c, "upstream") for c in rec["candidates"]]
    items = [builder.build(candidate_conversation(rec["question"], steps), image) for steps in step_lists]
    batch = collate(items, tiny_prm.processor.tokenizer.pad_token_id or 0)
    with torch.no_grad():
        steps = tiny_prm(**batch.model_inputs())
    scorer = Scorer(tiny_prm, max_patch_num=2, score_dtype="fp32")
    scores = scorer.score_step_lists(image, rec["question"], step_lists)
    reported = question_result(rec["id"], rec["true_false"], scores)["scores"]
    for how in AGGREGATIONS:
        trained = aggregate(steps.p_plus, steps.batch_index, len(items), how)
        assert reported[how] == pytest.approx(trained.tolist(), abs=1e-5), how
