#!/usr/bin/env bash
# DreamPRM (the predecessor): one learnable weight per training domain (the record's "dataset"),
# with DreamPRM's public main.py settings:
#   Domain Table: weight = softplus(raw) / mean(softplus(raw)), raw weights starting at 0;
#   meta prediction: sigmoid of the mean step log-odds log(p/(1-p)), MSE against correctness
#   (--aggregation_function log_odds --loss_target +);
#   lower level: MSE between p(+) and the step label (--lower_loss mse), torch's AdamW
#   (eps 1e-8) lr 5e-7 with its default weight decay 1e-2, StepLR every 5000 steps by 0.5;
#   upper level: torch's AdamW lr 1e-2, weight decay 1e-3, no schedule;
#   darts hypergradient with 5 lower steps per upper step, no gradient clipping;
#   10,000 iterations, a checkpoint every 1,000, batch 1.
# Differences from DreamPRM, which trained a Qwen2-VL with a linear value head on the last token:
# the PRM here is the InternVL3-1B +/- model of the other stages, scored per step, and it starts
# from the cold-start checkpoint (run_coldstart.sh) so that it already answers +/-.
# Reads data/train_table.json (its records' "dataset" are the domains) and data/meta_mmmu_pro.json
# (README "Reproduce the paper" makes them); writes weights/domain, all in this repository.
# Extra arguments are passed through and override these.
set -euo pipefail
# Shared: the Python to use, paths relative to the caller, data defaults, --reweighting check.
source "$(dirname "${BASH_SOURCE[0]}")/scripts/run_common.sh"
refuse_reweighting domain "$@"
data_default --train_json_file --t data/train_table.json data/train.json "$@"
data_default --meta_json_file --meta_j data/meta_mmmu_pro.json data/meta.json "$@"
exec "${TRAIN[@]}" \
  --reweighting domain \
  --reward_model "$REPO/weights/coldstart" \
  ${DATA[@]+"${DATA[@]}"} \
  --weights_path "$REPO/weights/domain" \
  --iteration_num 10000 \
  --batch_size 1 --meta_batch_size 1 \
  --lower_loss mse \
  --optimizer adamw_torch \
  --lr 5e-7 --weight_decay 1e-2 \
  --scheduler_type step_lr --scheduler_step_size 5000 --scheduler_gamma 0.5 \
  --meta_lr 1e-2 --meta_weight_decay 1e-3 --meta_scheduler_type constant \
  --aggregation_function log_odds --loss_target + \
  --unroll_steps 5 --gradiant_clipping 0 \
  --max_patch_num 6 \
  --save_every_iterations 1000 \
  "$@"
