"""Best-of-N evaluation of a PRM: ``python test.py --reward_model ./weights/table``.

The command line glue: the flags are the fields of ``dreamprm.config.TestConfig`` (parsed by
``arguments.parse_test_args``); scoring is in ``dreamprm.scoring``, selection and the
accuracy-vs-N curve in ``dreamprm.selection``, the report in ``dreamprm.results``, the figure in
``dreamprm.figures``. Those raise exceptions; this file
turns them into one ``error:`` line and an exit code.

Exit codes: 0 done; 1 out of memory while scoring; 2 bad input (a flag, an output path that
cannot be written, an invalid test record, a model that cannot be loaded); 3 non-finite step
scores (a diverged model; ``--allow_nonfinite`` scores anyway); 130 / 143 interrupted by Ctrl-C
(SIGINT) / SIGTERM. A run stopped while scoring saves the questions scored so far to
``--output_file``, marked ``"partial": true``.

Several devices (``--devices cuda:0,cuda:1``, or under ``torchrun --nproc_per_node N``): one
process per device, each scoring every N-th question; rank 0 merges them into the JSON one
process would write, byte for byte, and alone prints and writes. ``--devices`` starts the
processes itself (``launch``) and exits with rank 0's code.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import closing, contextmanager
from pathlib import Path

from arguments import FlagError, parse_test_args
from dreamprm.jsonio import write_json

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_DIVERGED = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_test_args(argv)
    except FlagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        _import_library()
    except KeyboardInterrupt:
        print("interrupted (SIGINT) before any question was scored; nothing written", file=sys.stderr)
        return 128 + signal.SIGINT
    if not distributed.launched_by_torchrun():
        return run(args) if args.devices is None else launch(args, sys.argv[1:] if argv is None else list(argv))
    return distributed.quiet_unless_main(distributed.env_rank(), lambda: run(args),
                                         echo=lambda line: distributed.PEER_FAILED not in line)


# -- several devices ----------------------------------------------------------------------------
def device_list(spec: str) -> list[str]:
    """``--devices``: ``all`` (every visible GPU) or a comma-separated list."""
    if spec != "all":
        return [d.strip() for d in spec.split(",")]
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(args, argv: list[str]) -> int:
    """``--devices``: run this command once per device, as torchrun would (RANK, WORLD_SIZE,
    LOCAL_RANK, a local rendezvous), and return rank 0's exit code. SIGTERM and SIGINT are passed
    on to every process, which save what they scored."""
    devices = device_list(args.devices)
    if not devices:
        print("error: --devices all: no CUDA device is visible (use --device cpu)", file=sys.stderr)
        return EXIT_BAD_INPUT
    env = dict(os.environ, WORLD_SIZE=str(len(devices)), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               LOCAL_WORLD_SIZE=str(len(devices)))
    # in sessions of their own: a Ctrl-C reaches them once, forwarded from here
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv], start_new_session=True,
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r))) for r in range(len(devices))]

    forwarded = []

    def forward(signum, frame):
        forwarded.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    saved = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while any(p.poll() is None for p in procs):
            # a process killed outright (the OOM killer, a crash) never reaches the merge the
            # others wait in: stop them rather than wait for the process group's timeout
            if any(p.returncode is not None and p.returncode < 0 for p in procs):
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                for p in procs:
                    p.wait()
                if not forwarded:
                    print("error: a scoring process was killed; the others were stopped, nothing written",
                          file=sys.stderr)
                break
            time.sleep(0.2)
        codes = [p.returncode for p in procs]
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    return codes[0] if codes[0] >= 0 else 128 - codes[0]


def _import_library() -> None:
    """Bind torch, transformers' logging and the dreamprm modules that use them as this file's
    globals. The one lazy import here, and on purpose: importing torch takes seconds, so the flags
    are checked first, and ``main`` calls this inside its Ctrl-C handler (one line, exit 130)."""
    global torch, hf_logging, aggregation, distributed, figures, prm, prompt, record_files, results, scoring
    global selection
    import torch
    from transformers.utils import logging as hf_logging

    from dreamprm import aggregation, distributed, figures, prm, prompt
    from dreamprm import records as record_files
    from dreamprm import results, scoring, selection


# -- signals ------------------------------------------------------------------------------------
class ScoringInterrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT) during ``run``; a KeyboardInterrupt, so code that handles Ctrl-C
    handles it too. ``signum``: the signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _signal_of(exc: BaseException) -> int:
    return getattr(exc, "signum", signal.SIGINT)


@contextmanager
def _sigterm_interrupts():
    """SIGTERM raises ``ScoringInterrupted`` while inside (main thread, default handler only);
    SIGINT already raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        raise ScoringInterrupted(signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def _signals_ignored():
    """SIGINT and SIGTERM ignored while inside (main thread only): a second Ctrl-C does not cut
    short the saving of partial results."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in saved:
        signal.signal(s, signal.SIG_IGN)
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


# -- messages -----------------------------------------------------------------------------------
def output_path_problem(out: Path) -> str | None:
    """Why the results cannot be written to ``out``, or None: it is a folder, lies under a regular
    file, or its folder (or the nearest existing one) does not accept new files. Checked before
    any work, so a scoring run never ends unable to save."""
    if out.is_dir():
        return f"--output_file {out} is a folder; pass a file path such as {out / 'bestofn.json'}"
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        if folder.is_symlink():
            return f"--output_file {out}: {folder} is a broken symbolic link"
        folder = folder.parent
    if not folder.is_dir():
        return f"--output_file {out}: {folder} is a file, not a folder"
    if out.exists():
        try:
            with open(out, "ab"):
                pass
        except OSError as exc:
            return f"--output_file {out} is not writable ({exc.strerror or exc})"
    probe = folder / f".{out.name}.{os.getpid()}.probe"
    try:
        probe.open("x").close()
        probe.unlink()
    except OSError as exc:
        return f"--output_file {out}: cannot create files in {folder} ({exc.strerror or exc})"
    return None


def data_error_lines(message: str) -> list[str]:
    """A DataError message as ``error: <file>: record i (id ..): <problem>`` lines."""
    lines = [l for l in str(message).splitlines() if l.strip()]
    if len(lines) > 1 and re.search(r"\d+ bad records?\b", lines[0]):  # the header line: the count
        out = [f"error: {l}" for l in lines[1:]]
        out[-1] += " (use --skip_bad_records to drop bad records)"
        return out
    return [f"error: {l}" for l in lines]


def _record_label(records, report, index: int) -> str:
    indices = getattr(report, "indices", None)
    where = indices[index] if indices and index < len(indices) else index
    rec = records[index]
    rid = rec.get("id") if isinstance(rec, dict) else None
    return f"record {where}" + (f" (id {rid!r})" if rid is not None else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _first_line(exc: BaseException) -> str:
    lines = [l.strip() for l in str(exc).splitlines() if l.strip()]
    return lines[0] if lines else type(exc).__name__


def _is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text or "can't allocate memory" in text


# -- the command --------------------------------------------------------------------------------
def run(args) -> int:
    """The command (after ``main`` checked the flags and imported the library); returns the exit
    code: 0 done, 1 out of memory, 2 bad input (flags, paths, data, model), 3 non-finite step
    scores, 130 / 143 interrupted by SIGINT / SIGTERM. A run stopped while scoring saves the
    questions scored so far (``"partial": true``)."""
    hf_logging.disable_progress_bar()  # the terminal is for the scoring bar (no per-load bars)
    with _sigterm_interrupts():
        try:
            return _run(args)
        except KeyboardInterrupt as exc:  # outside the scoring loop: nothing scored to save
            signum = _signal_of(exc)
            print(f"interrupted ({signal.Signals(signum).name}) before any question was scored; nothing written",
                  file=sys.stderr)
            return 128 + signum


def _process_device(args) -> str:
    """Under torchrun, this process's device: its own entry of ``--devices`` (which ``launch``
    passes on), or its own GPU for ``--device cuda`` (``distributed.device_for``)."""
    local_rank, size = int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if args.devices:
        devices = device_list(args.devices)
        if len(devices) != size:
            raise ValueError(f"--devices names {len(devices)} devices for {size} processes")
        return devices[local_rank]
    return distributed.device_for(args.device or scoring.default_device(), local_rank)


def _run(args) -> int:
    world = distributed.World()
    if distributed.launched_by_torchrun():
        try:
            device = _process_device(args)
            world = distributed.join("distributed", device, "gloo")  # gloo: only Python objects travel
        except (ValueError, distributed.DistributedSetupError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    try:
        prepared = _prepare(args, world)
        # every process loads before any scores: one that cannot stops them all
        failed = distributed.gather_objects(world, prepared if isinstance(prepared, int) else None)
    except BaseException:
        distributed.leave(wait=False)
        raise
    if any(failed):
        distributed.leave()
        if isinstance(prepared, int):
            return prepared
        print(f"error: {distributed.PEER_FAILED} to start (its error says why)", file=sys.stderr)
        return next(code for code in failed if code)
    code = _score(args, world, *prepared)
    distributed.leave()  # every process gets here (an exception is a crash: no waiting)
    return code


def _prepare(args, world):
    """Check the output path, the device and the records, and load the model: an exit code (the
    error printed) or what scoring needs."""
    out = Path(args.output_file).expanduser()
    problem = output_path_problem(out)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    figs = Path(args.figs_dir).expanduser() if args.figs_dir else out.parent / "figs"

    device = world.device if world.distributed else (args.device or scoring.default_device())
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError) as exc:
        print(f"error: --device {device}: {_first_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if kind == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {device}: CUDA is not available on this machine (use --device cpu)", file=sys.stderr)
        return EXIT_BAD_INPUT
    precision = args.precision or scoring.default_precision(device)

    try:
        records, report = record_files.load_records(args.test_json_file, "test", skip_bad=args.skip_bad_records)
    except record_files.DataError as exc:
        for line in data_error_lines(str(exc)):
            print(line, file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"error: {args.test_json_file}: cannot read the test file ({exc.strerror or _first_line(exc)})",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    if report.skipped:
        for line in report.problems:
            print(f"warning: skipped {line}", file=sys.stderr)
        print(f"skipped {_plural(report.skipped, 'bad record')}; evaluating {len(records)}", file=sys.stderr)

    model = str(args.reward_model)
    try:
        scorer = scoring.load_scorer(model, device=device, precision=precision, max_patch_num=args.max_patch_num,
                                     batch_size=args.batch_size, score_dtype=args.score_dtype,
                                     splitter=args.step_splitter, max_length=args.max_length)
    except prm.ModelLoadError as exc:
        print(f"error: {_first_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # whatever the named model's files make transformers raise
        print(f"error: cannot load reward model {model!r} on {device} ({precision}): "
              f"{type(exc).__name__}: {_first_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return out, figs, device, precision, records, report, scorer


def _score(args, world, out, figs, device, precision, records, report, scorer) -> int:
    """Score this process's questions (all of them in a world of one), merge, write and report."""
    model = str(args.reward_model)
    how = scorer.describe()
    positions = scoring.shard(len(records), world)
    questions: list[dict] = []
    candidates: list[list[str]] = []
    stop = None  # (exit code, stderr line, why) when scoring stops early
    scored = scoring.iter_evaluate(scorer, [records[i] for i in positions], args.test_json_file,
                                   progress=world.is_main, prefetch=args.prefetch,
                                   allow_nonfinite=args.allow_nonfinite, positions=positions,
                                   workers=scoring.default_workers(device) if args.num_workers is None
                                   else args.num_workers)
    try:
        with closing(scored):
            for q, cands in scored:
                questions.append(q)
                candidates.append(cands)
    except KeyboardInterrupt as exc:
        signum = _signal_of(exc)
        name = signal.Signals(signum).name
        stop = (128 + signum, f"interrupted ({name})", name)
    except scoring.NonFiniteScoresError as exc:
        stop = (EXIT_DIVERGED,
                f"error: {args.test_json_file}: {_record_label(records, report, exc.index)}: the reward model gave "
                f"non-finite step scores (NaN or inf) to {exc.count} of {exc.total} candidates; has it diverged? "
                "(pass --allow_nonfinite to evaluate anyway: such candidates are never selected)",
                "non-finite step scores")
    except prompt.PromptError as exc:
        where = _record_label(records, report, positions[len(questions)])
        stop = (EXIT_BAD_INPUT, f"error: {args.test_json_file}: {where}: {_first_line(exc)}", "bad record")
    except OSError as exc:  # an image that passed validation but cannot be decoded
        where = _record_label(records, report, positions[len(questions)])
        stop = (EXIT_BAD_INPUT, f"error: {args.test_json_file}: {where}: cannot read the image "
                f"({type(exc).__name__}: {_first_line(exc)})", "unreadable image")
    except RuntimeError as exc:
        if not _is_out_of_memory(exc):
            raise
        where = _record_label(records, report, positions[len(questions)])
        stop = (EXIT_FAILED, f"error: out of memory while scoring {where}: {_first_line(exc)} (try a smaller "
                "--batch_size or --max_length)", "out of memory")
    n_done = min(len(questions), len(candidates))
    del questions[n_done:], candidates[n_done:]
    if world.size > 1:
        with _signals_ignored():
            parts = distributed.gather_objects(world, (positions[:n_done], questions, candidates, stop))
        questions, candidates = scoring.merge_shards([part[:3] for part in parts])
        stops = [part[3] for part in parts if part[3] is not None]
        if not world.is_main:
            return stop[0] if stop is not None else (stops[0][0] if stops else EXIT_OK)
        stop = stops[0] if stops else None
        for line in dict.fromkeys(s[1] for s in stops):  # why other processes stopped, once each
            if line != stop[1]:
                print(line, file=sys.stderr)
        n_done = len(questions)

    if stop is not None:
        code, line, why = stop
        if not n_done:
            print(f"{line}; no question was scored, nothing written", file=sys.stderr)
            return code
        with _signals_ignored():
            partial = {"questions_scored": n_done, "questions_total": len(records), "stopped_by": why}
            write_json(out, results.build_report(questions, candidates, how, partial=partial))
        if code >= 128:
            print(f"{line} after {n_done} of {len(records)} questions: partial results saved to {out} "
                  '("partial": true)', file=sys.stderr)
        else:
            print(line, file=sys.stderr)
            print(f"partial results ({n_done} of {len(records)} questions) saved to {out}")
        return code

    result = results.build_report(questions, candidates, how)
    with _signals_ignored():
        write_json(out, result)
    try:
        where = device if world.size == 1 else f"{world.size} devices ({device}, ...)"
        return _report(args, out, figs, result, questions, candidates, report, f"{model} on {where} ({precision})")
    except KeyboardInterrupt as exc:  # the results are saved; only the console report or the figure is cut short
        print(f"interrupted ({signal.Signals(_signal_of(exc)).name}); the results are in {out}", file=sys.stderr)
        return 128 + _signal_of(exc)


def _report(args, out: Path, figs: Path, result: dict, questions, candidates, report, model: str) -> int:
    """The console report of a finished run and the accuracy-vs-N figure (a warning if it cannot
    be written: the results are saved already)."""
    summary, how = result["summary"], result["summary"]["scoring"]
    chosen = list(aggregation.AGGREGATIONS) if args.aggregation_function == "all" else [args.aggregation_function]
    print(f"{report.summary()}; reward model {model}")
    print(f"scores: softmax and mean in {how['score_dtype']} ({how['score_dtype_source']}); "
          f"steps: {how['step_splitter']} splitter; ties: {how['ties']}; "
          f"max length: {how['max_length']} tokens")
    print(results.format_table(summary, chosen))
    limit = how["max_length"]
    if summary["truncated_candidates"]:
        n = summary["truncated_candidates"]
        print(f"note: {_plural(n, 'candidate')} longer than {limit} tokens (--max_length) "
              f"{'was' if n == 1 else 'were'} scored over the steps that fit")
    if summary["unscorable_candidates"]:
        n = summary["unscorable_candidates"]
        print(f"note: {_plural(n, 'candidate')} could not be scored: not even the first step fits in {limit} tokens "
              "(--max_length); never selected")
    if summary["nonfinite_candidates"]:
        n = summary["nonfinite_candidates"]
        print(f"note: {_plural(n, 'candidate')} got non-finite step scores (--allow_nonfinite); never selected")
    print(f"results: {out}")
    try:
        curve = selection.accuracy_vs_n(questions, candidates)
        fig = figures.plot_curve(curve, figs / "bestofn_accuracy_vs_n.png", chosen)
        written = write_json(figs / "bestofn_accuracy_vs_n.json", curve)
        print(f"figure:  {fig} (curve data: {written})")
    except OSError as exc:
        print(f"warning: figure not written: cannot write in {figs} ({exc.strerror or _first_line(exc)}); "
              f"the results are in {out}", file=sys.stderr)
    if report.skipped:
        print(f"skipped {_plural(report.skipped, 'bad record')}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
