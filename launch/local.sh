#!/usr/bin/env bash
# Train (or sample) on this machine: all its local devices, one process.
#   launch/local.sh configs/demo.py workdir/demo [extra flags, e.g. --config.train.batch_size=8]
set -euo pipefail
config=${1:?usage: launch/local.sh CONFIG WORKDIR [FLAGS...]}
workdir=${2:?usage: launch/local.sh CONFIG WORKDIR [FLAGS...]}
shift 2
exec python -m artv_jax.main --config="$config" --workdir="$workdir" "$@"
