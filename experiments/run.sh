#!/usr/bin/env bash
# The papers' experiments, one command each:
#
#   bash experiments/run.sh RECIPE [flags]
#
# RECIPE (what it runs; every recipe ends with test.py's JSON for each of its runs and a
# results.md table made by `python -m dreamprm.report`):
#   main_table  cold start (unless --reward_model), Instance Table, best-of-N of both
#   main_net    cold start (unless --reward_model), Instance Net, best-of-N of both
#   domain      cold start (unless --reward_model), DreamPRM's Domain Table, best-of-N of both
#   sanity      DreamPRM-1.5's sanity check: the meta set is drawn from the test file itself
#               (--meta_from_test FRACTION of its questions, split by question: no test question
#               is ever in the meta set); Instance Table and Net, tested on the other questions
#   no_blo      DreamPRM's ablation without bi-level optimisation: the same data, weights fixed at 1
#   no_afl      without the aggregation-function loss: the upper level scores each meta step on
#               its own (train.py --meta_loss step)
#   no_st       without structured thinking: candidates for --questions from the generator's plain
#               prompt beside its five-stage one, both scored by the same PRM
#   scaling     accuracy as N grows (1, 2, 4, 8, ...) on the same candidates, --draws random
#               subsets per N, mean and spread (python -m dreamprm.scaling)
#
# Flags read here (everything else goes to every train.py call, e.g. --iteration_num 2):
#   --reward_model DIR        a cold-start checkpoint to start from (the cold start is skipped)
#   --base_model NAME         what the cold start starts from (default: the run script's,
#                             OpenGVLab/InternVL3-1B-hf; `tiny` for a quick run)
#   --train_json_file, --meta_json_file, --test_json_file, --coldstart_json_file   data (default:
#                             the prepared files of README "Reproduce the paper", else the samples)
#   --meta_from_test F        sanity: the share of test questions that make the meta set (0.5)
#   --questions Q, --policy MODEL   no_st: the questions and the generator (default: data/questions.json, tiny)
#   --num_candidates N        no_st: candidates per question (8)
#   --max_new_tokens M        no_st: the generator's longest reply in tokens (1024)
#   --draws D                 scaling: random subsets per N (20)
#   --device, --precision     passed to train.py, test.py and the generator
# Output: experiments/out/<recipe>/ (or $EXPERIMENTS_OUT/<recipe>/); each run's test.py JSON is in
# results/<method>/results.json beside the run's weights folder.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/run_common.sh"

RECIPES=(main_table main_net domain sanity no_blo no_afl no_st scaling)
RECIPE=${1:-}
if [[ -z $RECIPE || " ${RECIPES[*]} " != *" $RECIPE "* ]]; then
  echo "usage: bash experiments/run.sh RECIPE [flags]; RECIPE is one of: ${RECIPES[*]}" >&2
  [[ -z $RECIPE || $RECIPE == -h || $RECIPE == --help ]] && exit 0
  echo "error: unknown recipe '$RECIPE'" >&2
  exit 2
fi
shift

REWARD="" BASE="" TRAIN_JSON="" META_JSON="" TEST_JSON="" COLD_JSON="" FRACTION=0.5
QUESTIONS="$REPO/data/questions.json" POLICY=tiny CANDIDATES=8 DRAWS=20 MAX_NEW=1024
COMMON=() TRAIN=()
while [ $# -gt 0 ]; do
  arg=$1; shift
  name=${arg%%=*}
  case $name in
    --reward_model|--base_model|--train_json_file|--meta_json_file|--test_json_file|--coldstart_json_file|\
    --meta_from_test|--questions|--policy|--num_candidates|--max_new_tokens|--draws|--device|--precision)
      if [[ $arg == *=* ]]; then value=${arg#*=}
      elif [ $# -gt 0 ]; then value=$1; shift
      else echo "error: $name needs a value" >&2; exit 2
      fi
      case $name in
        --reward_model) REWARD=$value ;;
        --base_model) BASE=$value ;;
        --train_json_file) TRAIN_JSON=$value ;;
        --meta_json_file) META_JSON=$value ;;
        --test_json_file) TEST_JSON=$value ;;
        --coldstart_json_file) COLD_JSON=$value ;;
        --meta_from_test) FRACTION=$value ;;
        --questions) QUESTIONS=$value ;;
        --policy) POLICY=$value ;;
        --num_candidates) CANDIDATES=$value ;;
        --max_new_tokens) MAX_NEW=$value ;;
        --draws) DRAWS=$value ;;
        --device|--precision) COMMON+=("$name" "$value") ;;
      esac ;;
    *) TRAIN+=("$arg") ;;
  esac
done

# prepared_or_sample PREPARED SAMPLE: the repository's prepared file, else the sample (with a note).
prepared_or_sample() {
  if [ -e "$REPO/$1" ]; then printf '%s' "$REPO/$1"
  else echo "note: no $1 (README: Reproduce the paper); using the sample $2" >&2; printf '%s' "$REPO/$2"
  fi
}
[ -n "$TEST_JSON" ] || TEST_JSON=$(prepared_or_sample data/test_mmmu.json data/test.json)
[ -n "$META_JSON" ] || META_JSON=$(prepared_or_sample data/meta_mmmu_pro.json data/meta.json)
[ -n "$COLD_JSON" ] || COLD_JSON=$(prepared_or_sample data/train_coldstart.json data/coldstart.json)
if [ -z "$TRAIN_JSON" ]; then
  if [ "$RECIPE" = main_net ]; then TRAIN_JSON=$(prepared_or_sample data/train_net.json data/train.json)
  else TRAIN_JSON=$(prepared_or_sample data/train_table.json data/train.json)
  fi
fi

OUT=${EXPERIMENTS_OUT:-$REPO/experiments/out}/$RECIPE
mkdir -p "$OUT"
echo "== $RECIPE: writing $OUT"
RUNS=()

# coldstart: the cold-start checkpoint, trained here unless --reward_model names one.
coldstart() {
  if [ -n "$REWARD" ]; then printf '%s' "$REWARD"; return; fi
  local base=()
  [ -n "$BASE" ] && base=(--reward_model "$BASE")
  bash "$REPO/run_coldstart.sh" --train_json_file "$COLD_JSON" --weights_path "$OUT/coldstart" --overwrite \
    ${base[@]+"${base[@]}"} ${COMMON[@]+"${COMMON[@]}"} ${TRAIN[@]+"${TRAIN[@]}"} >&2
  printf '%s' "$OUT/coldstart"
}

# evaluate METHOD MODEL TEST: best-of-N of MODEL on TEST into results/METHOD/results.json.
evaluate() {
  local out="$OUT/results/$1"
  mkdir -p "$out"
  "$PY" "$REPO/test.py" --reward_model "$2" --test_json_file "$3" --output_file "$out/results.json" \
    ${COMMON[@]+"${COMMON[@]}"}
  RUNS+=("$out")
}

# reweight SCRIPT FOLDER COLDSTART META EXTRA...: one reweighting run of a stage script.
reweight() {
  local script=$1 folder=$2 cs=$3 meta=$4
  shift 4
  bash "$REPO/$script" --reward_model "$cs" --train_json_file "$TRAIN_JSON" --meta_json_file "$meta" \
    --weights_path "$OUT/$folder" --overwrite "$@" ${COMMON[@]+"${COMMON[@]}"} ${TRAIN[@]+"${TRAIN[@]}"}
}

case $RECIPE in
  main_table|main_net|domain)
    cs=$(coldstart)
    evaluate cold_start "$cs" "$TEST_JSON"
    case $RECIPE in
      main_table) reweight run_table.sh table "$cs" "$META_JSON"; evaluate instance_table "$OUT/table" "$TEST_JSON" ;;
      main_net) reweight run_net.sh net "$cs" "$META_JSON"; evaluate instance_net "$OUT/net" "$TEST_JSON" ;;
      domain) reweight run_domain.sh domain "$cs" "$META_JSON"; evaluate domain_table "$OUT/domain" "$TEST_JSON" ;;
    esac ;;
  sanity)
    echo "sanity check: the meta set is $FRACTION of the questions of $TEST_JSON; the rest is the test set"
    "$PY" -m dreamprm.meta_split --test_json_file "$TEST_JSON" --meta_from_test "$FRACTION" \
      --meta_out "$OUT/meta_from_test.json" --test_out "$OUT/test_heldout.json"
    cs=$(coldstart)
    evaluate cold_start "$cs" "$OUT/test_heldout.json"
    reweight run_table.sh table "$cs" "$OUT/meta_from_test.json"
    evaluate instance_table "$OUT/table" "$OUT/test_heldout.json"
    reweight run_net.sh net "$cs" "$OUT/meta_from_test.json"
    evaluate instance_net "$OUT/net" "$OUT/test_heldout.json" ;;
  no_blo)
    cs=$(coldstart)
    reweight run_table.sh no_blo "$cs" "$META_JSON" --baseline
    evaluate no_blo "$OUT/no_blo" "$TEST_JSON" ;;
  no_afl)
    cs=$(coldstart)
    reweight run_table.sh no_afl "$cs" "$META_JSON" --meta_loss step
    evaluate no_afl "$OUT/no_afl" "$TEST_JSON" ;;
  no_st)
    cs=$(coldstart)
    for prompt in five_stage plain; do
      "$PY" -m dreamprm.generate --questions "$QUESTIONS" --output "$OUT/candidates_$prompt.json" \
        --num_candidates "$CANDIDATES" --model "$POLICY" --prompt "$prompt" --max_new_tokens "$MAX_NEW" \
        --overwrite --no_progress \
        ${COMMON[@]+"${COMMON[@]}"}
      evaluate "with_$prompt" "$cs" "$OUT/candidates_$prompt.json"
    done ;;
  scaling)
    cs=$(coldstart)
    evaluate prm "$cs" "$TEST_JSON"
    "$PY" -m dreamprm.scaling "$OUT/results/prm/results.json" --draws "$DRAWS" --test_json_file "$TEST_JSON" ;;
esac

"$PY" -m dreamprm.report "${RUNS[@]}" --output "$OUT/results.md"
echo "== $RECIPE done: test.py JSON in ${RUNS[*]/%//results.json}; table $OUT/results.md"
