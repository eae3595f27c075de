"""Typed configuration of the two entry points: every flag of ``train.py`` and ``test.py``.

``TrainConfig`` and ``TestConfig`` hold one field per flag, named exactly as the flag (the
upstream typos ``gradiant_accumulation`` / ``gradiant_clipping`` included), so code written
against ``args.x`` reads a config unchanged. Each field carries its help text, choices and
flag group as ``dataclasses.field`` metadata; ``arguments.py`` builds the argparse parsers from
them, so a flag is declared once. Help texts are argparse templates (``%(default)s``).

``validate()`` is the one place flag values are checked: it raises ``FlagError``. What the
machine offers (a CUDA device, a logger package) is checked by the trainer, not here.

This module imports nothing heavy: the CLIs refuse a bad flag before torch loads.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

# Flag vocabularies (the library modules that act on them keep their own copies; a test checks
# that the two agree).
OPTIMIZERS = ("adamw_hf", "adamw_torch")
# Learning-rate schedules of either level (dreamprm.optim): step_lr is upstream's name, step ours.
SCHEDULER_CHOICES = ("cosine_schedule_with_warmup", "step_lr", "step", "constant")
ACTIVATIONS = ("LeakyReLU", "ReLU", "No", "Clip", "sigmoid")
AGGREGATIONS = ("mean", "log_mean", "max", "min", "log_odds")
REWEIGHTINGS = ("table", "net", "domain")
META_LOSSES = ("aggregate", "step")
STRATEGIES = ("default", "distributed", "zero", "fsdp")  # Betty's names; zero and fsdp are refused
# Why --strategy zero / fsdp are refused (one line each).
UNSUPPORTED_STRATEGIES = {
    "zero": "--strategy zero is not supported: ZeRO shards the optimizer state across ranks, and the "
            "checkpoints here save it whole on rank 0 (the 1B PRM's AdamW state fits on one GPU); use "
            "--strategy distributed",
    "fsdp": "--strategy fsdp is not supported: FSDP shards the PRM's parameters, and the darts "
            "hypergradient, the gradient clipping, the finiteness guards and save_pretrained here all read "
            "them whole (the 1B PRM fits on one GPU); use --strategy distributed",
}


class FlagError(ValueError):
    """A flag value outside its range; the CLIs print ``error: <message>`` and exit 2."""


def flag(default: Any, help: str, *, choices: tuple | None = None, group: str | None = None,
         switch: bool = False) -> Any:
    """A config field that is also a command-line flag ``--<field name>``.

    ``switch``: a boolean flag that takes no value (``store_true``); a boolean field without it
    takes one (``--retrain 1``)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "group": group,
                                                         "switch": switch})


def _in_group(title: str):
    def grouped(default: Any, help: str, **kw) -> Any:
        return flag(default, help, group=title, **kw)
    return grouped


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise FlagError(message)


def _finite(x) -> bool:
    return x is None or math.isfinite(x)


def _check_choices(config) -> None:
    """A field with choices holds one of them (argparse checks flags; this checks configs built in code)."""
    for field in dataclasses.fields(config):
        choices, value = field.metadata.get("choices"), getattr(config, field.name)
        if choices is not None and value is not None and value not in choices:
            raise FlagError(f"--{field.name} must be one of {', '.join(map(str, choices))} (got {value!r})")


def _check_positive_ints(config, names) -> None:
    for name in names:
        value = getattr(config, name)
        _require(value >= 1, f"--{name} must be at least 1 (got {value})")


_paths = _in_group("data and model paths")
_bilevel = _in_group("bi-level optimization")
_optimizer = _in_group("optimizer (both levels)")
_lower = _in_group("lower level (PRM)")
_upper = _in_group("upper level (instance weights)")
_method = _in_group("method")
_system = _in_group("system")


@dataclass(frozen=True)
class TrainConfig:
    """Flags of ``train.py``: the upstream flag table (names and defaults kept) plus this project's."""

    train_json_file: str = _paths("./data/train.json", "training records (default: %(default)s)")
    meta_json_file: str = _paths("./data/meta.json", "meta records with true_false (default: %(default)s)")
    weights_path: str | None = _paths(
        None, "output folder: model, weights, metrics, checkpoints, figures; one run per folder "
              "(default: ./weights/<mode>: coldstart, baseline, table, net or domain)")
    reward_model: str = _paths(
        "OpenGVLab/InternVL3-1B-hf",
        "starting PRM: a folder or hub id (native transformers layout, or InternVL's chat layout, converted in "
        "memory), or 'tiny' (default: %(default)s)")

    iteration_num: int = _bilevel(100000, "total (lower-level) iterations (default: %(default)s)")
    save_every_iterations: int = _bilevel(
        1000, "export + checkpoint every N iterations; the public code saves every iteration, which at 1B "
              "parameters writes gigabytes per iteration, so this default is a deliberate difference "
              "(default: %(default)s)")
    unroll_steps: int = _bilevel(1, "lower steps per upper step (default: %(default)s)")
    gradiant_accumulation: int = _bilevel(1, "gradient accumulation steps, both levels (default: %(default)s)")
    gradiant_clipping: float = _bilevel(1.0, "gradient-norm clipping, both levels; 0 = off (default: %(default)s)")
    darts_alpha: float = _bilevel(
        0.01, "Betty's darts finite-difference size R: the PRM is perturbed by R·v/|v| (Betty's and "
              "the public code's value; with bf16 weights most of that perturbation is below bf16 "
              "resolution, see README 'Method, as implemented') (default: %(default)s)")
    darts: str = _bilevel(
        "fused", "how the darts hypergradient is computed. fused: Betty's finite difference with torch._foreach_* "
                 "operations (a few kernel launches instead of one per PRM tensor, and no copy of v to take its "
                 "norm); the same elementwise arithmetic, the norm |v| summed per tensor, so eps can differ from "
                 "Betty's in its last bits. betty: Betty 0.2.1's own darts (default: %(default)s)",
        choices=("fused", "betty"))
    device: str = _bilevel("cuda", "cuda or cpu (default: %(default)s)")
    precision: str = _bilevel("bf16", "model weights dtype and autocast (default: %(default)s)",
                              choices=("fp32", "bf16"))
    strategy: str = _bilevel(
        "default", "default: one process, one device; distributed: data parallel under torchrun, one process "
                   "per GPU (Betty's DDP strategy; README 'Multi-GPU'); Betty's zero and fsdp are refused "
                   "(default: %(default)s)", choices=STRATEGIES)
    backend: str | None = _bilevel(
        None, "torch.distributed backend of --strategy distributed (default: nccl on CUDA, gloo on the CPU; "
              "gloo also lets more processes than GPUs share them)", choices=("nccl", "gloo"))
    rollback: bool = _bilevel(False, "Betty roll-back of the lower level after the upper step", switch=True)
    baseline: bool = _bilevel(False, "train the lower level alone with weight 1; DreamPRM's name for what "
                                     "--retrain 1 does", switch=True)
    seed: int = _bilevel(1, "random seed: data order and initialisation (default: %(default)s)")
    local_rank: int = _bilevel(0, "kept for upstream compatibility; unused (torchrun's LOCAL_RANK is read from "
                                  "the environment)")

    optimizer: str = _optimizer(
        "adamw_hf", "adamw_hf: the AdamW of transformers 4.x that the public DreamPRM-1.5 code trains with "
                    "(eps added before bias correction, weight decay after the update); adamw_torch: "
                    "torch.optim.AdamW's algorithm, as DreamPRM's code (default: %(default)s)",
        choices=OPTIMIZERS)
    adam_epsilon: float | None = _optimizer(
        None, "Adam epsilon (default: 1e-6 for adamw_hf, 1e-8 for adamw_torch: each library's default)")

    lr: float = _lower(5e-5, "learning rate (default: %(default)s)")
    momentum: float = _lower(0.9, "Adam beta1 (default: %(default)s)")
    weight_decay: float = _lower(0.01, "decoupled weight decay (default: %(default)s)")
    batch_size: int = _lower(1, "instances per step (default: %(default)s)")
    scheduler_step_size: int = _lower(1000, "StepLR period when --scheduler_type step_lr (default: %(default)s)")
    scheduler_gamma: float = _lower(0.95, "StepLR factor when --scheduler_type step_lr (default: %(default)s)")
    lower_loss: str = _lower("ce", "per-step loss: cross-entropy (paper) or DreamPRM MSE (default: %(default)s)",
                             choices=("ce", "mse"))

    meta_lr: float = _upper(1e-1, "meta learning rate; the run scripts set the paper's (default: %(default)s)")
    meta_momentum: float = _upper(0.9, "meta Adam beta1 (default: %(default)s)")
    meta_weight_decay: float = _upper(1e-3, "meta decoupled weight decay (default: %(default)s)")
    meta_batch_size: int = _upper(1, "meta CoTs per upper step (default: %(default)s)")
    meta_scheduler_step_size: int = _upper(1000, "meta StepLR period (default: %(default)s)")
    meta_scheduler_gamma: float = _upper(0.95, "meta StepLR factor (default: %(default)s)")

    reweighting: str = _method("table", "Instance Table, Instance Net, or DreamPRM's Domain Table "
                                        "(default: %(default)s)", choices=REWEIGHTINGS)
    retrain: bool = _method(False, "1 = plain SFT of the lower level alone (the cold start); 0 = bi-level "
                                   "reweighting (default: 0)")
    activation_function: str | None = _method(
        None, "activation of the table entries / of the Instance Net's output (default: Clip for the "
              "table, as the public run_table.sh and paper section 2.2; sigmoid for the net, as "
              "run_net.sh; the Domain Table has none: DreamPRM's softplus / mean normalisation)",
        choices=ACTIVATIONS)
    aggregation_function: str = _method(
        "mean", "step-score aggregation in the meta loss; log_odds is DreamPRM's sigmoid of the mean "
                "step log-odds (default: %(default)s)", choices=AGGREGATIONS)
    loss_target: str = _method("both", "meta loss target (default: %(default)s)", choices=("both", "+"))
    meta_loss: str = _method(
        "aggregate", "what the meta loss scores: aggregate = each meta CoT's aggregated step score against its "
                     "correctness (paper Eq. 2; --aggregation_function, --loss_target); step = every meta step's "
                     "own score against its CoT's correctness, the mean over all steps of the batch, each step "
                     "weighing the same (--loss_target applies, --aggregation_function is ignored): DreamPRM's "
                     "ablation without the aggregation-function loss (AFL) (default: %(default)s)",
        choices=META_LOSSES)
    initialization: float | None = _method(
        None, "initial raw table weight (default: 1.0 for the Instance Table, 0.0 for the Domain Table)")
    max_patch_num: int = _method(6, "maximum image tiles in training (default: %(default)s)")
    scheduler_type: str = _method(
        "cosine_schedule_with_warmup",
        "learning-rate schedule of both levels; step_lr (upstream's name; 'step' is the same) is "
        "StepLR with --scheduler_step_size/--scheduler_gamma (default: %(default)s)", choices=SCHEDULER_CHOICES)
    meta_scheduler_type: str | None = _method(
        None, "the upper level's schedule when it differs (DreamPRM: constant) (default: --scheduler_type)",
        choices=SCHEDULER_CHOICES)
    warmup_ratio: float = _method(0.05, "linear warm-up share of the cosine schedule (default: %(default)s)")
    hidden_dim: int = _method(10, "Instance Net hidden width (default: %(default)s)")
    detach_net_input: bool = _method(False, "stop gradients from the Instance Net into the PRM", switch=True)

    logger: str = _system("none", "metrics logger besides metrics.jsonl (default: %(default)s)",
                          choices=("none", "tensorboard", "wandb"))
    num_workers: int | None = _system(
        None, "DataLoader workers for image decoding and tiling; they never change the batches "
              "(default: up to 4 on cuda, 0 on cpu)")
    gradient_checkpointing: bool = _system(False, "recompute activations in backward to save memory", switch=True)
    no_autocast: bool = _system(
        False, "run bf16 steps natively in the weights' dtype instead of under Betty's autocast "
               "(no per-op casts: ~10%% faster bi-level iterations on an H100, step probabilities within "
               "1e-6 of the autocast path there; see bench/RESULTS.md)", switch=True)
    compile: bool = _system(
        False, "torch.compile every vision and language layer (regional; the first iterations pay the "
               "compile time; experimental: on an H100 in bf16 it was barely faster at the benchmark shape and "
               "moved step probabilities by up to 4e-2; see bench/RESULTS.md)", switch=True)
    cuda_graphs: bool = _system(
        False, "run the training passes' two towers (vision, language) through torch.compile(mode="
               "'reduce-overhead'): one compile each, then on CUDA one captured CUDA graph per shape, replayed, "
               "with sequences padded to --length_bucket so the shapes repeat; on the CPU the towers are "
               "compiled without graphs. Experimental: not yet measured on a GPU (bench/RESULTS.md); "
               "scoring stays eager", switch=True)
    length_bucket: int | None = _system(
        None, "pad training and meta sequences on the right to a multiple of this many tokens, so that batch "
              "shapes repeat (masked: the step outputs do not change) (default: 256 with --cuda_graphs, else 0 = "
              "no padding)")
    attn_implementation: str = _system("sdpa", "(default: %(default)s)",
                                       choices=("sdpa", "eager", "flash_attention_2"))
    resume: bool = _system(
        False, "continue the run in --weights_path from its latest complete checkpoint; refused when the "
               "checkpoint was made with another reweighting, model, data or sizes", switch=True)
    overwrite: bool = _system(
        False, "start a new run in a --weights_path that holds another run: the files this project wrote "
               "there are replaced (without it such a folder is refused)", switch=True)
    max_length: int | None = _system(
        None, "longest training sequence in tokens (prompt + image tokens + steps); a longer record is an "
              "error, or is dropped with --skip_bad_records (default: the model's max_position_embeddings)")
    keep_checkpoints: int = _system(2, "checkpoints kept in --weights_path/checkpoints (default: %(default)s)")
    max_bad_steps: int = _system(10, "stop after this many non-finite updates in a row (default: %(default)s)")
    skip_bad_records: bool = _system(False, "drop invalid records (and say how many) instead of stopping",
                                     switch=True)
    figs_dir: str | None = _system(None, "where training figures go (default: <weights_path>/figs)")
    no_progress: bool = _system(False, "no tqdm bar (e.g. in log files)", switch=True)

    eval_json_file: str | None = _system(
        None, "evaluation during training: test-format records (question, image_path, candidates, true_false) "
              "scored best-of-N with the PRM being trained, as test.py scores them; the accuracies go into "
              "metrics.jsonl as eval_* keys (default: no evaluation)")
    eval_every: int = _system(
        0, "with --eval_json_file: evaluate every N iterations and at the end; 0 = only at the end "
           "(default: %(default)s)")
    save_best: bool = _system(
        False, "with --eval_json_file: keep the best evaluated model (by eval_accuracy_mean; ties keep the "
               "earlier) in --weights_path/best", switch=True)
    eval_max_patch_num: int = _system(12, "maximum image tiles in evaluation, as test.py's --max_patch_num "
                                          "(default: %(default)s)")
    eval_batch_size: int = _system(8, "candidates per language-model batch in evaluation, as test.py's "
                                      "--batch_size (default: %(default)s)")

    @property
    def bilevel(self) -> bool:
        """Bi-level reweighting, as opposed to the lower level alone (cold start or baseline)."""
        return not (self.retrain or self.baseline)

    @property
    def default_weights_path(self) -> str:
        """Each mode writes to its own folder unless --weights_path says otherwise."""
        if self.retrain:
            mode = "coldstart"
        elif self.baseline:
            mode = "baseline"
        else:
            mode = self.reweighting
        return f"./weights/{mode}"

    def with_default_weights_path(self) -> TrainConfig:
        """This config, with ``weights_path`` set to the mode's folder when it is None."""
        if self.weights_path is not None:
            return self
        return dataclasses.replace(self, weights_path=self.default_weights_path)

    @property
    def sequence_bucket(self) -> int:
        """The padding multiple the batches use: --length_bucket, else 256 with --cuda_graphs, else 0."""
        if self.length_bucket is not None:
            return self.length_bucket
        return 256 if self.cuda_graphs else 0

    def validate(self) -> None:
        """Raise ``FlagError`` for the first flag whose value is out of range."""
        _check_choices(self)
        _check_positive_ints(self, ("batch_size", "meta_batch_size", "unroll_steps", "gradiant_accumulation",
                                    "iteration_num", "save_every_iterations", "max_patch_num", "max_bad_steps",
                                    "hidden_dim", "scheduler_step_size", "meta_scheduler_step_size",
                                    "keep_checkpoints", "eval_max_patch_num", "eval_batch_size"))
        if self.max_length is not None:
            _require(self.max_length >= 1, f"--max_length must be at least 1 (got {self.max_length})")
        if self.num_workers is not None:
            _require(self.num_workers >= 0, f"--num_workers must be 0 or more (got {self.num_workers})")
        if self.length_bucket is not None:
            _require(self.length_bucket >= 0, f"--length_bucket must be 0 or more (got {self.length_bucket})")
        _require(not (self.cuda_graphs and self.compile),
                 "--cuda_graphs and --compile contradict each other: --cuda_graphs compiles whole towers, "
                 "--compile single layers; pick one")
        _require(not (self.cuda_graphs and self.gradient_checkpointing),
                 "--cuda_graphs with --gradient_checkpointing is not supported yet (recomputation inside "
                 "captured graphs is unvalidated); pick one")
        _require(not (self.cuda_graphs and self.strategy == "distributed"),
                 "--cuda_graphs with --strategy distributed is not supported yet (DDP's gradient hooks around "
                 "captured backward graphs are unvalidated); pick one")
        for name in ("lr", "meta_lr", "weight_decay", "meta_weight_decay", "adam_epsilon", "gradiant_clipping",
                     "darts_alpha", "initialization", "warmup_ratio", "momentum", "meta_momentum",
                     "scheduler_gamma", "meta_scheduler_gamma"):
            value = getattr(self, name)
            _require(_finite(value), f"--{name} must be a finite number (got {value})")
        for name in ("lr", "meta_lr", "weight_decay", "meta_weight_decay", "gradiant_clipping"):
            value = getattr(self, name)
            _require(value >= 0, f"--{name} must be 0 or more (got {value})")
        if self.adam_epsilon is not None:
            _require(self.adam_epsilon > 0, f"--adam_epsilon must be positive (got {self.adam_epsilon})")
        for name in ("momentum", "meta_momentum"):
            value = getattr(self, name)
            _require(0 <= value < 1, f"--{name} (Adam beta1) must be in [0, 1) (got {value})")
        for name in ("scheduler_gamma", "meta_scheduler_gamma"):
            value = getattr(self, name)
            _require(value > 0, f"--{name} must be positive (got {value})")
        _require(0 <= self.warmup_ratio <= 1, f"--warmup_ratio must be in [0, 1] (got {self.warmup_ratio})")
        _require(self.darts_alpha > 0, f"--darts_alpha must be positive (got {self.darts_alpha})")
        _require(self.reweighting != "domain" or self.activation_function is None,
                 "--activation_function does not apply to --reweighting domain: DreamPRM's Domain Table "
                 "weighs domains by softplus(raw) / mean(softplus(raw))")
        _require(not (self.resume and self.overwrite), "--resume and --overwrite contradict each other: pick one")
        _require(self.strategy not in UNSUPPORTED_STRATEGIES, UNSUPPORTED_STRATEGIES.get(self.strategy, ""))
        _require(self.backend is None or self.strategy == "distributed",
                 f"--backend {self.backend} applies to --strategy distributed only")
        _require(self.eval_every >= 0, f"--eval_every must be 0 or more (got {self.eval_every})")
        if self.eval_json_file is None:
            _require(not self.save_best, "--save_best needs --eval_json_file: the best model is chosen by its "
                                         "evaluation accuracy")
            _require(self.eval_every == 0, "--eval_every needs --eval_json_file: the records to evaluate on")
        _require(self.weights_path is not None,
                 "--weights_path is not set (with_default_weights_path() fills in ./weights/<mode>)")


@dataclass(frozen=True)
class TestConfig:
    """Flags of ``test.py``: score every candidate, aggregate, select, report accuracy."""

    __test__ = False  # not a pytest test class, whatever its name

    test_json_file: str = flag("./data/test.json", "test records: question, image_path, candidates, true_false "
                                                   "(default: %(default)s)")
    reward_model: str = flag(
        "./weights/table", "PRM to evaluate: a folder or hub id (native layout, or InternVL's chat layout converted "
                           "in memory), or 'tiny' (bundled tiny model) (default: %(default)s)")
    output_file: str = flag(
        "./results/bestofn.json", "where the JSON report goes (strict JSON; its folder is created); refused before "
                                  "any work when it is a folder or cannot be written (default: %(default)s)")
    aggregation_function: str = flag(
        "all", "aggregation(s) shown in the table and figure; the JSON always holds all five, computed from a "
               "single scoring pass (default: %(default)s)", choices=(*AGGREGATIONS, "all"))
    max_patch_num: int = flag(12, "maximum image tiles (a thumbnail is added when more than one) "
                                  "(default: %(default)s)")
    device: str | None = flag(None, "default: cuda if available, else cpu; under torchrun, cuda means each "
                                    "process's own GPU (LOCAL_RANK)")
    devices: str | None = flag(
        None, "score on several devices at once, one process each, merged into the JSON one device would "
              "write: a comma-separated list (cuda:0,cuda:1) or 'all' (every visible GPU); same as running under "
              "torchrun --nproc_per_node N")
    precision: str | None = flag(None, "model weights dtype; default: bf16 on cuda, fp32 on cpu",
                                 choices=("fp32", "bf16", "fp16"))
    batch_size: int = flag(8, "candidates per language-model batch (default: %(default)s)")
    prefetch: int = flag(2, "questions whose images are decoded and tiled ahead while the current one is "
                            "scored; 0 = serial (default: %(default)s)")
    num_workers: int | None = flag(
        None, "worker processes that prepare those --prefetch images; 0 = one background thread of this process, "
              "which competes with scoring for Python's interpreter lock; results are the same either way "
              "(default: 2 on cuda, 0 on cpu)")
    step_splitter: str = flag(
        "upstream", "how a candidate becomes steps: upstream = the public code's splitter, quirks included "
                    "(released checkpoints and upstream's meta file use it); clean = a stricter splitter that "
                    "never cuts mid-sentence 'N.' (see src/dreamprm/steps.py) (default: %(default)s)",
        choices=("upstream", "clean"))
    score_dtype: str = flag(
        "model", "dtype of the step softmax and the mean score: model = the model's dtype, as upstream "
                 "(bf16 on GPU: scores near 1 round to steps of ~0.004, ties go to the later candidate); "
                 "fp32 = upcast first (default: %(default)s)", choices=("model", "fp32"))
    skip_bad_records: bool = flag(False, "drop invalid records (and say how many) instead of stopping", switch=True)
    max_length: int | None = flag(
        None, "longest token sequence scored (prompt + image tokens + steps); a longer candidate is scored "
              "over the steps that fit and the report counts it (default: the model's max_position_embeddings)")
    allow_nonfinite: bool = flag(
        False, "continue when the PRM returns non-finite step scores (a diverged model): such candidates are "
               "never selected and the report counts them; without it they are an error", switch=True)
    figs_dir: str | None = flag(None, "where the accuracy-vs-N figure and its data go "
                                      "(default: figs/ beside --output_file)")

    def validate(self) -> None:
        """Raise ``FlagError`` for the first flag whose value is out of range."""
        _check_choices(self)
        _check_positive_ints(self, ("batch_size", "max_patch_num"))
        _require(self.prefetch >= 0, f"--prefetch must be 0 or more (got {self.prefetch})")
        if self.num_workers is not None:
            _require(self.num_workers >= 0, f"--num_workers must be 0 or more (got {self.num_workers})")
            _require(self.prefetch > 0 or self.num_workers == 0,
                     f"--num_workers {self.num_workers} prepares images ahead, which --prefetch 0 turns off: "
                     "pass --prefetch 1 or more, or drop --num_workers")
        if self.devices is not None:
            _require(self.device is None, "--device and --devices contradict each other: pick one")
            names = self.devices.split(",")
            _require(self.devices == "all" or all(n.strip() for n in names),
                     f"--devices takes a comma-separated list such as cuda:0,cuda:1, or all (got {self.devices!r})")
        if self.max_length is not None:
            _require(self.max_length >= 1, f"--max_length must be at least 1 (got {self.max_length})")
