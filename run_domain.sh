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
# ---- the same in run_coldstart.sh, run_table.sh, run_net.sh and run_domain.sh ----------------
# Run from any folder: the paths you pass are read from your working directory, the defaults
# are files of this repository. Python: $PYTHON if set, else this repository's .venv, else python3.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$REPO/.venv/bin/python" ]; then PY=$REPO/.venv/bin/python
else PY=python3
fi
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's dreamprm, whatever $PY has

# last_value FLAG SHORTEST_PREFIX ARGS...: the value the last FLAG among ARGS gives (argparse
# also takes --flag=value and any unambiguous prefix); fails when no FLAG is there.
last_value() {
  local flag=$1 prefix=$2 found=1 value="" arg name
  shift 2
  while [ $# -gt 0 ]; do
    arg=$1; shift; name=${arg%%=*}
    [[ $name == "$prefix"* && $flag == "$name"* ]] || continue
    found=0
    if [[ $arg == *=* ]]; then value=${arg#*=}
    elif [ $# -gt 0 ]; then value=$1; shift
    fi
  done
  printf '%s' "$value"
  return $found
}

# data_default FLAG SHORTEST_PREFIX PREPARED SAMPLE ARGS...: unless ARGS name a file for FLAG,
# the repository's PREPARED file (README "Reproduce the paper" makes it); while it does not exist,
# the SAMPLE file for the tiny model and an error for any other model.
DATA=()
data_default() {
  local flag=$1 prefix=$2 prepared=$3 sample=$4
  shift 4
  if last_value "$flag" "$prefix" "$@" >/dev/null; then return 0; fi
  if [ -e "$REPO/$prepared" ]; then DATA+=("$flag" "$REPO/$prepared")
  elif [ "$(last_value --reward_model --rewa "$@")" = tiny ]; then
    echo "note: no $prepared yet (README: Reproduce the paper); the tiny model uses the sample $sample" >&2
    DATA+=("$flag" "$REPO/$sample")
  else
    echo "error: $REPO/$prepared not found: make it as README \"Reproduce the paper\" says, or pass $flag FILE" >&2
    exit 2
  fi
}

# refuse_reweighting OWN ARGS...: this script trains --reweighting OWN and no other.
refuse_reweighting() {
  local own=$1 other
  shift
  other=$(last_value --reweighting --rewe "$@") || return 0
  [ "$other" = "$own" ] && return 0
  case $other in
    table|net|domain) echo "error: $(basename "$0") trains --reweighting $own; for --reweighting $other use run_$other.sh" >&2 ;;
    *) echo "error: $(basename "$0") trains --reweighting $own (--reweighting table|net|domain: run_table.sh, run_net.sh, run_domain.sh)" >&2 ;;
  esac
  exit 2
}
# ---------------------------------------------------------------------------------------------
refuse_reweighting domain "$@"
data_default --train_json_file --t data/train_table.json data/train.json "$@"
data_default --meta_json_file --meta_j data/meta_mmmu_pro.json data/meta.json "$@"
exec "$PY" "$REPO/train.py" \
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
