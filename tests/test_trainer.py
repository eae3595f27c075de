"""train.py on the tiny model, CPU: every mode learns, outputs reload, the bi-level step is right."""

import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from betty.configs import Config, EngineConfig
from torch.func import functional_call

import train
from arguments import parse_train_args, train_parser
from dreamprm.batching import BatchStream, ConversationDataset, ExampleBuilder, collate
from dreamprm.config import TrainConfig
from dreamprm.losses import instance_losses, meta_loss
from dreamprm.prm import ProcessRewardModel
from dreamprm.problems import IterationEngine, LowerProblem, UpperProblem
from dreamprm.records import load_records
from dreamprm.trainer import Trainer, write_figures
from dreamprm.weighting import DomainTable, WeightTable

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


def _args(tmp_path, *extra):
    return parse_train_args([
        "--reward_model", "tiny", "--device", "cpu", "--precision", "fp32", "--no_progress",
        "--train_json_file", str(DATA / "train.json"), "--meta_json_file", str(DATA / "meta.json"),
        "--weights_path", str(tmp_path / "w"), "--figs_dir", str(tmp_path / "figs"),
        "--iteration_num", "3", "--save_every_iterations", "3", "--batch_size", "2", "--meta_batch_size", "2",
        *extra,
    ])


def _run(tmp_path, *extra):
    trainer = Trainer(_args(tmp_path, *extra))
    before = {k: v.detach().clone() for k, v in trainer.prm.state_dict().items()}
    weights_before = copy.deepcopy(trainer.weight_model.state_dict()) if trainer.weight_model is not None else None
    trainer.run()
    return trainer, before, weights_before


def _changed(before, module):
    return [k for k, v in module.state_dict().items() if not torch.equal(before[k], v)]


@pytest.mark.parametrize("mode", [["--retrain", "1"], ["--baseline"], ["--reweighting", "table"],
                                  ["--reweighting", "net"], ["--reweighting", "domain"]])
def test_every_mode_updates_the_prm(tmp_path, tiny_dir, mode):
    trainer, before, _ = _run(tmp_path, *mode)
    assert len(_changed(before, trainer.prm)) > 0.9 * len(before)
    rows = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    assert all(r["lower_loss"] > 0 and "lr" in r and "seconds" in r for r in rows)
    assert ("meta_loss" in rows[0]) == (trainer.weight_model is not None)


def test_table_changes_the_weights_of_seen_instances_only(tmp_path, tiny_dir):
    trainer, _, wb = _run(tmp_path, "--reweighting", "table", "--meta_weight_decay", "0", "--meta_lr", "5e-3")
    seen = set()
    stream = BatchStream(trainer.train_set, 2, 1, 0)  # same seed and batch size: the same order
    for _ in range(3):
        seen.update(stream.next().index.tolist())
    raw_after = trainer.weight_model.raw.detach()
    moved = set(torch.nonzero(raw_after != wb["raw"]).flatten().tolist())
    assert moved == seen
    saved = json.loads((tmp_path / "w" / "instance_weights.json").read_text())
    assert list(saved) == trainer.train_set.ids  # every training id, effective (activated) weight
    assert sum(1 for v in saved.values() if v != 1.0) == len(seen)


def test_table_weight_decay_alone_moves_unseen_rows_by_the_decay_factor(tmp_path, tiny_dir):
    trainer, _, wb = _run(tmp_path, "--reweighting", "table", "--meta_lr", "5e-3", "--meta_weight_decay", "1e-3",
                          "--scheduler_type", "constant")
    stream = BatchStream(trainer.train_set, 2, 1, 0)
    seen = {i for _ in range(3) for i in stream.next().index.tolist()}
    unseen = [i for i in range(len(trainer.train_set)) if i not in seen]
    expected = torch.tensor(1.0) * (1 - 5e-3 * 1e-3) ** 3  # decoupled decay, three upper steps
    torch.testing.assert_close(trainer.weight_model.raw.detach()[unseen], expected.expand(len(unseen)))


def test_net_parameters_change_and_seen_ids_are_recorded(tmp_path, tiny_dir):
    trainer, _, wb = _run(tmp_path, "--reweighting", "net", "--meta_lr", "5e-2")
    assert all(not torch.equal(wb[k], v) for k, v in trainer.weight_model.state_dict().items())
    saved = json.loads((tmp_path / "w" / "instance_weights.json").read_text())
    assert 1 <= len(saved) <= 6
    assert all(0 < v["weight"] < 1 and v["iteration"] in (1, 2, 3) for v in saved.values())


def test_domain_mode_keys_weights_by_dataset(tmp_path, tiny_dir):
    trainer, _, _ = _run(tmp_path, "--reweighting", "domain", "--meta_lr", "5e-2")
    saved = json.loads((tmp_path / "w" / "instance_weights.json").read_text())
    records, _ = load_records(DATA / "train.json", "train")
    assert set(saved) == {r["dataset"] for r in records}
    assert any(v != 1.0 for v in saved.values())


def test_saved_folder_reloads_with_the_same_step_probabilities(tmp_path, tiny_dir):
    trainer, _, _ = _run(tmp_path, "--reweighting", "table")
    reloaded = ProcessRewardModel.from_pretrained(tmp_path / "w", precision="fp32").eval()
    trainer.prm.eval()
    batch = BatchStream(trainer.train_set, 3, 7, 0).next()
    with torch.no_grad():
        a = trainer.prm(**batch.model_inputs()).log_p_plus
        b = reloaded(**batch.model_inputs()).log_p_plus
    assert torch.equal(a, b)
    assert (tmp_path / "w" / "model.safetensors").exists()
    assert json.loads((tmp_path / "w" / "train_args.json").read_text())["reweighting"] == "table"
    figs = write_figures(trainer)
    assert sorted(p.name for p in figs) == ["w_losses.png", "w_weights.png"]
    assert all(p.stat().st_size > 10_000 for p in figs)


def test_train_args_json_round_trips_into_the_config_used(tmp_path, tiny_dir):
    """train_args.json holds every flag under its own name and reads back as the run's TrainConfig."""
    config = _args(tmp_path, "--iteration_num", "1", "--save_every_iterations", "1", "--reweighting", "net",
                   "--adam_epsilon", "1e-7", "--retrain", "0", "--detach_net_input")
    Trainer(config).run()
    saved = json.loads((tmp_path / "w" / "train_args.json").read_text())
    assert list(saved) == [f.name for f in dataclasses.fields(TrainConfig)]
    assert list(saved) == [a.dest for a in train_parser()._actions if a.dest != "help"]
    assert TrainConfig(**saved) == config


class _CapturingUpper(UpperProblem):
    def grad_callback(self):
        self.captured = [p.grad.detach().clone() for p in self.trainable_parameters()]


def test_engine_hypergradient_matches_the_exact_unrolled_one(tiny_dir):
    """Betty's darts upper gradient for the table points the same way as autograd through one SGD step."""
    torch.manual_seed(0)
    # eager attention: the exact reference differentiates twice, which CPU sdpa kernels cannot
    prm = ProcessRewardModel.from_pretrained(tiny_dir, precision="fp32", attn_implementation="eager")
    with torch.no_grad():  # sharper label logits, so per-instance gradients differ clearly (not so
        prm.model.lm_head.weight.mul_(3)  # sharp that p saturates and fp32 finite differences vanish)
    builder = ExampleBuilder(prm.processor, 2)
    train_records, _ = load_records(DATA / "train.json", "train")
    meta_records, _ = load_records(DATA / "meta.json", "meta")
    def has_minus(r):
        return any(t["value"] == "-" for t in r["conversations"] if t["from"] == "gpt")

    # two instances whose steps are all "+" and two with "-" steps: their hypergradients differ in sign
    picked = [r for r in train_records if not has_minus(r)][:2] + [r for r in train_records if has_minus(r)][:2]
    train_set = ConversationDataset(picked, DATA / "train.json", builder)
    meta_set = ConversationDataset(meta_records[:2], DATA / "meta.json", builder)
    lr = 1e-3
    table = WeightTable(train_set.ids, 1.0, "No")

    # exact: d/d alpha of L_meta(phi0 - lr * grad_phi L_lower(phi0, alpha))
    batch = BatchStream(train_set, 4, 3, 0).next()
    meta = BatchStream(meta_set, 2, 4, 0).next()
    phi0 = {k: v.detach().clone().requires_grad_(True) for k, v in prm.named_parameters()}
    alpha = table.raw.detach().clone().requires_grad_(True)
    steps = functional_call(prm, phi0, kwargs=batch.model_inputs())
    lower = (alpha[batch.index] * instance_losses(steps, batch.labels, 4)).mean()
    grads = torch.autograd.grad(lower, list(phi0.values()), create_graph=True)
    phi1 = {k: v - lr * g for (k, v), g in zip(phi0.items(), grads)}
    meta_steps = functional_call(prm, phi1, kwargs=meta.model_inputs())
    exact = torch.autograd.grad(meta_loss(meta_steps, meta.true_false), alpha)[0]

    # engine: one iteration of the real problems on the same batches
    low = LowerProblem("lower", Config(type="finite_darts", precision="fp32"), prm,
                       torch.optim.SGD(prm.parameters(), lr=lr), None, BatchStream(train_set, 4, 3, 0))
    up = _CapturingUpper("upper", Config(type="finite_darts", retain_graph=True, precision="fp32"), table,
                         torch.optim.SGD(table.parameters(), lr=0.0), None, BatchStream(meta_set, 2, 4, 0))
    returned = []
    engine = IterationEngine([up, low], EngineConfig(train_iters=1, strategy="cpu"),
                             {"l2u": {low: [up]}, "u2l": {up: [low]}},
                             on_iteration=lambda it, stats: returned.append((it, stats)))
    engine.run()
    # the stats of the iteration come back from the problems, which then hold none
    [(it, stats)] = returned
    assert it == 1 and set(stats) == {"lower", "upper"}
    assert {"lower_loss", "weight_mean", "instance_index"} <= set(stats["lower"])
    assert set(stats["upper"]) == {"meta_loss", "meta_lr"}
    assert low.take_stats() == {} and up.take_stats() == {}
    assert low.state_dict()["count"] == up.state_dict()["count"] == 1
    darts = up.captured[0]
    assert exact.abs().max() > 0
    assert (exact - exact.mean()).abs().max() > 0.1 * exact.abs().mean()  # instances differ
    cosine = torch.nn.functional.cosine_similarity(darts, exact, dim=0)
    assert cosine > 0.99, (darts, exact)
    # and per instance, not just on the shared part: the centred vectors agree as well
    centred = torch.nn.functional.cosine_similarity(darts - darts.mean(), exact - exact.mean(), dim=0)
    assert centred > 0.95, (darts, exact)


def _small_bilevel_setup(tiny_dir, kind, max_patch_num=2):
    """A tiny PRM (sharpened head), four training and two meta records, and a weight model."""
    torch.manual_seed(0)
    prm = ProcessRewardModel.from_pretrained(tiny_dir, precision="fp32")
    with torch.no_grad():
        prm.model.lm_head.weight.mul_(3)
    builder = ExampleBuilder(prm.processor, max_patch_num)
    train_records, _ = load_records(DATA / "train.json", "train")
    meta_records, _ = load_records(DATA / "meta.json", "meta")
    train_set = ConversationDataset(train_records[:4], DATA / "train.json", builder)
    meta_set = ConversationDataset(meta_records[:2], DATA / "meta.json", builder)
    if kind == "net":
        from dreamprm.weighting import InstanceNet
        weights = InstanceNet(hidden_dim=4)
    else:
        weights = WeightTable(train_set.ids, 1.0, "LeakyReLU") if kind == "table" else DomainTable(train_set.domains)
    return prm, weights, train_set, meta_set


def _two_iterations(setup, graph_free=True, compile_layers=False, compile_towers=False, bucket=0,
                    batch_sizes=(4, 2)):
    """Two engine iterations from copies of ``setup``: the upper gradients, the PRM and weight
    states afterwards, and per PRM forward whether an autograd graph was recorded.
    ``graph_free=False`` runs bench/reference.py's lower problem, whose darts passes record one;
    ``bucket``: the streams pad sequences to a multiple of it; ``batch_sizes``: training, meta."""
    from bench.reference import GraphRecordingLowerProblem

    prm0, weights0, train_set, meta_set = setup
    prm, weights = copy.deepcopy(prm0), copy.deepcopy(weights0)
    if compile_layers:
        prm.compile_layers()
    if compile_towers:
        prm.compile_towers()
    lower_class = LowerProblem if graph_free else GraphRecordingLowerProblem
    low = lower_class("lower", Config(type="finite_darts", precision="fp32"), prm,
                      torch.optim.SGD(prm.parameters(), lr=1e-3), None,
                      BatchStream(train_set, batch_sizes[0], 3, 0, pad_to_multiple_of=bucket))
    up = _CapturingUpper("upper", Config(type="finite_darts", retain_graph=True, precision="fp32"), weights,
                         torch.optim.SGD(weights.parameters(), lr=0.1), None,
                         BatchStream(meta_set, batch_sizes[1], 4, 0, pad_to_multiple_of=bucket))
    engine = IterationEngine([up, low], EngineConfig(train_iters=2, valid_step=1, strategy="cpu"),
                             {"l2u": {low: [up]}, "u2l": {up: [low]}}, on_iteration=lambda *_: True)
    recorded = []
    prm.register_forward_hook(lambda *_: recorded.append(torch.is_grad_enabled()))
    engine.run()
    assert low._pending is None  # neither class keeps a pass's graph past the iteration
    return up.captured, prm.state_dict(), weights.state_dict(), recorded


@pytest.mark.parametrize("kind", ["table", "domain", "net"])
def test_graph_free_perturbation_passes_leave_the_hypergradient_bit_identical(tiny_dir, kind):
    """The darts passes without a PRM autograd graph (LowerProblem, the only production path)
    give exactly the upper gradient and update that passes with the graph give (bench/reference.py's
    GraphRecordingLowerProblem): graph-free passes are only cheaper."""
    setup = _small_bilevel_setup(tiny_dir, kind)
    grads_free, prm_free, w_free, rec_free = _two_iterations(setup, graph_free=True)
    grads_graph, prm_graph, w_graph, rec_graph = _two_iterations(setup, graph_free=False)
    # per iteration: lower step, meta pass, then the two darts perturbation passes
    assert rec_free == [True, True, False, False] * 2
    assert rec_graph == [True] * 8
    assert any(g.abs().max() > 0 for g in grads_graph)
    for a, b in zip(grads_free, grads_graph):
        assert torch.equal(a, b)
    for k in w_graph:
        assert torch.equal(w_free[k], w_graph[k]), k
    for k in prm_graph:
        assert torch.equal(prm_free[k], prm_graph[k]), k


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="inductor needs a C compiler on CPU")
def test_compiled_layers_see_the_darts_perturbations(tiny_dir):
    """--compile keeps the PRM's weights graph inputs: the darts passes at θ ± εv (in-place
    weight updates) give the eager hypergradient, not the zero a frozen copy would give."""
    setup = _small_bilevel_setup(tiny_dir, "table")
    eager, prm_eager, _, _ = _two_iterations(setup)
    compiled, prm_compiled, _, _ = _two_iterations(setup, compile_layers=True)
    assert eager[0].abs().max() > 0
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-3, atol=1e-6)
    for k in prm_eager:
        torch.testing.assert_close(prm_compiled[k], prm_eager[k], rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="inductor needs a C compiler on CPU")
def test_compiled_towers_on_length_buckets_give_the_eager_iterations(tiny_dir):
    """--cuda_graphs' towers (torch.compile, dynamic shapes; reduce-overhead on CUDA, the fused kernels
    without graphs on the CPU)
    on length-bucketed batches: two bi-level iterations give the eager run's upper gradients and
    PRM, so the compiled passes see the optimizer's and darts' in-place weight updates. And the
    buckets themselves change nothing beyond rounding."""
    # one tile per image and batches of two at both levels: every pass has one shape, so the
    # towers compile twice (with and without autograd), which keeps this test near a minute
    setup = _small_bilevel_setup(tiny_dir, "table", max_patch_num=1)
    shapes = dict(bucket=256, batch_sizes=(2, 2))
    eager, prm_eager, _, _ = _two_iterations(setup, batch_sizes=(2, 2))
    padded, prm_padded, _, _ = _two_iterations(setup, **shapes)
    compiled, prm_compiled, _, recorded = _two_iterations(setup, compile_towers=True, **shapes)
    assert recorded == [True, True, False, False] * 2  # still graph-free darts passes
    assert eager[0].abs().max() > 0
    for got, prm_got in ((padded, prm_padded), (compiled, prm_compiled)):
        torch.testing.assert_close(got[0], eager[0], rtol=1e-3, atol=1e-6)
        for k in prm_eager:
            torch.testing.assert_close(prm_got[k], prm_eager[k], rtol=1e-4, atol=1e-6, msg=k)


def test_length_buckets_and_cuda_graphs_reach_the_streams_and_the_prm(tmp_path, tiny_dir):
    plain = Trainer(_args(tmp_path / "a", "--iteration_num", "1"))
    assert plain.train_stream.pad_to_multiple_of == plain.meta_stream.pad_to_multiple_of == 0
    assert plain.prm._towers is None
    bucketed = Trainer(_args(tmp_path / "b", "--iteration_num", "1", "--length_bucket", "64"))
    assert bucketed.train_stream.pad_to_multiple_of == bucketed.meta_stream.pad_to_multiple_of == 64
    assert bucketed.train_stream.next().input_ids.shape[1] % 64 == 0
    graphs = Trainer(_args(tmp_path / "c", "--iteration_num", "1", "--cuda_graphs"))  # compiles on first use
    assert graphs.train_stream.pad_to_multiple_of == graphs.meta_stream.pad_to_multiple_of == 256
    assert graphs.prm._towers is not None
    assert graphs.prm.state_dict().keys() == plain.prm.state_dict().keys()  # checkpoints keep their names


def test_darts_alpha_reaches_bettys_finite_difference(tmp_path, tiny_dir):
    """--darts_alpha is the R of the perturbation the lower problem's darts hypergradient uses."""
    default = Trainer(_args(tmp_path / "a", "--iteration_num", "1"))
    assert default.lower.config.darts_alpha == 0.01  # Betty's and the public code's value
    trainer = Trainer(_args(tmp_path / "b", "--iteration_num", "1", "--darts_alpha", "0.5"))
    assert trainer.lower.config.darts_alpha == 0.5


def test_steps_enter_cuda_autocast_unless_no_autocast(monkeypatch):
    """bf16/fp16 steps on CUDA run under CUDA autocast (Betty's numerics, the public code);
    --no_autocast runs them in the weights' dtype; fp32 steps and CPU steps have none."""
    import contextlib

    import dreamprm.problems as problems

    calls = []

    @contextlib.contextmanager
    def recording(device_type, dtype=None):
        calls.append((device_type, dtype))
        yield

    monkeypatch.setattr(problems.torch.amp, "autocast", recording)
    for enabled, precision, device in [(True, "bf16", "cuda"), (True, "fp16", "cuda:1"), (False, "bf16", "cuda"),
                                       (True, "fp32", "cuda"), (True, "bf16", "cpu")]:
        with problems.step_autocast(enabled, precision, problems.torch.bfloat16, device):
            pass
    assert calls == [("cuda", torch.bfloat16), ("cuda", torch.bfloat16)]


def test_a_bf16_cpu_run_prints_no_deprecation_warning(tmp_path, tiny_dir):
    """Betty's torch.cuda.amp.autocast warned on every step; the project's own autocast does not."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        trainer = Trainer(_args(tmp_path, "--precision", "bf16", "--iteration_num", "1", "--save_every_iterations",
                                "1", "--reweighting", "table", "--gradient_checkpointing"))
        trainer.run()
    assert (tmp_path / "w" / "metrics.jsonl").read_text().count("\n") == 1


# What each run script must pass: the public scripts' settings (DreamPRM's main.py for the domain
# run), the paper's where the two differ (the scripts say which in a comment).
SCRIPT_SETTINGS = {
    "run_coldstart.sh": {"retrain": True, "lr": 5e-5, "weight_decay": 5e-2, "optimizer": "adamw_hf"},
    "run_table.sh": {"reweighting": "table", "meta_lr": 5e-3, "activation_function": "Clip",
                     "optimizer": "adamw_hf", "max_patch_num": 6},
    "run_net.sh": {"reweighting": "net", "meta_lr": 5e-4, "activation_function": "sigmoid", "max_patch_num": 5,
                   "hidden_dim": 10, "optimizer": "adamw_hf"},
    "run_domain.sh": {"reweighting": "domain", "lr": 5e-7, "optimizer": "adamw_torch", "lower_loss": "mse",
                      "scheduler_type": "step_lr", "scheduler_step_size": 5000, "scheduler_gamma": 0.5,
                      "meta_lr": 1e-2, "meta_weight_decay": 1e-3, "meta_scheduler_type": "constant",
                      "aggregation_function": "log_odds", "loss_target": "+", "unroll_steps": 5,
                      "gradiant_clipping": 0.0, "activation_function": None},
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPT_SETTINGS))
def test_run_scripts_carry_their_settings_and_pass_extra_arguments_through(tmp_path, tiny_dir, script):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable)
    iterations = "5" if script == "run_domain.sh" else "2"  # one upper step per 5 lower steps
    cmd = ["bash", str(ROOT / script), "--reward_model", "tiny", "--device", "cpu", "--precision", "fp32",
           "--iteration_num", iterations, "--weights_path", str(out), "--figs_dir", str(tmp_path / "figs"),
           "--train_json_file", str(DATA / "coldstart.json" if "cold" in script else DATA / "train.json"),
           "--meta_json_file", str(DATA / "meta.json"), "--no_progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads((out / "train_args.json").read_text())
    assert saved["iteration_num"] == int(iterations) and saved["reward_model"] == "tiny" and saved["device"] == "cpu"
    assert {k: saved[k] for k in SCRIPT_SETTINGS[script]} == SCRIPT_SETTINGS[script]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == int(iterations)
    if script == "run_domain.sh":
        assert [("meta_loss" in r) for r in rows] == [False] * 4 + [True]
        weights = json.loads((out / "instance_weights.json").read_text())
        assert sum(weights.values()) == pytest.approx(len(weights))  # normalised to mean 1


def test_a_non_finite_meta_gradient_never_reaches_the_prm(tmp_path, tiny_dir):
    """Betty's darts moves the PRM by R·v/|v| and back; with a NaN v that leaves NaN in the PRM.
    finite_darts (the hypergradient the problems use) skips the step: the PRM is untouched and
    the upper problem gets a NaN gradient, which its guard counts as a skipped update."""
    from dreamprm.hypergradient import finite_darts

    trainer = Trainer(_args(tmp_path, "--iteration_num", "1", "--save_every_iterations", "1"))
    trainer.run()  # one real iteration: the problems hold a current batch
    assert trainer.lower.config.type == "finite_darts"
    before = {k: v.detach().clone() for k, v in trainer.prm.state_dict().items()}
    vector = [torch.full_like(p, float("nan")) for p in trainer.lower.trainable_parameters()]
    grads = finite_darts(vector, trainer.lower, trainer.upper, sync=False)
    assert all(torch.equal(before[k], v) for k, v in trainer.prm.state_dict().items())
    assert all(torch.isnan(g).all() for g in grads)
    finite = [torch.zeros_like(p) for p in trainer.lower.trainable_parameters()]
    finite[0][..., 0] = 1.0
    assert all(torch.isfinite(g).all() for g in finite_darts(finite, trainer.lower, trainer.upper, sync=False))
