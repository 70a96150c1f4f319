#!/usr/bin/env bash
# Usage: launch/tpu_create.sh NAME ZONE ACCELERATOR_TYPE [--spot] [--queued]
#   e.g. launch/tpu_create.sh cifar-v4 us-central2-b v4-32 --spot
# Creates a Cloud TPU VM (or, with --queued, a queued resource that waits for capacity).
# RUNTIME_VERSION overrides the TPU software version (default: tpu-ubuntu2204-base).
set -euo pipefail
if [[ $# -lt 3 ]]; then sed -n '2,5p' "$0"; exit 2; fi
name=$1 zone=$2 type=$3; shift 3
runtime=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
spot=() queued=false
for arg in "$@"; do
  case $arg in
    --spot) spot=(--spot) ;;
    --queued) queued=true ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done
if $queued; then
  gcloud compute tpus queued-resources create "$name" --node-id="$name" --zone="$zone" \
    --accelerator-type="$type" --runtime-version="$runtime" "${spot[@]}"
  echo "Queued. Check with: gcloud compute tpus queued-resources describe $name --zone=$zone"
else
  gcloud compute tpus tpu-vm create "$name" --zone="$zone" --accelerator-type="$type" \
    --version="$runtime" "${spot[@]}"
fi
