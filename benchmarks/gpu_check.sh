#!/usr/bin/env bash
# The GPU check: build, run the GPU tests and every benchmark on one GPU machine, write a markdown summary.
#
#     bash benchmarks/gpu_check.sh            # results in $OUT (default ./gpu_check_out)
#
# Made for a machine with NO network: torch, triton, pytest, pytest-benchmark, einops, pyyaml, tqdm and numpy must
# already be installed (PyAV may be missing: the tests and benchmarks that need it skip). Nothing is downloaded and
# no GPU setting (clocks, persistence, MIG, power) is touched; nvidia-smi is only queried.
#
# Phases, each under its own timeout and all under one overall budget (GPU_CHECK_BUDGET seconds, default 500, about
# 8 minutes), so one hang cannot eat the rest: install (the C++/CUDA extension, offline) -> nvidia-smi -> rooflines ->
# GPU tests (pytest -m gpu) -> benchmarks, one pytest run per file (a killed run loses only its own rows) -> merge
# into $OUT/bench.json and render $OUT/summary.md. Every phase's log is in $OUT/logs/.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu_check_out}
LOGS=$OUT/logs
mkdir -p "$LOGS"

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if command -v python >/dev/null 2>&1; then PY=python; else PY=python3; fi
fi
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-500}
RESERVE=20  # seconds kept for merging and rendering at the end

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # importable even if the install phase fails
export PYTHONUNBUFFERED=1
export MAX_JOBS=${MAX_JOBS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1  # offline: never reach for an index
if [ -z "${CUDA_HOME:-}" ]; then
  for d in /usr/local/cuda /usr/local/cuda-*; do
    if [ -x "$d/bin/nvcc" ]; then export CUDA_HOME=$d; break; fi
  done
fi

STATUS=$OUT/phases.txt
: > "$STATUS"

# run_phase NAME MAX_SECONDS CMD...: run CMD with a timeout of min(MAX_SECONDS, what the budget has left), log to
# $LOGS/NAME.log, record "NAME rc seconds" in $STATUS; on failure print the log's tail.
run_phase() {
  local name=$1 max=$2; shift 2
  local now left limit t0 rc
  now=$(date +%s)
  left=$((START + BUDGET - RESERVE - now))
  limit=$(( max < left ? max : left ))
  if [ "$limit" -lt 10 ]; then
    echo "== $name: SKIPPED (budget spent)" | tee -a "$STATUS"
    return 0
  fi
  echo "== $name (limit ${limit}s)"
  t0=$(date +%s)
  timeout --signal=TERM --kill-after=15 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  local dt=$(( $(date +%s) - t0 ))
  local verdict=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then verdict="TIMEOUT"
  elif [ "$rc" -eq 5 ] && [[ "$name" == bench_* || "$name" == gpu_tests ]]; then verdict="no tests selected"
  elif [ "$rc" -ne 0 ]; then verdict="FAILED rc=$rc"; fi
  echo "== $name: $verdict (${dt}s)" | tee -a "$STATUS"
  if [[ "$verdict" == TIMEOUT || "$verdict" == FAILED* ]]; then tail -n 25 "$LOGS/$name.log"; fi
  return 0
}

# ---- install: the extension, offline, against the torch already present ----------------------------------------
ext_status() {
  "$PY" - > "$LOGS/extension.log" 2>&1 <<'EOF'
import torch
from vjepa_fast import _ext
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available())
ok = _ext.load()
print("extension loaded:", ok, "| CUDA kernels:", ok and _ext.has_cuda_kernels(), "| error:", _ext.load_error())
raise SystemExit(0 if ok else 1)
EOF
}
run_phase install 240 "$PY" -m pip install -e . --no-build-isolation --no-deps
if ! ext_status; then  # e.g. a setuptools too old for editable installs: build the extension in place instead
  run_phase build_inplace 240 "$PY" setup.py build_ext --inplace
  ext_status
fi
cat "$LOGS/extension.log"

# ---- the machine -------------------------------------------------------------------------------------------------
nvidia-smi > "$LOGS/nvidia-smi.log" 2>&1 || echo "nvidia-smi failed" >> "$LOGS/nvidia-smi.log"
head -n 20 "$LOGS/nvidia-smi.log"

run_phase roofline 60 "$PY" benchmarks/roofline.py --json "$OUT/roofline.json"
if [ -f "$OUT/roofline.json" ]; then
  cat "$OUT/roofline.json"
  export VJEPA_FAST_ROOFLINE_JSON=$OUT/roofline.json  # the benchmark runs reuse it instead of measuring again
fi

# ---- GPU tests ---------------------------------------------------------------------------------------------------
run_phase gpu_tests 120 "$PY" -m pytest tests -m gpu -q -p no:cacheprovider --continue-on-collection-errors \
  --junitxml="$OUT/gpu_tests.xml"
grep -E "passed|failed|error|no tests ran" "$LOGS/gpu_tests.log" | tail -n 3

# ---- benchmarks: one pytest run per file, the headline train step first, its compiled row last --------------------
bench() {  # bench NAME MAX_SECONDS PYTEST_ARGS...
  local name=$1 max=$2; shift 2
  run_phase "bench_$name" "$max" "$PY" -m pytest "$@" --benchmark-only -q -p no:cacheprovider \
    --benchmark-json="$OUT/bench_$name.json"
}
bench train_step 150 benchmarks/test_bench_train_step.py -k "not compiled"
for f in benchmarks/test_bench_*.py; do
  name=$(basename "$f" .py); name=${name#test_bench_}
  [ "$name" = train_step ] && continue
  bench "$name" 90 "$f"
done
bench train_step_compiled 150 benchmarks/test_bench_train_step.py -k compiled

# ---- merge and render --------------------------------------------------------------------------------------------
shopt -s nullglob
jsons=("$OUT"/bench_*.json)
if [ ${#jsons[@]} -gt 0 ]; then
  "$PY" benchmarks/render_summary.py "${jsons[@]}" --merged-json "$OUT/bench.json" --out "$OUT/summary.md" \
    > "$LOGS/render.log" 2>&1 || echo "render failed: see $LOGS/render.log"
else
  echo "no benchmark produced results" | tee "$OUT/summary.md"
fi
{
  echo
  echo "## Phases"
  echo
  sed 's/^== /- /' "$STATUS"
  echo
  echo "Extension: $(tail -n 1 "$LOGS/extension.log")"
} >> "$OUT/summary.md"
echo "== total $(( $(date +%s) - START ))s; summary in $OUT/summary.md"
cat "$OUT/summary.md"
