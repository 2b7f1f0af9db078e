#!/usr/bin/env bash
# Installs the CUDA 13.0 compiler (nvcc, ptxas, headers) from PyPI into .toolchain/ (git-ignored),
# so the `cuda` feature builds on a machine with no GPU and no CUDA toolkit.
#
# Every wheel is pinned: the nvcc wheel does not pin its own dependencies, and an unpinned set
# pulls 13.5, whose PTX (ISA 9.5) the device machines' driver (580, CUDA 13.0) cannot load.
# See DEVELOPERS.md. Prints the NVCC path to export; build.rs also finds .toolchain by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
TC="${LORAFUSE_TOOLCHAIN:-$PWD/.toolchain}"
NVCC="$TC/nvidia/cu13/bin/nvcc"
WANT="release 13.0"
if [ -x "$NVCC" ] && "$NVCC" --version | grep -q "$WANT"; then
  echo "nvcc already installed: $NVCC"
else
  PY="${PYTHON:-python3}"
  command -v "$PY" >/dev/null || { echo "install-nvcc.sh: $PY not found; it is needed to fetch the CUDA wheels from PyPI" >&2; exit 2; }
  rm -rf "$TC"
  "$PY" -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore --target "$TC" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
  "$NVCC" --version | grep -q "$WANT" || { echo "install-nvcc.sh: $NVCC is not CUDA 13.0" >&2; exit 1; }
fi
echo "export NVCC=$NVCC"
