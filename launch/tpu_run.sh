#!/usr/bin/env bash
# Usage: launch/tpu_run.sh NAME ZONE CONFIG WORKDIR [--config.FIELD=VALUE ...]
#   e.g. launch/tpu_run.sh cifar-v4 us-central2-b configs/resnet_c100.py /mnt/runs/r18
# Starts training on every worker at once (one process per worker, joined by --multihost),
# in the background, logging to ~/train.log on each worker. WORKDIR must be a folder every
# worker sees at the same path (e.g. a Cloud Storage bucket mounted with gcsfuse, or NFS):
# the workers write the checkpoints into it together. Running the same command again
# resumes from the latest checkpoint, e.g. after a spot TPU was preempted and recreated.
set -euo pipefail
if [[ $# -lt 4 ]]; then sed -n '2,8p' "$0"; exit 2; fi
name=$1 zone=$2 config=$3 workdir=$4; shift 4
extra=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="
  cd ~/cifar_jax && nohup python3 -m cifar_jax.main --config=$config --workdir=$workdir \
    --multihost$extra > ~/train.log 2>&1 < /dev/null &"
echo "Started. Follow with: launch/tpu_logs.sh $name $zone"
