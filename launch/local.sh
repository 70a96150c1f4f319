#!/usr/bin/env bash
# Usage: launch/local.sh NUM_PROCESSES CONFIG WORKDIR [FLAGS...]
#   e.g. DEVICES_EACH=4 launch/local.sh 2 configs/smoke.py /tmp/two_processes
# Runs NUM_PROCESSES training processes on this machine as one job (CPU devices, gloo
# collectives on loopback), each with DEVICES_EACH (default 1) devices. Ctrl-C or SIGTERM
# reaches every process: they save the same step and exit; the same command resumes.
set -euo pipefail
if [[ $# -lt 3 ]]; then sed -n '2,6p' "$0"; exit 2; fi
num=$1 config=$2 workdir=$3; shift 3
port=${PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
export JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_EACH:-1}"
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' INT TERM
for ((i = 0; i < num; i++)); do
  python3 -m cifar_jax.main --config="$config" --workdir="$workdir" \
    --coordinator_address="127.0.0.1:$port" --num_processes="$num" --process_id="$i" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  while true; do
    wait "$pid" && break || code=$?
    # A signal interrupted `wait`: keep waiting for the process to save and exit.
    if kill -0 "$pid" 2>/dev/null; then continue; fi
    status=$code; break
  done
done
exit "$status"
