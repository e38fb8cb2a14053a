#!/usr/bin/env bash
# One-step environment for vjepa-fast: a virtualenv in .venv with torch, the package (editable) and its test tools,
# and the C++ extension built; its CUDA kernels too when this machine has an NVIDIA GPU.
#
#     bash scripts/setup.sh
#
# One line per stage and the total time; pip's and the compiler's output go to .venv/setup.log (its tail is printed
# when a stage fails). Re-running is cheap: the venv and torch are kept, and the package is reinstalled (and the
# extension rebuilt) only when csrc/, setup.py, pyproject.toml, torch or the build mode changed since the last
# successful run (a hash in .venv/vjepa_fast_build.stamp).
#
# Switches (environment):
#   VJEPA_FAST_NO_CUDA=0|1  compile the CUDA kernels or not; default: 1 on a machine with no NVIDIA GPU (no
#                           /dev/nvidia0, no working nvidia-smi), 0 with one. VJEPA_FAST_NO_CUDA=0 on a CPU machine
#                           still compiles them (nvcc needs no GPU), which takes minutes.
#   TORCH_SPEC              what pip installs for torch when the venv has none (default torch==2.14.1; see README)
#   TORCH_NEED_MB           free disk (MB) required before installing it (default 7000)
#   PYTHON                  the interpreter that creates the venv (default python3)
#   TORCH_CUDA_ARCH_LIST, CUDA_HOME, MAX_JOBS  passed on to setup.py (docs/kernels.md)
set -euo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS

PY=${PYTHON:-python3}
# torch 2.14.1 (a CUDA 13.0 build) on every machine: it brings the Triton whose interpreter runs the kernel tests on a
# CPU, its headers let the CUDA sources compile anywhere, and the default run's recorded losses
# (tests/data/default_run_losses.json) come from it. torch==2.13.0 is a CPU-only build without Triton.
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1}
TORCH_NEED_MB=${TORCH_NEED_MB:-7000}  # disk needed to install it (5.6 GB in the venv, plus pip's unpacking)
LOG=.venv/setup.log
STAMP=.venv/vjepa_fast_build.stamp

say() { echo "setup: $*"; }
elapsed() { echo "$((SECONDS - ${1:-$START}))s"; }
# logged CMD...: run CMD with its output appended to $LOG; on failure print the log's tail and stop.
logged() {
  if ! "$@" >>"$LOG" 2>&1; then
    say "FAILED: $* (last lines of $LOG below)" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
}

t=$SECONDS
if [ -x .venv/bin/python ]; then
  : >>"$LOG"
  say "virtualenv .venv: kept ($(.venv/bin/python --version 2>&1))"
else
  "$PY" -m venv .venv
  : >"$LOG"
  logged .venv/bin/python -m pip install --upgrade pip
  say "virtualenv .venv: created with $("$PY" --version 2>&1), pip upgraded ($(elapsed "$t"))"
fi
. .venv/bin/activate
echo "=== setup.sh $(date -u '+%Y-%m-%d %H:%M:%S UTC')" >>"$LOG"

t=$SECONDS
if TORCH_VERSION=$(python -c "import torch; print(torch.__version__)" 2>/dev/null); then
  say "torch $TORCH_VERSION: kept"
else
  # torch 2.14.1 with its CUDA libraries takes about 5.6 GB in the venv: stop with one clear line where the disk
  # cannot hold it, instead of pip failing half-way with "No space left on device".
  FREE_MB=$(df -Pm .venv | awk 'NR == 2 {print $4}')
  if [ "${FREE_MB:-0}" -lt "$TORCH_NEED_MB" ]; then
    say "FAILED: $FREE_MB MB free on the disk of .venv; installing $TORCH_SPEC needs about $TORCH_NEED_MB MB" >&2
    exit 1
  fi
  logged python -m pip install "$TORCH_SPEC"
  TORCH_VERSION=$(python -c "import torch; print(torch.__version__)" 2>/dev/null)
  say "torch $TORCH_VERSION: installed from $TORCH_SPEC ($(elapsed "$t"))"
fi

# A GPU is what makes the CUDA kernels useful; without one they would only cost minutes of nvcc.
if [ -e /dev/nvidia0 ] || { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }; then
  export VJEPA_FAST_NO_CUDA=${VJEPA_FAST_NO_CUDA:-0}
  WHY="NVIDIA GPU found"
else
  export VJEPA_FAST_NO_CUDA=${VJEPA_FAST_NO_CUDA:-1}
  WHY="no NVIDIA GPU (no /dev/nvidia0, no working nvidia-smi)"
fi
case "$VJEPA_FAST_NO_CUDA" in
  1|true|yes|on) MODE="CPU kernels only" ;;
  *) MODE="CPU + CUDA kernels (archs ${TORCH_CUDA_ARCH_LIST:-setup.py default})" ;;
esac
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

# Everything the install depends on; a change in any of it reinstalls the package and rebuilds the extension.
HASH=$( { cat setup.py pyproject.toml csrc/*; echo "torch=$TORCH_VERSION mode=$MODE"; } | sha256sum | cut -d' ' -f1)
# What the installed extension holds; fails when it does not import (never built, or built against another torch).
BUILT_PY='import vjepa_fast._ext as e; print(e.describe()) if e.load() else exit(1)'
t=$SECONDS
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] && BUILT=$(python -W ignore -c "$BUILT_PY" 2>/dev/null); then
  say "package and extension: up to date, nothing rebuilt ($MODE; $WHY)"
else
  say "package and extension: building $MODE ($WHY; VJEPA_FAST_NO_CUDA=$VJEPA_FAST_NO_CUDA) ..."
  rm -f "$STAMP"
  logged python -m pip install -e ".[test]" --no-build-isolation
  if ! BUILT=$(python -W ignore -c "$BUILT_PY" 2>>"$LOG"); then
    say "FAILED: the extension does not import (see $LOG)" >&2
    exit 1
  fi
  echo "$HASH" >"$STAMP"
  say "package and extension: built ($(elapsed "$t"))"
fi

say "extension: $BUILT"
say "done in $(elapsed) (log: $LOG)"
