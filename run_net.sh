#!/usr/bin/env bash
# Stage 2b — DreamPRM-1.5 Instance Net: a 2->10->1 MLP over the PRM's own step predictions
# (paper App. B: 100k instances, 100k iterations, batch 1; lower AdamW lr 5e-5 wd 1e-2;
# meta lr 5e-4 wd 1e-3, hidden 10; cosine schedules with 5 % warm-up; darts, unroll 1).
# As the public run_net.sh: sigmoid on the net's output, 5 image tiles, transformers' AdamW.
# Where the public script differs from the paper, the paper is kept:
#   --meta_lr 5e-4 (paper App. B; the public run_net.sh passes 1e-4)
#   --weight_decay 1e-2 (paper App. B; the public main_net.py defaults to 5e-2 and run_net.sh
#   does not set it)
# Starts from the cold-start checkpoint weights/coldstart; reads data/train_net.json and
# data/meta_mmmu_pro.json (README "Reproduce the paper" makes them); writes weights/net, all in
# this repository. Extra arguments are passed through and override these.
set -euo pipefail
# Shared: the Python to use, paths relative to the caller, data defaults, --reweighting check.
source "$(dirname "${BASH_SOURCE[0]}")/scripts/run_common.sh"
refuse_reweighting net "$@"
data_default --train_json_file --t data/train_net.json data/train.json "$@"
data_default --meta_json_file --meta_j data/meta_mmmu_pro.json data/meta.json "$@"
exec "${TRAIN[@]}" \
  --reweighting net \
  --reward_model "$REPO/weights/coldstart" \
  ${DATA[@]+"${DATA[@]}"} \
  --weights_path "$REPO/weights/net" \
  --iteration_num 100000 \
  --batch_size 1 --meta_batch_size 1 \
  --lr 5e-5 --weight_decay 1e-2 \
  --meta_lr 5e-4 --meta_weight_decay 1e-3 --hidden_dim 10 \
  --activation_function sigmoid \
  --aggregation_function mean --loss_target both \
  --optimizer adamw_hf --unroll_steps 1 --gradiant_clipping 1.0 \
  --scheduler_type cosine_schedule_with_warmup \
  --max_patch_num 5 \
  --save_every_iterations 1000 \
  "$@"
