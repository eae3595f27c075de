#!/usr/bin/env bash
# Stage 1 — cold start: one epoch of plain SFT of InternVL3-1B on 20k step-labelled examples
# (paper App. B: lr 5e-5, weight decay 5e-2, batch 1, cosine schedule with 5 % warm-up).
# Reads data/train_coldstart.json (README "Reproduce the paper" makes it), writes weights/coldstart
# in this repository. Extra arguments are passed through and override these, e.g.
#   bash run_coldstart.sh --reward_model tiny --device cpu --precision fp32 --iteration_num 5
set -euo pipefail
# Shared: the Python to use, paths relative to the caller, data defaults, --reweighting check.
source "$(dirname "${BASH_SOURCE[0]}")/scripts/run_common.sh"
data_default --train_json_file --t data/train_coldstart.json data/coldstart.json "$@"
exec "${TRAIN[@]}" \
  --retrain 1 \
  --reward_model OpenGVLab/InternVL3-1B-hf \
  ${DATA[@]+"${DATA[@]}"} \
  --weights_path "$REPO/weights/coldstart" \
  --iteration_num 20000 \
  --batch_size 1 \
  --lr 5e-5 \
  --weight_decay 5e-2 \
  --scheduler_type cosine_schedule_with_warmup \
  --max_patch_num 6 \
  --save_every_iterations 1000 \
  "$@"
