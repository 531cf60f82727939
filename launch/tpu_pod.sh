#!/usr/bin/env bash
# Create (once) a Cloud TPU VM pod slice, install artv_jax on every worker, and run the same
# command on all of them; JAX finds the other workers itself (artv_jax.parallel).
#
#   TPU_NAME=artv ZONE=us-central2-b ACCELERATOR=v4-32 \
#     launch/tpu_pod.sh configs/base.py gs://BUCKET/artv_run --config.model.pretrained=gs://...
#
# Steps: create   (skipped when the TPU exists)
#        copy     (this repository to ~/artv_jax on every worker)
#        install  (pip install -e . on every worker)
#        run      (python -m artv_jax.main on every worker, in the background under nohup;
#                  logs in ~/artv_jax.log on each worker)
set -euo pipefail
config=${1:?usage: launch/tpu_pod.sh CONFIG WORKDIR [FLAGS...]}
workdir=${2:?usage: launch/tpu_pod.sh CONFIG WORKDIR [FLAGS...]}
shift 2
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR=${ACCELERATOR:-v4-32}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
tpu=(gcloud compute tpus tpu-vm)

if ! "${tpu[@]}" describe "$TPU_NAME" --zone="$ZONE" >/dev/null 2>&1; then
  "${tpu[@]}" create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
    --version="$RUNTIME"
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
"${tpu[@]}" scp --recurse --zone="$ZONE" --worker=all "$repo" "$TPU_NAME":~/artv_jax
"${tpu[@]}" ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command \
  "cd ~/artv_jax && pip install -q -e . 'jax[tpu]' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
flags=$(printf ' %q' "$@")
"${tpu[@]}" ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command \
  "cd ~/artv_jax && nohup python -m artv_jax.main --config=$config --workdir=$workdir$flags \
   > ~/artv_jax.log 2>&1 &"
echo "started on every worker of $TPU_NAME; follow with:"
echo "  ${tpu[*]} ssh $TPU_NAME --zone=$ZONE --worker=0 --command 'tail -f ~/artv_jax.log'"
