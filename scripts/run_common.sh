# Sourced by run_coldstart.sh, run_table.sh, run_net.sh and run_domain.sh: what they share.
# Run from any folder: the paths you pass are read from your working directory, the defaults
# are files of this repository. Python: $PYTHON if set, else this repository's .venv, else python3.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$REPO/.venv/bin/python" ]; then PY=$REPO/.venv/bin/python
else PY=python3
fi
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's dreamprm, whatever $PY has

# How train.py runs: one process, or with NPROC_PER_NODE=N data parallel on N processes of this
# machine (torchrun, --strategy distributed; README "Multi-GPU"). torchrun gives the processes
# --shutdown_timeout seconds after a SIGTERM before killing them: time to save a checkpoint.
if [ -n "${NPROC_PER_NODE:-}" ]; then
  if ! [[ $NPROC_PER_NODE =~ ^[1-9][0-9]*$ ]]; then
    echo "error: NPROC_PER_NODE must be a positive number of processes (got '$NPROC_PER_NODE')" >&2
    exit 2
  fi
  TRAIN=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC_PER_NODE" --shutdown_timeout 300
         "$REPO/train.py" --strategy distributed)
else
  TRAIN=("$PY" "$REPO/train.py")
fi

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
