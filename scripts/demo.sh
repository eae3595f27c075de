#!/usr/bin/env bash
# The offline CPU demo: cold start -> Instance Table -> best-of-N on the sample data with the
# bundled tiny InternVL. Same code paths as a real run; only the model and the sizes are small.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
OUT=weights_demo
COMMON=(--reward_model tiny --device cpu --precision fp32 --no_progress)
export PYTHON="$PY"
rm -rf "$OUT"
start=$(date +%s)

echo "== 1/3 cold start (SFT) on data/coldstart.json"
bash run_coldstart.sh "${COMMON[@]}" --weights_path "$OUT/coldstart" --iteration_num 150 \
  --save_every_iterations 150 --lr 2e-3 --batch_size 4 --figs_dir figs/demo

echo "== 2/3 Instance Table (bi-level) on data/train.json, meta set data/meta.json"
bash run_table.sh "${COMMON[@]}" --reward_model "$OUT/coldstart" --weights_path "$OUT/table" \
  --iteration_num 60 --save_every_iterations 30 --lr 5e-4 --batch_size 2 --meta_batch_size 2 \
  --figs_dir figs/demo

echo "== 3/3 best-of-N on data/test.json"
"$PY" test.py --reward_model "$OUT/table" --test_json_file data/test.json --device cpu --precision fp32 \
  --output_file "$OUT/bestofn.json" --figs_dir figs/demo

echo
echo "demo finished in $(( $(date +%s) - start )) s"
echo "  cold-start checkpoint : $OUT/coldstart"
echo "  Instance Table model  : $OUT/table (instance weights: $OUT/table/instance_weights.json)"
echo "  metrics               : $OUT/table/metrics.jsonl; resumable checkpoints in $OUT/table/checkpoints"
echo "  figures               : figs/demo/"
echo "  best-of-N results     : $OUT/bestofn.json"
