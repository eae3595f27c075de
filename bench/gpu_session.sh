#!/usr/bin/env bash
# One device call of the GPU measurement (bench/RESULTS.md, "Next GPU session"), by phase:
#   bash bench/gpu_session.sh A|B|C|D   (D: the compiled iteration's profile)
# Run from the repository root on the GPU machine with the betty wheel in .whl/ (the device tool
# carries it). Everything a phase produces lands in $OUT (default bench_gpu_out/): rows as they
# are measured, the log, numerics and profiles; merge the rows into bench/results.json afterwards.
# Each phase stays inside the device's 10-minute limit; rows measured before a kill are kept.
set -u
phase=${1:?phase A, B, C or D}
OUT=${OUT:-bench_gpu_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --ignore-requires-python --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src:$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu_$phase.txt" 2>&1
bench() { timeout "$1" python3 bench/bench.py --out /tmp/bench_out --iters 10 --warmup 3 --results "$OUT/rows_$phase.json" --modes "$2"; }
case $phase in
  A) bench 560 table,sft,bon8,reference_bon8,reference_table,reference_sft,table+gc,sft+gc,net,net+gc ;;
  B) bench 420 table+noac,sft+noac,table+noac+compile,sft+noac+compile,table+gc+noac,net+noac
     timeout 130 python3 bench/profile_iteration.py --out /tmp/bench_out --mode table --options noac >"$OUT/profile_table_noac.txt" 2>&1 ;;
  C) timeout 170 python3 bench/bon8_breakdown.py --out /tmp/bench_out 2>&1 | tee "$OUT/bon8_breakdown.txt"
     timeout 200 python3 bench/darts_precision.py --full_size --out /tmp/bench_out 2>&1 | tee "$OUT/darts_precision.txt"
     timeout 150 python3 bench/profile_iteration.py --out /tmp/bench_out --mode bon8 >"$OUT/profile_bon8.txt" 2>&1 ;;
  D) timeout 200 python3 bench/profile_iteration.py --out /tmp/bench_out --mode table --options noac,compile >"$OUT/profile_table_noac_compile.txt" 2>&1 ;;
  *) echo "unknown phase $phase" >&2; exit 2 ;;
esac
cp /tmp/bench_out/numerics.json "$OUT/numerics_$phase.json" 2>/dev/null
exit 0
