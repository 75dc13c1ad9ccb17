#!/usr/bin/env bash
# Fill docker/wheelhouse/ with every wheel the image builds install, for a build without internet access
# (docs/deploying.md, "Building without internet access"). When docker/wheelhouse/ holds wheels,
# docker/Dockerfile installs from it alone (pip --no-index --find-links); when it holds none (a fresh
# clone), the build uses PyPI and the PyTorch CPU index as before.
#
#   docker/wheelhouse.sh                      # on a Linux x86_64 host with Python 3.11, like the image
#   TORCH_INDEX_URL= docker/wheelhouse.sh     # torch from pip's configured sources (a local mirror)
#
# Run it where pip reaches an index (a workstation, a mirror); then carry the folder to the build host.
# `pip wheel` builds any source-only package into a wheel here, so the image build compiles nothing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${WHEELHOUSE:-$ROOT/docker/wheelhouse}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCH_INDEX_URL="${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}"

"$PYTHON" - <<'EOF'
import platform, sys
if sys.version_info[:2] != (3, 11) or platform.machine() != "x86_64" or sys.platform != "linux":
    sys.exit(f"wheelhouse.sh: needs Linux x86_64 with Python 3.11 (the image's), got {sys.platform} "
             f"{platform.machine()} Python {platform.python_version()}; set PYTHON=/path/to/python3.11")
EOF

mkdir -p "$OUT"
pip=("$PYTHON" -m pip)

# 1. torch, the CPU build: from the PyTorch CPU index (PyPI's Linux wheel is the CUDA one, gigabytes).
torch_source=()
[[ -n "$TORCH_INDEX_URL" ]] && torch_source=(--index-url "$TORCH_INDEX_URL")
"${pip[@]}" download --no-deps --only-binary=:all: --dest "$OUT" "${torch_source[@]}" "torch==${TORCH_VERSION}"

# 2. The project with the train extra (the build stage's /opt/train), its build backend, and pip's own
#    build isolation needs; torch pinned to the wheel above, which --find-links offers first.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==${TORCH_VERSION}" >"$constraints"
"${pip[@]}" wheel --wheel-dir "$OUT" --find-links "$OUT" --constraint "$constraints" \
    "$ROOT[train]" "setuptools>=77" wheel
rm -f "$OUT"/deepserve-*.whl  # the image builds the project from its own sources

# 3. The CPU image swaps onnxruntime-gpu for the CPU wheel of the same version (docker/Dockerfile).
ort_version="$(find "$OUT" -name 'onnxruntime_gpu-*.whl' -printf '%f\n' | sed -E 's/^onnxruntime_gpu-([^-]+)-.*/\1/' \
    | sort -V | tail -n 1)"
[[ -n "$ort_version" ]] || { echo "wheelhouse.sh: no onnxruntime_gpu wheel in $OUT" >&2; exit 1; }
"${pip[@]}" download --no-deps --only-binary=:all: --dest "$OUT" "onnxruntime==${ort_version}"

echo "wheelhouse: $(find "$OUT" -name '*.whl' | wc -l) wheels, $(du -sh "$OUT" | cut -f1) in $OUT"
