"""Non-finite losses: the update is skipped and counted, and --max_bad_steps stops the run."""

from __future__ import annotations

import pytest
import torch
from runs import read_metrics, run_trainer, train_argv, train_config

# A skipped first update makes Betty step the scheduler before any optimizer step: expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning")



def _nan_on(monkeypatch, iterations) -> dict:
    """Make the lower loss NaN at ``iterations`` (None: always); returns a dict that holds the
    run's Trainer under "trainer" once it is built."""
    import dreamprm.problems as problems
    import dreamprm.trainer as trainer_mod

    trainer_box: dict = {}
    real_init = trainer_mod.Trainer.__init__

    def init(self, config):
        real_init(self, config)
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
    trainer = run_trainer(tmp_path / "n", "--iteration_num", "3", "--save_every_iterations", "3", *extra, each=each)
    rows = read_metrics(tmp_path / "n")
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
    rc = train.main(train_argv(w, "--iteration_num", "10", "--save_every_iterations", "10", "--max_bad_steps", "2",
                          "--baseline"))
    assert rc == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: stopped at iteration 2: 2 non-finite lower-level updates in a row "
                              "(--max_bad_steps 2)")
    assert [r["skipped_lower"] for r in read_metrics(w)] == [1, 2]
    with pytest.raises(trainer_mod.TrainingDiverged, match="non-finite"):
        trainer_mod.Trainer(train_config(tmp_path / "e", "--iteration_num", "5", "--max_bad_steps", "1")).run()


