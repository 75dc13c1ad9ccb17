#!/usr/bin/env bash
# The PyTriton peer's own venv (bench/.pytriton-venv, git-ignored): nvidia-pytriton, the CPU onnxruntime
# wheel it runs the bench models with, and py-spy (the profiler used for docs/architecture.md). It never
# touches the project's .venv, whose onnxruntime-gpu must not be replaced by the CPU wheel.
# Triton's server binary inside the wheel needs Python's LIBDIR on LD_LIBRARY_PATH; bench/run.py sets it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3.11}"
"$python" -m venv "$here/.pytriton-venv"
"$here/.pytriton-venv/bin/pip" install --quiet nvidia-pytriton onnxruntime py-spy
"$here/.pytriton-venv/bin/python" -c "import pytriton, onnxruntime; print('pytriton venv ready:', onnxruntime.__version__)"
