#!/usr/bin/env bash
# One device call of the GPU measurement (bench/RESULTS.md, "Next GPU session"), by phase:
#   bash bench/gpu_session.sh A|B|C|D|E|F|G|H|I   (D: the compiled iteration's profile; E: data parallel,
#   bench/distributed.py: one process, a one-process torchrun, two ranks on the one GPU; F: the
#   tiles x steps sweep, bench/scaling.py: table, sft and their references at 1/4/7/13 tiles and
#   4/8/16 steps -> scaling.json, scaling.png, scaling.txt; G, H, I: --cuda_graphs and the fused
#   darts (issue #18): G the graph modes beside the references, H fused vs Betty's darts, the
#   graph iteration's profile and the bf16 darts precision, I the sweep with --cuda_graphs)
# Run from the repository root on the GPU machine; when betty is not installed there, put its
# wheel in .whl/ (the device tool carries it). Everything a phase produces lands in one run folder:
#   $RUN if set; else $OUT/<date>-<gpu> when $OUT is set (the device tool's folder that comes
#   back); else bench/runs/<date>-<gpu>.
# bench.py appends its rows to results.json and its output to bench_log.txt there; the other
# scripts' outputs are <name>.txt beside them. Phases on one machine share the folder; folders that
# came back from separate device calls go into the repository with
#   python bench/merge_run.py <returned folder> bench/runs/<date>-<gpu>
# and the figure is redrawn with: python bench/plot_results.py bench/runs/<date>-<gpu>
# RUN_NAME (optional) is stored as every row's "run" (one machine, one process order).
# Each phase stays inside the device's 10-minute limit; rows measured before a kill are kept.
set -u
phase=${1:?phase A, B, C, D, E, F, G, H or I}
case $phase in A|B|C|D|E|F|G|H|I) ;; *) echo "unknown phase $phase" >&2; exit 2 ;; esac
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --ignore-requires-python --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TQDM_DISABLE=1
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
slug=$(python3 -c 'import sys; sys.path.insert(0, "bench"); from runfiles import gpu_slug; print(gpu_slug(sys.argv[1]))' "$gpu") || exit 1
name="$(date +%F)-$slug"
if [ -z "${RUN:-}" ]; then
  if [ -n "${OUT:-}" ]; then RUN="$OUT/$name"; else RUN="bench/runs/$name"; fi
fi
mkdir -p "$RUN"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$RUN/gpu_$phase.txt" 2>&1
bench() { timeout "$1" python3 bench/bench.py --out "$RUN" --iters 10 --warmup 3 ${RUN_NAME:+--run "$RUN_NAME"} --modes "$2"; }
case $phase in
  A) bench 560 table,sft,bon8,reference_bon8,reference_table,reference_sft,table+gc,sft+gc,net,net+gc ;;
  B) bench 420 table+noac,sft+noac,table+noac+compile,sft+noac+compile,table+gc+noac,net+noac
     timeout 130 python3 bench/profile_iteration.py --mode table --options noac >"$RUN/profile_table_noac.txt" 2>&1 ;;
  C) timeout 170 python3 bench/bon8_breakdown.py --out "$RUN" 2>&1 | tee "$RUN/bon8_breakdown.txt"
     timeout 200 python3 bench/darts_precision.py --full_size 2>&1 | tee "$RUN/darts_precision.txt"
     timeout 150 python3 bench/profile_iteration.py --mode bon8 >"$RUN/profile_bon8.txt" 2>&1 ;;
  D) timeout 200 python3 bench/profile_iteration.py --mode table --options noac,compile >"$RUN/profile_table_noac_compile.txt" 2>&1 ;;
  E) timeout 560 python3 bench/distributed.py --out "$RUN" --timeout 130 2>&1 | tee "$RUN/distributed.txt" ;;
  F) timeout -k 5 560 python3 bench/scaling.py --out "$RUN" --time_limit 480 ${RUN_NAME:+--run "$RUN_NAME"} 2>&1 | tee "$RUN/scaling.txt" ;;
  G) bench 560 reference_table,table+graphs,net+graphs,sft+graphs,reference_sft,table+noac+graphs ;;
  H) bench 220 table,table+bettydarts
     timeout 150 python3 bench/profile_iteration.py --mode table --options graphs >"$RUN/profile_table_graphs.txt" 2>&1
     timeout 180 python3 bench/darts_precision.py --full_size 2>&1 | tee "$RUN/darts_precision_fused.txt" ;;
  I) timeout -k 5 560 python3 bench/scaling.py --out "$RUN" --time_limit 480 --modes table,sft --options graphs \
       ${RUN_NAME:+--run "$RUN_NAME"} 2>&1 | tee "$RUN/scaling_graphs.txt" ;;
esac
echo "phase $phase: $RUN"
exit 0
