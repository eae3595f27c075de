#!/usr/bin/env bash
# The offline CPU demo: cold start -> Instance Table -> best-of-N on the sample data with the
# bundled tiny InternVL. Same code paths as a real run; only the model and the sizes are small.
# Runs from any folder and writes weights_demo/ in this repository (figures in each run's figs/).
# Python: $PYTHON if set, else this repository's .venv, else python3 (as the run scripts).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$REPO/.venv/bin/python" ]; then PY=$REPO/.venv/bin/python
else PY=python3
fi
export PYTHON="$PY"                                        # for the run scripts below
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"  # for test.py: this checkout's dreamprm
DATA="$REPO/data"
OUT="$REPO/weights_demo"
SHOW="${OUT#"$PWD"/}"  # as printed: relative when run from the repository
COMMON=(--reward_model tiny --device cpu --precision fp32 --no_progress)
rm -rf "$OUT"
start=$(date +%s)

echo "== 1/3 cold start (SFT) on data/coldstart.json"
bash "$REPO/run_coldstart.sh" "${COMMON[@]}" --train_json_file "$DATA/coldstart.json" \
  --weights_path "$OUT/coldstart" --iteration_num 150 --save_every_iterations 150 --lr 2e-3 --batch_size 4

echo "== 2/3 Instance Table (bi-level) on data/train.json, meta set data/meta.json"
bash "$REPO/run_table.sh" "${COMMON[@]}" --reward_model "$OUT/coldstart" \
  --train_json_file "$DATA/train.json" --meta_json_file "$DATA/meta.json" --weights_path "$OUT/table" \
  --iteration_num 60 --save_every_iterations 30 --lr 5e-4 --batch_size 2 --meta_batch_size 2

echo "== 3/3 best-of-N on data/test.json"
"$PY" "$REPO/test.py" --reward_model "$OUT/table" --test_json_file "$DATA/test.json" --device cpu \
  --precision fp32 --output_file "$OUT/bestofn.json"

echo
echo "demo finished in $(( $(date +%s) - start )) s"
echo "  cold-start checkpoint : $SHOW/coldstart"
echo "  Instance Table model  : $SHOW/table (instance weights: $SHOW/table/instance_weights.json)"
echo "  metrics               : $SHOW/table/metrics.jsonl; resumable checkpoints in $SHOW/table/checkpoints"
echo "  figures               : $SHOW/coldstart/figs, $SHOW/table/figs, $SHOW/figs"
echo "  best-of-N results     : $SHOW/bestofn.json"
