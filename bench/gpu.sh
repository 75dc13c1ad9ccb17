#!/usr/bin/env bash
# deepserve vs raw ONNX Runtime on the CUDA provider: ResNet-18-sized and BERT-mini, raw at batch 1/8/32,
# deepserve (IO binding on, batching up to 32) with requests of 1/8/32 items at c=1/8/64; 2 x 5 s per
# cell, about 5-6 minutes in all. Needs an NVIDIA GPU, onnxruntime-gpu with its CUDA/cuDNN libraries,
# torch (to build the bench models) and wrk. Writes bench/results/gpu.md.
#   bench/gpu.sh                 # on a GPU machine
#   bench/gpu.sh --allow-cpu --seconds 1 --repeats 1 --concurrency 1 8   # checks the script on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
command -v wrk >/dev/null || { echo "gpu.sh needs wrk (apt-get install wrk)" >&2; exit 1; }
if [[ " $* " != *" --allow-cpu "* ]]; then
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    || { echo "gpu.sh: no nvidia-smi, so no NVIDIA GPU here (use --allow-cpu to check the script)" >&2; exit 1; }
fi
exec timeout 480 "$python" bench/run.py --gpu --seconds 5 --repeats 2 --concurrency 1 8 64 "$@"
