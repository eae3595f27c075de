#!/usr/bin/env bash
# Stage 2a — DreamPRM-1.5 Instance Table: one learnable weight per training instance
# (paper App. B: 12k instances, 100k iterations, batch 1; lower AdamW lr 5e-5 wd 1e-2;
# meta lr 5e-3 wd 1e-3; cosine schedules with 5 % warm-up at both levels; darts, unroll 1).
# Table weights are clipped to [-1, 3] (Clip), as paper section 2.2 and the public run_table.sh.
# AdamW is transformers' (eps 1e-6), the optimizer the public code trains with.
# Starts from the cold-start checkpoint weights/coldstart; reads data/train_table.json and
# data/meta_mmmu_pro.json (README "Reproduce the paper" makes them); writes weights/table, all in
# this repository. Extra arguments are passed through and override these.
set -euo pipefail
# Shared: the Python to use, paths relative to the caller, data defaults, --reweighting check.
source "$(dirname "${BASH_SOURCE[0]}")/scripts/run_common.sh"
refuse_reweighting table "$@"
data_default --train_json_file --t data/train_table.json data/train.json "$@"
data_default --meta_json_file --meta_j data/meta_mmmu_pro.json data/meta.json "$@"
exec "${TRAIN[@]}" \
  --reweighting table \
  --reward_model "$REPO/weights/coldstart" \
  ${DATA[@]+"${DATA[@]}"} \
  --weights_path "$REPO/weights/table" \
  --iteration_num 100000 \
  --batch_size 1 --meta_batch_size 1 \
  --lr 5e-5 --weight_decay 1e-2 \
  --meta_lr 5e-3 --meta_weight_decay 1e-3 \
  --activation_function Clip --initialization 1.0 \
  --aggregation_function mean --loss_target both \
  --optimizer adamw_hf --unroll_steps 1 --gradiant_clipping 1.0 \
  --scheduler_type cosine_schedule_with_warmup \
  --max_patch_num 6 \
  --save_every_iterations 1000 \
  "$@"
