#!/usr/bin/env bash
# Stage 1 — cold start: one epoch of plain SFT of InternVL3-1B on 20k step-labelled examples
# (paper App. B: lr 5e-5, weight decay 5e-2, batch 1, cosine schedule with 5 % warm-up).
# Reads data/train_coldstart.json (README "Reproduce the paper" makes it), writes weights/coldstart
# in this repository. Extra arguments are passed through and override these, e.g.
#   bash run_coldstart.sh --reward_model tiny --device cpu --precision fp32 --iteration_num 5
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
data_default --train_json_file --t data/train_coldstart.json data/coldstart.json "$@"
exec "$PY" "$REPO/train.py" \
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
