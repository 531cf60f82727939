#!/usr/bin/env bash
# Create (once) a Cloud TPU VM pod slice, put this checkout on every worker, install it and
# run the same command on all of them; JAX finds the other workers itself (artv_jax.parallel).
#
#   TPU_NAME=artv ZONE=us-central2-b ACCELERATOR=v4-32 \
#     launch/tpu_pod.sh configs/base.py gs://BUCKET/artv_run --config.model.pretrained=gs://...
#
# Steps: create   (skipped when the TPU exists)
#        check    (PYTHON on every worker is Python >= 3.11, as jax >= 0.10 needs)
#        copy     (a clean copy of this checkout's committed files replaces ~/artv_jax: a
#                  rerun runs the new code, never a copy nested in the old one)
#        install  (pip install -e '.[tpu]' on every worker)
#        run      (python -m artv_jax.main on every worker, in the background under nohup;
#                  logs in ~/artv_jax.log on each worker)
# Environment: TPU_NAME, ZONE (required); ACCELERATOR (v4-32), RUNTIME (the TPU VM image),
# PYTHON (python3; e.g. python3.11 where the image's python3 is older).
set -euo pipefail
config=${1:?usage: launch/tpu_pod.sh CONFIG WORKDIR [FLAGS...]}
workdir=${2:?usage: launch/tpu_pod.sh CONFIG WORKDIR [FLAGS...]}
shift 2
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR=${ACCELERATOR:-v4-32}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
PYTHON=${PYTHON:-python3}
tpu=(gcloud compute tpus tpu-vm)
on_all() { "${tpu[@]}" ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command "$1"; }

if ! "${tpu[@]}" describe "$TPU_NAME" --zone="$ZONE" >/dev/null 2>&1; then
  "${tpu[@]}" create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
    --version="$RUNTIME"
fi

on_all "$PYTHON -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo \
  \"artv_jax needs Python >= 3.11 (jax >= 0.10); \$($PYTHON --version 2>&1) on \$(hostname). \
Install one (e.g. sudo apt-get install python3.11 python3.11-venv) and rerun with \
PYTHON=python3.11.\" >&2; exit 1; }"

repo=$(cd "$(dirname "$0")/.." && pwd)
archive=$(mktemp --suffix=.tar.gz)
trap 'rm -f "$archive"' EXIT
git -C "$repo" archive --format=tar.gz -o "$archive" HEAD
"${tpu[@]}" scp --zone="$ZONE" --worker=all "$archive" "$TPU_NAME":artv_jax.tar.gz
on_all "rm -rf ~/artv_jax && mkdir ~/artv_jax && tar -xzf ~/artv_jax.tar.gz -C ~/artv_jax"
on_all "cd ~/artv_jax && $PYTHON -m pip install -q -e '.[tpu]'"

flags=$(printf ' %q' "$@")
on_all "cd ~/artv_jax && nohup $PYTHON -m artv_jax.main --config=$config --workdir=$workdir$flags \
  > ~/artv_jax.log 2>&1 &"
echo "started on every worker of $TPU_NAME ($(git -C "$repo" rev-parse --short HEAD)); follow with:"
echo "  ${tpu[*]} ssh $TPU_NAME --zone=$ZONE --worker=0 --command 'tail -f ~/artv_jax.log'"
