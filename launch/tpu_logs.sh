#!/usr/bin/env bash
# Usage: launch/tpu_logs.sh NAME ZONE [WORKER]
# Streams ~/train.log of one worker (default 0, the one that logs metrics) until Ctrl-C.
set -euo pipefail
if [[ $# -lt 2 ]]; then sed -n '2,3p' "$0"; exit 2; fi
gcloud compute tpus tpu-vm ssh "$1" --zone="$2" --worker="${3:-0}" \
  --command='tail -n 100 -F ~/train.log'
