#!/usr/bin/env bash
# One-step environment for vjepa-fast: a virtualenv in .venv with torch, the package (editable) and its test tools,
# and the C++/CUDA extension built. CUDA kernels are compiled whenever torch has CUDA and nvcc is found (no GPU
# needed to compile). Re-running is cheap: installed pieces are kept.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1}   # a CUDA 13.0 build; torch==2.13.0 is a small CPU-only build

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "$TORCH_SPEC"

# Toolchain for the CUDA sources: nvcc from the toolkit, and the CUDA headers that torch's headers include.
if [ -z "${CUDA_HOME:-}" ]; then
  for d in /usr/local/cuda-13.0 /usr/local/cuda; do
    if [ -x "$d/bin/nvcc" ]; then export CUDA_HOME=$d; break; fi
  done
fi
SITE=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ -d "$SITE/nvidia/cu13/include" ]; then
  export CPATH="$SITE/nvidia/cu13/include${CPATH:+:$CPATH}"
fi
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0"}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

python -m pip install -q -e ".[test]" --no-build-isolation
python -c "import vjepa_fast._ext as e; print('vjepa_fast extension:', e.describe())"
