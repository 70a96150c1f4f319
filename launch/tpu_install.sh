#!/usr/bin/env bash
# Usage: launch/tpu_install.sh NAME ZONE
# Copies this checkout to ~/cifar_jax on every worker of the TPU VM and installs it with
# JAX for TPUs. Run it from the repository root, and again after changing the code.
set -euo pipefail
if [[ $# -ne 2 ]]; then sed -n '2,4p' "$0"; exit 2; fi
name=$1 zone=$2
archive=$(mktemp --suffix=.tar.gz)
trap 'rm -f "$archive"' EXIT
git archive --format=tar.gz -o "$archive" HEAD
gcloud compute tpus tpu-vm scp "$archive" "$name":cifar_jax.tar.gz --zone="$zone" --worker=all
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command='
  set -e
  rm -rf ~/cifar_jax && mkdir ~/cifar_jax && tar -xzf ~/cifar_jax.tar.gz -C ~/cifar_jax
  python3 -m pip install --quiet -U pip
  python3 -m pip install --quiet -e ~/cifar_jax "jax[tpu]"
  python3 -c "import jax; print(jax.process_index(), jax.local_device_count(), \"local devices\")"'
