#!/usr/bin/env bash
# The paper's ablations on the synthetic shapes data (configs/ablations/): trains each of
#   plain_ar  ref_noise  masked  full
# with the same budget, evaluates it on the held-out prompt schedules (--mode=eval), and merges
# the results into ROOT/ablations.{md,json} and ROOT/ablations_drift_*.png (a line per model).
#
#   benchmarks/ablations.sh ROOT [--steps=N] [--frames=N] [--videos=N] [--only=a,b]
#                                [-- EXTRA --config.* FLAGS FOR EVERY RUN]
#
#   --steps   training steps of every model (default: the configs' budget, demo's 5000)
#   --frames  frames per held-out video (default: config.eval.num_frames, 256)
#   --videos  held-out videos per model (default: config.eval.num_videos, 10)
#   --only    comma-separated subset of the models (the table still lists every model of ROOT
#             that has been evaluated)
#
# Runs resume: a model whose training finished is not trained again (the trainer resumes from
# its last checkpoint), but it is evaluated again. The data set is built once, in ROOT/tfds.
# A quick smoke run: benchmarks/ablations.sh /tmp/abl --steps=2 --frames=8 --videos=1
set -euo pipefail

MODELS=(plain_ar ref_noise masked full)

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

[[ $# -ge 1 && $1 != -* ]] || usage
root=$1; shift
steps="" frames="" videos="" only="" extra=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --steps=*) steps=${1#*=} ;;
    --frames=*) frames=${1#*=} ;;
    --videos=*) videos=${1#*=} ;;
    --only=*) only=${1#*=} ;;
    --) shift; extra=("$@"); break ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
  shift
done

cd "$(dirname "$0")/.."  # the repository root: configs/ imports as a package
mkdir -p "$root"
root=$(cd "$root" && pwd)

common=(--config.data.data_dir="$root/tfds" ${steps:+--config.train.num_steps=$steps}
        ${extra[@]+"${extra[@]}"})
evaluation=(${frames:+--config.eval.num_frames=$frames} ${videos:+--config.eval.num_videos=$videos})

for model in "${MODELS[@]}"; do
  [[ -z $only || ,$only, == *,$model,* ]] || continue
  config=configs/ablations/$model.py
  echo "=== $model: train" >&2
  python -m artv_jax.main --mode=train --config="$config" --workdir="$root/$model" "${common[@]}"
  echo "=== $model: eval" >&2
  python -m artv_jax.main --mode=eval --config="$config" --workdir="$root/$model" \
      "${common[@]}" ${evaluation[@]+"${evaluation[@]}"}
done

runs=()
for model in "${MODELS[@]}"; do
  [[ -f $root/$model/eval/results.json ]] && runs+=("$model=$root/$model")
done
python -m artv_jax.evaluate --out="$root" --name=ablations "${runs[@]}"
