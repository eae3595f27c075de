"""Command-line flags of the project's entry points, in one place.

``train_parser()`` is ``train.py`` (the upstream flag table, names and defaults kept, plus this
project's flags); ``test_parser()`` is ``test.py`` (best-of-N evaluation of a trained PRM).
"""

from __future__ import annotations

import argparse

AGGREGATION_CHOICES = ("mean", "log_mean", "max", "min", "log_odds", "all")
# Learning-rate schedules of either level (dreamprm.optim): step_lr is upstream's name, step ours.
SCHEDULER_CHOICES = ("cosine_schedule_with_warmup", "step_lr", "step", "constant")


TEST_EPILOG = """\
baselines (question with k candidates, c of them correct):
  pass@1            c/k averaged over questions: the expected accuracy of one candidate drawn
                    at random (the same number as a random pick)
  first candidate   accuracy of always taking candidate 0 (files are often ordered)
  oracle            a question counts when any candidate is correct (pass@k)
  self-consistency  majority vote over the candidates' normalised 'Answer:' texts

accuracy-vs-N curve (figs/ beside --output_file): for N = 1..k, the expected accuracy when each
question keeps a uniformly random subset of min(N, k) candidates; exact for every aggregation,
random and oracle, so every curve starts at pass@1 at N = 1.

exit status: 0 done, 1 out of memory, 2 bad input, 3 non-finite scores (--allow_nonfinite),
130/143 interrupted (the questions scored so far are saved, marked "partial": true)
"""


def test_parser() -> argparse.ArgumentParser:
    """Flags of ``test.py``: score every candidate, aggregate, select, report accuracy."""
    p = argparse.ArgumentParser(
        prog="test.py",
        description="Best-of-N evaluation: score every candidate's steps with the PRM, aggregate, "
        "select the best candidate, and report accuracy against baselines.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=TEST_EPILOG,
    )
    p.add_argument("--test_json_file", default="./data/test.json",
                   help="test records: question, image_path, candidates, true_false (default: %(default)s)")
    p.add_argument("--reward_model", default="./weights/table",
                   help="PRM to evaluate: a folder or hub id (native layout, or InternVL's chat layout converted in memory), or 'tiny' (bundled tiny model) (default: %(default)s)")
    p.add_argument("--output_file", default="./results/bestofn.json",
                   help="where the JSON report goes (strict JSON; its folder is created); refused before any "
                        "work when it is a folder or cannot be written (default: %(default)s)")
    p.add_argument("--aggregation_function", default="all", choices=AGGREGATION_CHOICES,
                   help="aggregation(s) shown in the table and figure; the JSON always holds all five, "
                   "computed from a single scoring pass (default: %(default)s)")
    p.add_argument("--max_patch_num", type=int, default=12,
                   help="maximum image tiles (a thumbnail is added when more than one) (default: %(default)s)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16", "fp16"),
                   help="model weights dtype; default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--batch_size", type=int, default=8,
                   help="candidates per language-model batch (default: %(default)s)")
    p.add_argument("--prefetch", type=int, default=2,
                   help="questions whose images are decoded and tiled in a background thread while "
                   "the current one is scored; 0 = serial (default: %(default)s)")
    p.add_argument("--step_splitter", default="upstream", choices=("upstream", "clean"),
                   help="how a candidate becomes steps: upstream = the public code's splitter, quirks included "
                        "(released checkpoints and upstream's meta file use it); clean = a stricter splitter that "
                        "never cuts mid-sentence 'N.' (see src/dreamprm/steps.py) (default: %(default)s)")
    p.add_argument("--score_dtype", default="model", choices=("model", "fp32"),
                   help="dtype of the step softmax and the mean score: model = the model's dtype, as upstream "
                        "(bf16 on GPU: scores near 1 round to steps of ~0.004, ties go to the later candidate); "
                        "fp32 = upcast first (default: %(default)s)")
    p.add_argument("--skip_bad_records", action="store_true",
                   help="drop invalid records (and say how many) instead of stopping")
    p.add_argument("--max_length", type=int, default=None,
                   help="longest token sequence scored (prompt + image tokens + steps); a longer candidate is scored "
                        "over the steps that fit and the report counts it (default: the model's "
                        "max_position_embeddings)")
    p.add_argument("--allow_nonfinite", action="store_true",
                   help="continue when the PRM returns non-finite step scores (a diverged model): such candidates "
                        "are never selected and the report counts them; without it they are an error")
    p.add_argument("--figs_dir", default=None,
                   help="where the accuracy-vs-N figure and its data go (default: figs/ beside --output_file)")
    return p


def _flag_bool(text: str) -> bool:
    """Booleans written the upstream way (``--retrain 1``) as well as ``true``/``false``."""
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "y"):
        return True
    if value in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (1/0/true/false), got {text!r}")


def train_parser() -> argparse.ArgumentParser:
    """Flags of ``train.py``: the upstream flag table (names and defaults kept) plus this project's."""
    p = argparse.ArgumentParser(
        prog="train.py",
        description="DreamPRM-1.5 training: cold-start SFT (--retrain 1 / --baseline) or bi-level "
        "instance reweighting (--reweighting table|net|domain) on Betty.",
    )
    g = p.add_argument_group("data and model paths")
    g.add_argument("--train_json_file", default="./data/train.json", help="training records (default: %(default)s)")
    g.add_argument("--meta_json_file", default="./data/meta.json", help="meta records with true_false (default: %(default)s)")
    g.add_argument("--weights_path", default=None,
                   help="output folder: model, weights, metrics, checkpoints, figures; one run per folder "
                        "(default: ./weights/<mode>: coldstart, baseline, table, net or domain)")
    g.add_argument("--reward_model", default="OpenGVLab/InternVL3-1B-hf",
                   help="starting PRM: a folder or hub id (native transformers layout, or InternVL's chat layout, converted in memory), or 'tiny' (default: %(default)s)")

    g = p.add_argument_group("bi-level optimization")
    g.add_argument("--iteration_num", type=int, default=100000, help="total (lower-level) iterations (default: %(default)s)")
    g.add_argument("--save_every_iterations", type=int, default=1000, help="export + checkpoint every N iterations; the public code saves every iteration, which at 1B "
                        "parameters writes gigabytes per iteration, so this default is a deliberate difference "
                        "(default: %(default)s)")
    g.add_argument("--unroll_steps", type=int, default=1, help="lower steps per upper step (default: %(default)s)")
    g.add_argument("--gradiant_accumulation", type=int, default=1, help="gradient accumulation steps, both levels (default: %(default)s)")
    g.add_argument("--gradiant_clipping", type=float, default=1.0, help="gradient-norm clipping, both levels; 0 = off (default: %(default)s)")
    g.add_argument("--darts_alpha", type=float, default=0.01,
                   help="Betty's darts finite-difference size R: the PRM is perturbed by R·v/|v| (Betty's and "
                        "the public code's value; with bf16 weights most of that perturbation is below bf16 "
                        "resolution, see README 'Method, as implemented') (default: %(default)s)")
    g.add_argument("--device", default="cuda", help="cuda or cpu (default: %(default)s)")
    g.add_argument("--precision", default="bf16", choices=("fp32", "bf16"), help="model weights dtype and autocast (default: %(default)s)")
    g.add_argument("--strategy", default="default", help="Betty strategy; only 'default' is supported on one device (default: %(default)s)")
    g.add_argument("--rollback", action="store_true", help="Betty roll-back of the lower level after the upper step")
    g.add_argument("--baseline", action="store_true", help="train the lower level alone with weight 1; DreamPRM's name for what --retrain 1 does")
    g.add_argument("--seed", type=int, default=1, help="random seed: data order and initialisation (default: %(default)s)")
    g.add_argument("--local_rank", type=int, default=0, help="kept for upstream compatibility; unused")

    g = p.add_argument_group("optimizer (both levels)")
    g.add_argument("--optimizer", default="adamw_hf", choices=("adamw_hf", "adamw_torch"),
                   help="adamw_hf: the AdamW of transformers 4.x that the public DreamPRM-1.5 code trains with "
                        "(eps added before bias correction, weight decay after the update); adamw_torch: "
                        "torch.optim.AdamW's algorithm, as DreamPRM's code (default: %(default)s)")
    g.add_argument("--adam_epsilon", type=float, default=None,
                   help="Adam epsilon (default: 1e-6 for adamw_hf, 1e-8 for adamw_torch: each library's default)")

    g = p.add_argument_group("lower level (PRM)")
    g.add_argument("--lr", type=float, default=5e-5, help="learning rate (default: %(default)s)")
    g.add_argument("--momentum", type=float, default=0.9, help="Adam beta1 (default: %(default)s)")
    g.add_argument("--weight_decay", type=float, default=0.01, help="decoupled weight decay (default: %(default)s)")
    g.add_argument("--batch_size", type=int, default=1, help="instances per step (default: %(default)s)")
    g.add_argument("--scheduler_step_size", type=int, default=1000, help="StepLR period when --scheduler_type step_lr (default: %(default)s)")
    g.add_argument("--scheduler_gamma", type=float, default=0.95, help="StepLR factor when --scheduler_type step_lr (default: %(default)s)")
    g.add_argument("--lower_loss", default="ce", choices=("ce", "mse"), help="per-step loss: cross-entropy (paper) or DreamPRM MSE (default: %(default)s)")

    g = p.add_argument_group("upper level (instance weights)")
    g.add_argument("--meta_lr", type=float, default=1e-1, help="meta learning rate; the run scripts set the paper's (default: %(default)s)")
    g.add_argument("--meta_momentum", type=float, default=0.9, help="meta Adam beta1 (default: %(default)s)")
    g.add_argument("--meta_weight_decay", type=float, default=1e-3, help="meta decoupled weight decay (default: %(default)s)")
    g.add_argument("--meta_batch_size", type=int, default=1, help="meta CoTs per upper step (default: %(default)s)")
    g.add_argument("--meta_scheduler_step_size", type=int, default=1000, help="meta StepLR period (default: %(default)s)")
    g.add_argument("--meta_scheduler_gamma", type=float, default=0.95, help="meta StepLR factor (default: %(default)s)")

    g = p.add_argument_group("method")
    g.add_argument("--reweighting", default="table", choices=("table", "net", "domain"),
                   help="Instance Table, Instance Net, or DreamPRM's Domain Table (default: %(default)s)")
    g.add_argument("--retrain", type=_flag_bool, default=False, help="1 = plain SFT of the lower level alone (the cold start); 0 = bi-level reweighting (default: 0)")
    g.add_argument("--activation_function", default=None, choices=("LeakyReLU", "ReLU", "No", "Clip", "sigmoid"),
                   help="activation of the table entries / of the Instance Net's output (default: Clip for the "
                        "table, as the public run_table.sh and paper section 2.2; sigmoid for the net, as "
                        "run_net.sh; the Domain Table has none: DreamPRM's softplus / mean normalisation)")
    g.add_argument("--aggregation_function", default="mean", choices=("mean", "log_mean", "max", "min", "log_odds"),
                   help="step-score aggregation in the meta loss; log_odds is DreamPRM's sigmoid of the mean "
                        "step log-odds (default: %(default)s)")
    g.add_argument("--loss_target", default="both", choices=("both", "+"), help="meta loss target (default: %(default)s)")
    g.add_argument("--initialization", type=float, default=None,
                   help="initial raw table weight (default: 1.0 for the Instance Table, 0.0 for the Domain Table)")
    g.add_argument("--max_patch_num", type=int, default=6, help="maximum image tiles in training (default: %(default)s)")
    g.add_argument("--scheduler_type", default="cosine_schedule_with_warmup",
                   choices=SCHEDULER_CHOICES,
                   help="learning-rate schedule of both levels; step_lr (upstream's name; 'step' is the same) is "
                        "StepLR with --scheduler_step_size/--scheduler_gamma (default: %(default)s)")
    g.add_argument("--meta_scheduler_type", default=None,
                   choices=SCHEDULER_CHOICES,
                   help="the upper level's schedule when it differs (DreamPRM: constant) (default: --scheduler_type)")
    g.add_argument("--warmup_ratio", type=float, default=0.05, help="linear warm-up share of the cosine schedule (default: %(default)s)")
    g.add_argument("--hidden_dim", type=int, default=10, help="Instance Net hidden width (default: %(default)s)")
    g.add_argument("--detach_net_input", action="store_true", help="stop gradients from the Instance Net into the PRM")

    g = p.add_argument_group("system")
    g.add_argument("--logger", default="none", choices=("none", "tensorboard", "wandb"), help="metrics logger besides metrics.jsonl (default: %(default)s)")
    g.add_argument("--num_workers", type=int, default=None,
                   help="DataLoader workers for image decoding and tiling; they never change the batches "
                        "(default: up to 4 on cuda, 0 on cpu)")
    g.add_argument("--gradient_checkpointing", action="store_true", help="recompute activations in backward to save memory")
    g.add_argument("--no_autocast", action="store_true",
                   help="run bf16 steps natively in the weights' dtype instead of under Betty's autocast "
                        "(no per-op casts: ~10%% faster bi-level iterations on an H100, step probabilities within "
                        "1e-6 of the autocast path there; see bench/RESULTS.md)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile every vision and language layer (regional; the first iterations pay the "
                        "compile time; experimental: on an H100 in bf16 it was barely faster at the benchmark shape and "
                        "moved step probabilities by up to 4e-2; see bench/RESULTS.md)")
    g.add_argument("--attn_implementation", default="sdpa", choices=("sdpa", "eager", "flash_attention_2"), help="(default: %(default)s)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --weights_path from its latest complete checkpoint; refused when the "
                        "checkpoint was made with another reweighting, model, data or sizes")
    g.add_argument("--overwrite", action="store_true",
                   help="start a new run in a --weights_path that holds another run: the files this project wrote "
                        "there are replaced (without it such a folder is refused)")
    g.add_argument("--max_length", type=int, default=None,
                   help="longest training sequence in tokens (prompt + image tokens + steps); a longer record is an "
                        "error, or is dropped with --skip_bad_records (default: the model's max_position_embeddings)")
    g.add_argument("--keep_checkpoints", type=int, default=2, help="checkpoints kept in --weights_path/checkpoints (default: %(default)s)")
    g.add_argument("--max_bad_steps", type=int, default=10, help="stop after this many non-finite updates in a row (default: %(default)s)")
    g.add_argument("--skip_bad_records", action="store_true", help="drop invalid records (and say how many) instead of stopping")
    g.add_argument("--figs_dir", default=None, help="where training figures go (default: <weights_path>/figs)")
    g.add_argument("--no_progress", action="store_true", help="no tqdm bar (e.g. in log files)")
    return p


# -- flag values that parse but make no sense: refused in one line before any model loads ------


class FlagError(ValueError):
    """A flag value outside its range; the CLIs print ``error: <message>`` and exit 2."""


def _finite(x) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise FlagError(message)


def default_weights_path(args) -> str:
    """Each mode writes to its own folder unless --weights_path says otherwise."""
    if args.retrain:
        mode = "coldstart"
    elif args.baseline:
        mode = "baseline"
    else:
        mode = args.reweighting
    return f"./weights/{mode}"


def check_train_args(args) -> None:
    """Raise ``FlagError`` for the first ``train.py`` flag whose value is out of range."""
    for name in ("batch_size", "meta_batch_size", "unroll_steps", "gradiant_accumulation", "iteration_num",
                 "save_every_iterations", "max_patch_num", "max_bad_steps", "hidden_dim",
                 "scheduler_step_size", "meta_scheduler_step_size"):
        value = getattr(args, name)
        _require(value >= 1, f"--{name} must be at least 1 (got {value})")
    _require(args.keep_checkpoints >= 1, f"--keep_checkpoints must be at least 1 (got {args.keep_checkpoints})")
    if args.max_length is not None:
        _require(args.max_length >= 1, f"--max_length must be at least 1 (got {args.max_length})")
    if args.num_workers is not None:
        _require(args.num_workers >= 0, f"--num_workers must be 0 or more (got {args.num_workers})")
    for name in ("lr", "meta_lr", "weight_decay", "meta_weight_decay", "adam_epsilon", "gradiant_clipping",
                 "darts_alpha", "initialization", "warmup_ratio", "momentum", "meta_momentum",
                 "scheduler_gamma", "meta_scheduler_gamma"):
        value = getattr(args, name)
        _require(value is None or _finite(value), f"--{name} must be a finite number (got {value})")
    for name in ("lr", "meta_lr", "weight_decay", "meta_weight_decay", "gradiant_clipping"):
        value = getattr(args, name)
        _require(value >= 0, f"--{name} must be 0 or more (got {value})")
    if args.adam_epsilon is not None:
        _require(args.adam_epsilon > 0, f"--adam_epsilon must be positive (got {args.adam_epsilon})")
    for name in ("momentum", "meta_momentum"):
        value = getattr(args, name)
        _require(0 <= value < 1, f"--{name} (Adam beta1) must be in [0, 1) (got {value})")
    for name in ("scheduler_gamma", "meta_scheduler_gamma"):
        value = getattr(args, name)
        _require(value > 0, f"--{name} must be positive (got {value})")
    _require(0 <= args.warmup_ratio <= 1, f"--warmup_ratio must be in [0, 1] (got {args.warmup_ratio})")
    _require(args.darts_alpha > 0, f"--darts_alpha must be positive (got {args.darts_alpha})")
    if args.reweighting == "domain" and args.activation_function is not None:
        raise FlagError("--activation_function does not apply to --reweighting domain: DreamPRM's Domain Table "
                        "weighs domains by softplus(raw) / mean(softplus(raw))")
    _require(not (args.resume and args.overwrite), "--resume and --overwrite contradict each other: pick one")


def check_test_args(args) -> None:
    """Raise ``FlagError`` for the first ``test.py`` flag whose value is out of range."""
    for name in ("batch_size", "max_patch_num"):
        value = getattr(args, name)
        _require(value >= 1, f"--{name} must be at least 1 (got {value})")
    _require(args.prefetch >= 0, f"--prefetch must be 0 or more (got {args.prefetch})")
    if args.max_length is not None:
        _require(args.max_length >= 1, f"--max_length must be at least 1 (got {args.max_length})")
