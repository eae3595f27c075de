"""GPU benchmark at the InternVL3-1B training shape (7 tiles, 8 steps of ~60 tokens), through the project's own training and scoring code.

A random-init full-size InternVL3-1B (938 M parameters, built from its config; no download) with the bundled tiny tokenizer
(ids only need to exist) is saved once and loaded by the same ``from_pretrained`` path a real
checkpoint takes. Synthetic data: 7 tiles (6 + thumbnail), 8 steps of ~60 tokens; best-of-8
questions at 13 tiles. Every mode runs in this process, one after the other, with the
reference-equivalent modes (``reference.py``: full-vocabulary logits and softmax at every
position, darts passes that record an autograd graph, one full forward per candidate) beside
ours so the ratios are measured side by side.

    python bench/bench.py [--out bench/runs/<date>-<gpu>] [--work DIR] [--iters 12] [--modes ...]

The run folder (``--out``, by default ``bench/runs/<date>-<gpu>/``, e.g. ``bench/runs/2026-11-22-h100``)
receives ``results.json`` (a row per mode, appended as each is measured, so a run cut short keeps
what it measured), ``bench_log.txt`` (this process's output, appended, no progress bars) and, once
both best-of-8 modes ran, ``numerics.json``. Models, data and training outputs go to the scratch
folder ``--work``. ``python bench/plot_results.py <run folder>`` draws the run's figure.

A mode is ``<sft|table|net|bon8>`` or its ``reference_`` twin, plus options joined with ``+``:
``gc`` (``--gradient_checkpointing``), ``noac`` (``--no_autocast``), ``compile`` (``--compile``),
``graphs`` (``--cuda_graphs``), ``bettydarts`` (``--darts betty``), e.g. ``table+noac+compile``. Every training mode also reports how far its step probabilities on
one training instance are from the reference-equivalent path (``max_prob_diff_vs_reference``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

# No progress bars in captured logs (transformers' loading/saving bars, tqdm anywhere); set
# before transformers is imported, which reads the first one once.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = Path(tempfile.gettempdir()) / "dreamprm-bench"  # scratch: the full-size model (~2 GB), data, training runs
# HERE before ROOT: the scripts import each other by bare name (`bench` is this file, not the package)
sys.path[:0] = [str(HERE), str(ROOT)]

from reference import ReferenceProcessRewardModel, make_reference  # noqa: E402
from runfiles import RUNS, LogTee, append_rows, gpu_slug  # noqa: E402

PEAK_FLOPS = 989e12  # H100 SXM dense bf16
FWD_FLOPS = 8.3e12  # analytic count: one forward at 7 tiles / 2,630 tokens (vision 5.1 + text 3.2)
MODE_FLOPS = {"sft": 3 * FWD_FLOPS, "table": 8 * FWD_FLOPS, "net": 8 * FWD_FLOPS, "bon8": 15e12}
WORDS = "the angle at the base of the triangle equals the sum of the two opposite interior angles so x is".split()


def full_size_config(image_token_id: int, layers: int = 24):
    """InternVL3-1B's shape (vision 24 x 1024, Qwen2 text 24 x 896), ``layers`` deep in both towers."""
    from transformers import InternVLConfig

    return InternVLConfig(
        vision_config=dict(hidden_size=1024, num_hidden_layers=layers, num_attention_heads=16, intermediate_size=4096,
                           image_size=448, patch_size=14, attention_bias=True, layer_scale_init_value=0.1,
                           use_mean_pooling=True),
        text_config=dict(model_type="qwen2", hidden_size=896, num_hidden_layers=layers, num_attention_heads=14,
                         num_key_value_heads=2, intermediate_size=4864, vocab_size=151674,
                         max_position_embeddings=32768, rope_theta=1_000_000.0, tie_word_embeddings=False),
        image_token_id=image_token_id, image_seq_length=256, downsample_ratio=0.5, tie_word_embeddings=False,
    )


def build_model(path: Path) -> None:
    from transformers import (GotOcr2ImageProcessor, InternVLForConditionalGeneration, InternVLProcessor,
                              InternVLVideoProcessor)

    from dreamprm.prompt import label_token_ids
    from dreamprm.tiny import IMAGENET_MEAN, IMAGENET_STD, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    config = full_size_config(tok.convert_tokens_to_ids("<IMG_CONTEXT>"))
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = InternVLForConditionalGeneration(config).to(torch.bfloat16)
    plus, minus = label_token_ids(tok)
    with torch.no_grad():  # give "+"/"-" real probability mass so score comparisons mean something
        model.lm_head.weight[[plus, minus]] *= 40
    n = sum(p.numel() for p in model.parameters())
    print(f"random-init InternVL3-1B shape: {n / 1e6:.0f} M parameters")
    size = {"height": 448, "width": 448}
    proc = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(crop_to_patches=True, size=size, max_patches=12,
                                              image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD),
        tokenizer=tok,
        video_processor=InternVLVideoProcessor(size=size, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD),
        image_seq_length=256,
    )
    model.save_pretrained(path)
    proc.save_pretrained(path)
    del model
    torch.cuda.empty_cache()


def step_text(tok, i: int, target: int = 60) -> str:
    words, k = [f"Step {i}:"], 0
    while len(tok.encode(" ".join(words), add_special_tokens=False)) < target:
        words.append(WORDS[k % len(WORDS)])
        k += 1
    return " ".join(words)


def image_size(crop_tiles: int, tile: int = 448) -> tuple[int, int]:
    """(width, height) of an image that InternVL's tiling cuts into exactly ``crop_tiles`` tiles when
    ``max_patch_num`` is ``crop_tiles``: the most nearly square landscape grid of that many tiles
    (1 -> 448 x 448, 3 -> 1344 x 448, 6 -> 1344 x 896, 12 -> 1792 x 1344); a thumbnail tile is
    added when there is more than one."""
    if crop_tiles < 1:
        raise ValueError(f"crop_tiles must be at least 1, got {crop_tiles}")
    rows = max(r for r in range(1, crop_tiles + 1) if crop_tiles % r == 0 and r * r <= crop_tiles)
    return crop_tiles // rows * tile, rows * tile


def build_data(folder: Path, tok, crop_tiles: int = 6, steps: int = 8, write_images: bool = True) -> None:
    """The synthetic data: training and meta records of one image each (``crop_tiles`` tiles, see
    ``image_size``) and ``steps`` steps of ~60 tokens; best-of-8 questions at 13 tiles.
    ``write_images=False`` writes only the JSON files, for a folder that already holds the images
    of the same ``crop_tiles`` (they do not depend on ``steps``)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    record_size = image_size(crop_tiles)
    step_texts = [step_text(tok, i + 1) for i in range(steps)]

    def image(name, size):
        arr = (torch.rand(size[1] // 8, size[0] // 8, 3, generator=g) * 255).to(torch.uint8).numpy()
        if write_images:
            Image.fromarray(arr).resize(size).save(folder / name)
        return name

    def record(i, prefix, extra):
        conv = [{"from": "human", "value": "### Question:\nWhat is x in the figure?"}]
        for s in step_texts:
            conv += [{"from": "human", "value": s}, {"from": "gpt", "value": "+" if (i + len(conv)) % 3 else "-"}]
        return {"id": f"{prefix}{i}", "image": image(f"{prefix}{i}.png", record_size), "conversations": conv,
                "dataset": f"d{i % 3}", **extra}

    (folder / "train.json").write_text(json.dumps([record(i, "t", {}) for i in range(24)]))
    meta = [record(i, "m", {"true_false": bool(i % 2)}) for i in range(12)]
    for m in meta:
        for t in m["conversations"]:
            if t["from"] == "gpt":
                t["value"] = "+"
    (folder / "meta.json").write_text(json.dumps(meta))
    tests = []
    for q in range(4):
        cands = ["[Reasoning]\n" + "\n".join(step_texts[: 7]) + f"\nAnswer: {c}" for c in "ABCDEFGH"]
        tests.append({"id": q, "question": "What is x in the figure?", "image_path": image(f"q{q}.png", (1792, 1344)),
                      "candidates": cands, "true_false": [c == "C" for c in "ABCDEFGH"]})
    (folder / "test.json").write_text(json.dumps(tests))


# a mode's options (joined with +) and the train.py flags each one adds
OPTION_FLAGS = {"gc": ["--gradient_checkpointing"], "noac": ["--no_autocast"], "compile": ["--compile"],
                "graphs": ["--cuda_graphs"], "bettydarts": ["--darts", "betty"]}


def option_flags(options) -> list[str]:
    """The train.py flags of a set of mode options, in a fixed order."""
    return [flag for option in sorted(options) for flag in OPTION_FLAGS[option]]


def quiet_progress() -> None:
    """No progress bars from transformers (model loading and saving): they fill captured logs."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def bench_inputs(work: Path, device: str) -> tuple[Path, Path]:
    """(model folder, data folder) under the scratch folder ``work``: the full-size random-init
    model (built once) on cuda, the bundled tiny model on cpu; the synthetic data is (re)written
    for that tokenizer."""
    from transformers import AutoTokenizer

    quiet_progress()
    work.mkdir(parents=True, exist_ok=True)
    model_dir, data = work / "model", work / "data"
    if device == "cpu":
        from dreamprm.tiny import ensure_tiny

        model_dir = ensure_tiny()
    elif not (model_dir / "config.json").exists():
        build_model(model_dir)
    build_data(data, AutoTokenizer.from_pretrained(model_dir))
    return model_dir, data


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0


def release(device: str) -> None:
    """Free what the last mode left: its tensors, and torch.compile's caches (--compile, --cuda_graphs
    compile afresh per mode instead of piling recompiles up to dynamo's limit, past which they
    would silently run eager)."""
    torch._dynamo.reset()
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def precision(device: str) -> str:
    return "bf16" if device == "cuda" else "fp32"


def probe_probabilities(prm, item, pad_id: int, autocast: bool) -> torch.Tensor:
    """p(+) at every step of one training instance, as the training step computes it."""
    from dreamprm.batching import collate

    batch = collate([item], pad_id).to(prm.device)
    on = autocast and prm.device.type == "cuda" and prm.model.dtype != torch.float32
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=on):
        return prm(**batch.model_inputs()).p_plus.float().cpu()


def reference_probe(model_dir: Path, data: Path, device: str) -> torch.Tensor:
    """The reference-equivalent computation (stock forward, full-vocabulary softmax at every
    position, under autocast as Betty runs it) on the first training instance."""
    from dreamprm.batching import ConversationDataset, ExampleBuilder
    from dreamprm.records import load_records

    prm = ReferenceProcessRewardModel.from_pretrained(model_dir, device=device, precision=precision(device))
    records, _ = load_records(data / "train.json", "train")
    item = ConversationDataset(records, data / "train.json", ExampleBuilder(prm.processor, 6))[0]
    probs = probe_probabilities(prm, item, prm.processor.tokenizer.pad_token_id or 0, autocast=True)
    del prm
    release(device)
    return probs


def benchmark_trainer(device: str, model_dir, data: Path, out: Path, mode: str, iterations: int,
                      flags: list[str] = (), reference: bool = False, max_patch_num: int = 6):
    """The project's Trainer in ``mode`` (sft/table/net) on the benchmark data, never saving a
    checkpoint mid-run; ``reference`` switches on the reference-equivalent computation
    (full-vocabulary logits everywhere, darts passes that record an autograd graph);
    ``max_patch_num``: the most crop tiles an image is cut into (the trainer's default is 6)."""
    from arguments import parse_train_args
    from dreamprm.trainer import Trainer

    argv = ["--reward_model", str(model_dir), "--device", device, "--precision", precision(device), "--no_progress",
            "--train_json_file", str(data / "train.json"), "--meta_json_file", str(data / "meta.json"),
            "--weights_path", str(out), "--iteration_num", str(iterations),
            "--save_every_iterations", str(10**9), "--keep_checkpoints", "1",
            "--num_workers", "4" if device == "cuda" else "0", "--max_patch_num", str(max_patch_num),
            "--figs_dir", str(out / "figs")]
    argv += {"sft": ["--retrain", "1"], "table": ["--reweighting", "table", "--meta_lr", "5e-3"],
             "net": ["--reweighting", "net", "--meta_lr", "5e-4"]}[mode]
    trainer = Trainer(parse_train_args(argv + list(flags)))
    return make_reference(trainer) if reference else trainer


def measure_training(device: str, model_dir: Path, data: Path, out: Path, mode: str, reference: bool, options: set,
                     iters: int, warmup: int, reference_probs: torch.Tensor | None = None, max_patch_num: int = 6,
                     final_checkpoint: bool = True) -> dict:
    """Seconds per iteration (the trainer's own, after ``warmup``), peak memory, and the first
    training instance's shape: tokens, tiles and steps as the processor and the prompt built them.
    ``final_checkpoint=False`` skips the export and checkpoint the trainer writes after its last
    iteration (several GB at full size; the timed iterations are the same), for sweeps of many runs."""
    trainer = benchmark_trainer(device, model_dir, data, out, mode, warmup + iters,
                                option_flags(options), reference, max_patch_num)
    if not final_checkpoint:
        trainer.save = lambda iteration: None  # _on_iteration's only writer; nothing reads its path here
    item = trainer.train_set[0]
    seq_len = len(item["input_ids"])
    diff = None
    if reference_probs is not None:
        probs = probe_probabilities(trainer.prm, item, trainer.train_stream.pad_id, "noac" not in options)
        diff = float((probs - reference_probs).abs().max())
    reset_peak(device)
    trainer.run()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    secs = [r["seconds"] for r in rows[warmup:]]
    warmup_secs = [r["seconds"] for r in rows[:warmup]]  # compile and graph capture land here
    peak = peak_gib(device)
    del trainer
    shutil.rmtree(out, ignore_errors=True)  # each run writes ~3 GB of checkpoint; the disk is finite
    return {"secs": secs, "warmup_secs": warmup_secs, "peak_gib": peak, "seq_len": seq_len,
            "tiles": int(item["pixel_values"].shape[0]), "steps": len(item["labels"]),
            "max_prob_diff_vs_reference": diff}


def measure_bon8(device: str, model_dir: Path, data: Path, reference: bool, iters: int, warmup: int,
                 prefetch: int = 2, workers: int | None = None) -> dict:
    """``workers``: image-preparing processes, None = test.py's default on ``device``."""
    from dreamprm.batching import ExampleBuilder, collate, load_rgb
    from dreamprm.prompt import candidate_conversation
    from dreamprm.scoring import default_workers, evaluate, load_scorer
    from dreamprm.steps import split_steps

    workers = default_workers(device) if workers is None else workers
    tests = json.loads((data / "test.json").read_text())
    scorer = load_scorer(str(model_dir), device=device, precision=precision(device), max_patch_num=12, batch_size=8)
    prm = make_reference(scorer.prm) if reference else scorer.prm  # in reference mode only naive() runs it
    builder = ExampleBuilder(prm.processor, 12)

    def naive(q):  # one full forward per candidate, image re-tiled and re-encoded each time
        img = load_rgb(data / q["image_path"])
        scores = []
        for cand in q["candidates"]:
            item = builder.build(candidate_conversation(q["question"], split_steps(cand)), img)
            batch = collate([item], 0).to(device)
            scores.append(prm(**batch.model_inputs()).p_plus.float().tolist())
        return scores

    def streamed():  # ours: test.py's loop, questions prepared ahead (prefetch, workers)
        stream = [tests[i % len(tests)] for i in range(warmup + iters)]
        ends, score = [], scorer.score_prepared

        def timed(*args):
            out = score(*args)
            sync(device)
            ends.append(time.perf_counter())
            return out

        scorer.score_prepared = timed
        ticks = [time.perf_counter()]
        questions, _ = evaluate(scorer, stream, data / "test.json", progress=False, prefetch=prefetch,
                                workers=workers)
        del scorer.score_prepared
        ticks += ends  # a question's time runs from the end of the previous one: the streamed cost
        secs = [b - a for a, b in zip(ticks[warmup:], ticks[warmup + 1 :])]
        return secs, [q["step_scores"] for q in questions[: len(tests)]]

    reset_peak(device)
    secs, scores = [], []
    if not reference:
        secs, scores = streamed()
    else:
        with torch.no_grad():
            for i in range(warmup + iters):
                q = tests[i % len(tests)]
                t0 = time.perf_counter()
                s = naive(q)
                sync(device)
                if i >= warmup:
                    secs.append(time.perf_counter() - t0)
                if i < len(tests):
                    scores.append(s)
    item = builder.build(candidate_conversation(tests[0]["question"], split_steps(tests[0]["candidates"][0])),
                         load_rgb(data / tests[0]["image_path"]))
    peak = peak_gib(device)
    del scorer, prm
    return {"secs": secs, "peak_gib": peak, "seq_len": len(item["input_ids"]), "scores": scores}


def bon8_numerics(ours: list, reference: list) -> dict:
    """Largest step-probability difference and whether mean aggregation selects the same candidates."""
    diff = max(abs(x - y) for qa, qb in zip(ours, reference) for ca, cb in zip(qa, qb) for x, y in zip(ca, cb))

    def selections(scores):
        return [max(range(len(q)), key=lambda i: sum(q[i]) / len(q[i])) for q in scores]

    return {"bon8_max_abs_step_prob_diff": diff, "same_selections": selections(ours) == selections(reference)}


def parse_mode(spec: str) -> tuple[str, str, bool, set]:
    """``table+gc+noac`` -> (mode "table", base "table", reference False, options {"gc", "noac"})."""
    mode, *opts = spec.split("+")
    base, options = mode.removeprefix("reference_"), set(opts)
    if base not in MODE_FLOPS or not options <= OPTION_FLAGS.keys() or (base == "bon8" and options):
        raise SystemExit(f"unknown mode {spec!r}: sft/table/net[+gc][+noac][+compile][+graphs][+bettydarts], "
                         "bon8, or any of them prefixed with reference_")
    return mode, base, mode.startswith("reference_"), options


def default_run_dir(device: str) -> Path:
    """``bench/runs/<today>-<gpu>`` on cuda; a cpu smoke run's folder is a temporary one, since its
    numbers are not results."""
    if device == "cpu":
        return Path(tempfile.gettempdir()) / "dreamprm-bench-smoke"
    return RUNS / f"{dt.date.today().isoformat()}-{gpu_slug(torch.cuda.get_device_name())}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None,
                    help="run folder for results.json, bench_log.txt and numerics.json "
                         "(default bench/runs/<date>-<gpu>; on cpu a temporary folder)")
    ap.add_argument("--work", default=str(WORK),
                    help="scratch folder: model, data, training outputs (default %(default)s)")
    ap.add_argument("--run", default=None, help="the rows' run name (one machine and process order), e.g. h100-m1")
    ap.add_argument("--note", default=None, help="a note stored in every row")
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cpu: a smoke run of every code path on the bundled tiny model, fp32 (numbers meaningless)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--modes", default="sft,table,net,bon8,reference_sft,reference_table,reference_net,reference_bon8,"
                                      "table+gc,net+gc,sft+gc,sft+noac,table+noac,net+noac,"
                                      "sft+noac+compile,table+noac+compile,net+noac+compile,table+gc+noac")
    a = ap.parse_args()
    specs = {spec: parse_mode(spec) for spec in a.modes.split(",")}
    out = Path(a.out) if a.out else default_run_dir(a.device)
    if a.device == "cpu" and out.resolve().is_relative_to(RUNS.resolve()):
        raise SystemExit(f"{out} is a results folder; a cpu smoke run's numbers are not results (pass another --out)")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "bench_log.txt", "a", encoding="utf-8") as log:
        sys.stdout, sys.stderr = LogTee(sys.stdout, log), LogTee(sys.stderr, log)
        try:
            print(f"# {dt.datetime.now().isoformat(timespec='seconds')} python bench/bench.py {' '.join(sys.argv[1:])}",
                  flush=True)
            return run_modes(a, specs, out, Path(a.work))
        except Exception:  # into the log too, then out with status 1
            traceback.print_exc()
            return 1
        finally:
            for tee in (sys.stdout, sys.stderr):
                tee.close()
            sys.stdout, sys.stderr = sys.stdout.stream, sys.stderr.stream


def run_modes(a, specs: dict, out: Path, work: Path) -> int:
    import transformers

    model_dir, data = bench_inputs(work, a.device)
    device_name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu (smoke run, tiny model)"
    labels = {k: v for k, v in (("run", a.run), ("note", a.note)) if v is not None}  # every row carries them
    rows, scores = [], {}
    training = any(base != "bon8" for _, base, _, _ in specs.values())
    ref_probs = reference_probe(model_dir, data, a.device) if training else None
    for spec, (mode, base, reference, options) in specs.items():
        gc_on = "gc" in options
        print(f"== {spec}  (live threads {threading.active_count()}, child processes "
              f"{len(multiprocessing.active_children())}, gc objects {len(gc.get_objects())})", flush=True)
        try:
            if base == "bon8":
                m = measure_bon8(a.device, model_dir, data, reference, a.iters, a.warmup)
                scores[mode] = m.pop("scores")
                tiles, steps, tokens = 13, 8, 8 * m["seq_len"]
            else:
                m = measure_training(a.device, model_dir, data, work / f"run_{spec}", base, reference, options,
                                     a.iters, a.warmup, ref_probs)
                tiles, steps, tokens = m["tiles"], m["steps"], m["seq_len"]
        except Exception as exc:  # record the failure (e.g. out of memory) and go on
            traceback.print_exc()
            row = {"date": dt.date.today().isoformat(), "device": device_name, "mode": mode,
                   "gradient_checkpointing": gc_on, "options": sorted(options - {"gc"}),
                   "error": f"{type(exc).__name__}: {exc}"[:300], **labels}
            rows.append(row)
            append_rows(out / "results.json", [row])
            release(a.device)
            continue
        release(a.device)
        med = statistics.median(m["secs"])
        row = {"date": dt.date.today().isoformat(), "device": device_name, "torch": torch.__version__,
               "transformers": transformers.__version__, "mode": mode, "gradient_checkpointing": gc_on,
               "tiles": tiles, "steps": steps, "seq_len": m["seq_len"], "median_s": round(med, 4),
               "min_s": round(min(m["secs"]), 4), "timed_iters": len(m["secs"]), "peak_gib": round(m["peak_gib"], 2),
               "tokens_per_s": round(tokens / med, 1), "options": sorted(options - {"gc"}),
               "mfu": round(MODE_FLOPS[base] / med / PEAK_FLOPS, 4) if a.device == "cuda" else None}
        if m.get("max_prob_diff_vs_reference") is not None:
            row["max_prob_diff_vs_reference"] = m["max_prob_diff_vs_reference"]
        if m.get("warmup_secs"):  # training modes: the untimed first iterations (--compile, --cuda_graphs pay here)
            row["warmup_s"] = [round(x, 3) for x in m["warmup_secs"]]
        row |= labels
        print(json.dumps(row), flush=True)
        rows.append(row)
        append_rows(out / "results.json", [row])  # row by row: a run cut short (time limit) keeps what it measured
        if base == "bon8" and "bon8" in scores and "reference_bon8" in scores:  # as soon as both are in
            note = bon8_numerics(scores["bon8"], scores["reference_bon8"])
            print(json.dumps(note), flush=True)
            (out / "numerics.json").write_text(json.dumps(note, indent=1) + "\n")
    print(f"rows appended to {out / 'results.json'}", flush=True)
    failed = [f"{r['mode']}{'+gc' if r['gradient_checkpointing'] else ''}" for r in rows if "error" in r]
    if failed:
        print(f"modes that failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
