#!/usr/bin/env bash
# The accelerator benchmarks in one command: inference and training of deit-tiny and deit-base
# on TensorFlow, JAX and PyTorch, float32 and mixed bfloat16, fused ("sdpa": flash / cuDNN
# attention) and eager attention, into one results file. About 5 minutes on one recent GPU;
# stopped by `timeout` at 8.
#
#   bash benchmarks/gpu.sh [--out gpu_results.md]       # needs a CUDA device
#   bash benchmarks/gpu.sh --dry-run --out /tmp/dry.md  # the same steps on CPU, tiny sizes
#
# Any other flag goes to benchmarks/gpu_suite.py (e.g. --backends torch --rounds 3).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}"
out="gpu_results.md"
args=()
dry_run=0
while (($#)); do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --dry-run) dry_run=1; args+=("$1"); shift ;;
    *) args+=("$1"); shift ;;
  esac
done
if ((dry_run == 0)) && ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu.sh: no CUDA device (nvidia-smi -L failed); use --dry-run to run on CPU" >&2
  exit 2
fi
if ((dry_run == 0)); then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out.device"
fi
timeout 480 python "$here/gpu_suite.py" --out "$out" "${args[@]+"${args[@]}"}"
if [[ -f "$out.device" ]]; then
  { echo; echo "device: $(cat "$out.device")"; } >> "$out"
  rm -f "$out.device"
fi
echo "gpu.sh: wrote $out"
