#!/usr/bin/env bash
# Usage: launch/tpu_delete.sh NAME ZONE [--queued]
# Deletes the TPU VM (with --queued, the queued resource and its TPU). The workdir, if it is
# on shared storage, stays.
set -euo pipefail
if [[ $# -lt 2 ]]; then sed -n '2,4p' "$0"; exit 2; fi
if [[ ${3:-} == --queued ]]; then
  gcloud compute tpus queued-resources delete "$1" --zone="$2" --force --quiet
else
  gcloud compute tpus tpu-vm delete "$1" --zone="$2" --quiet
fi
