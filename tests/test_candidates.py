"""dreamprm.candidates: a question's CPU half holds exactly what scoring needs."""

import pickle

import pytest
import torch
from PIL import Image

from dreamprm.candidates import PreparedQuestion, QuestionEncoder
from dreamprm.prm import ProcessRewardModel
from dreamprm.prompt import PromptError
from dreamprm.scoring import Scorer


@pytest.fixture(scope="module")
def prm():
    model = ProcessRewardModel.from_pretrained("tiny", device="cpu", precision="fp32")
    with torch.no_grad():
        model.model.lm_head.weight[model.plus_id] *= 30  # scores that differ between steps
    return model


def _image(w, h, seed):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy(), "RGB")


def test_prepared_question_scores_as_score_step_lists(prm):
    image, question = _image(120, 60, 0), "What is drawn?"
    lists = [["A square.", "Answer: square"], [], ["Answer: circle"], ["A square.", "Answer: square"],
             ["x" * 400 + " too long to fit", "Answer: 1"]]
    scorer = Scorer(prm, batch_size=2, max_length=300)
    prepared = scorer.encoder.prepare(image, question, lists)
    assert isinstance(prepared, PreparedQuestion)
    assert prepared.n_steps == [2, 0, 1, 2, 2]
    assert prepared.scored_as == [0, None, 2, 0, 4]  # candidate 3 repeats candidate 0: scored once
    assert sorted(prepared.encoded) == [0, 2]  # candidate 4's first step does not fit in 300 tokens
    assert torch.equal(prepared.pixels, scorer.prepare_image(image))
    got = scorer.score_prepared(prepared)
    assert got == scorer.score_step_lists(image, question, lists)
    # what crosses from a worker process: the pixels and plain id lists, scoring the same
    assert all(isinstance(enc.input_ids, list) for enc in prepared.encoded.values())
    assert scorer.score_prepared(pickle.loads(pickle.dumps(prepared))) == got
    assert got.n_steps == prepared.n_steps and got.unscorable == [4]
    assert got[3] == got[0] and got[1] == [] and len(got[0]) == 2 and len(got[2]) == 1
    # free text goes through the splitter, as score_candidates does
    cands = ["[Reasoning]\nStep 1: four sides.\nAnswer: square", ""]
    assert scorer.score_prepared(scorer.prepare_candidates(image, question, cands)) == \
        scorer.score_candidates(image, question, cands)


def test_no_step_no_image_read(prm, tmp_path):
    """A question whose candidates have no step never opens its image (none will be scored)."""
    encoder = QuestionEncoder(prm.processor)
    prepared = encoder.prepare(tmp_path / "missing.png", "q?", [[], []])
    assert prepared.pixels is None and prepared.encoded == {} and prepared.scored_as == [None, None]
    assert prepared.pin_memory() is prepared
    with pytest.raises(FileNotFoundError):
        encoder.prepare(tmp_path / "missing.png", "q?", [[], ["a step"]])


def test_a_bad_candidate_is_named(prm):
    encoder = QuestionEncoder(prm.processor)
    with pytest.raises(PromptError, match=r"^candidate 1: a turn's value must be a string, got int"):
        encoder.prepare(_image(60, 50, 1), "q?", [["fine"], [3]])


def test_encoder_refuses_bad_settings(prm):
    with pytest.raises(ValueError, match="splitter must be one of"):
        QuestionEncoder(prm.processor, splitter="commas")
    with pytest.raises(ValueError, match="max_length must be at least 1, got 0"):
        QuestionEncoder(prm.processor, max_length=0)
