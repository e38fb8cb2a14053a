#!/usr/bin/env bash
# The GPU check: build, tune, test and benchmark on one GPU machine in one go, and write a markdown summary.
#
#     bash benchmarks/gpu_check.sh            # results in $OUT (default ./gpu_check_out)
#
# Made for a machine with NO network: torch, triton, pytest, pytest-benchmark, einops, pyyaml, tqdm and numpy must
# already be installed (PyAV may be missing: the tests and benchmarks that need it skip). Nothing is downloaded and
# no GPU setting (clocks, persistence, MIG, power) is touched; nvidia-smi is only queried.
#
# Phases in priority order, each under its own timeout and all under one overall budget (GPU_CHECK_BUDGET seconds,
# default 500), so one hang cannot eat the rest and what matters most runs first:
#   install (the C++/CUDA extension, offline; in the background while the Triton-only phases run)
#   -> nvidia-smi -> rooflines -> step anatomy (benchmarks/step_anatomy.py, "before") -> tune the attention block
#   sizes (benchmarks/tune_attention.py; every later phase runs with that table) -> attention benchmark
#   -> GPU tests -> compiled attention tests -> train-step benchmark
#   -> a short real training run (torchrun, the default config) -> the other kernel benchmarks
#   -> the step anatomy again ("after") -> merge into bench.json and render summary.md.
# GPU_CHECK_PHASES="gpu_tests bench_attention ..." runs only the named phases (install always runs when a later phase
# needs the extension); GPU_CHECK_BENCH_K adds a pytest -k filter to the attention benchmark. The phase "quality"
# (the representation-quality benchmark) runs only when named: GPU_CHECK_PHASES=quality GPU_CHECK_BUDGET=570.
# $OUT ends up with a handful of files (summary.md, phases.txt, bench.json, flash_varlen_tuned.json, roofline.json,
# anatomy_{before,after}.{json,md}, gpu_tests.xml, details.tar.gz with every log and raw benchmark file), small
# enough to copy back from a lent machine.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu_check_out}
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")  # logs and raw files; packed into $OUT at the end
LOGS=$WORK/logs
RAW=$WORK/raw
mkdir -p "$LOGS" "$RAW"

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3 python; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c "import torch" >/dev/null 2>&1; then PY=$c; break; fi
  done
fi
PY=${PY:-python3}
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-500}
RESERVE=25  # seconds kept for merging, rendering and packing at the end

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # importable even if the install phase fails
export PYTHONUNBUFFERED=1
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
# $LOGS/NAME.log, record "NAME verdict (seconds)" in $STATUS; on failure print the log's tail.
run_phase() {
  local name=$1 max=$2; shift 2
  local now left limit t0 rc
  if [ -n "${GPU_CHECK_PHASES:-}" ] && [ "$name" != install ] && [ "$name" != build_inplace ] \
     && [[ " $GPU_CHECK_PHASES " != *" $name "* ]]; then
    return 0
  fi
  now=$(date +%s)
  left=$((START + BUDGET - RESERVE - now))
  limit=$(( max < left ? max : left ))
  if [ "$limit" -lt 10 ]; then
    echo "== $name: SKIPPED (budget spent)" | tee -a "$STATUS"
    return 0
  fi
  echo "== $name (limit ${limit}s)"
  t0=$(date +%s)
  timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  local dt=$(( $(date +%s) - t0 ))
  local verdict=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then verdict="TIMEOUT"
  elif [ "$rc" -eq 5 ] && [[ "$name" == bench_* || "$name" == *tests ]]; then verdict="no tests selected"
  elif [ "$rc" -ne 0 ]; then verdict="FAILED rc=$rc"; fi
  echo "== $name: $verdict (${dt}s)" | tee -a "$STATUS"
  if [[ "$verdict" == TIMEOUT || "$verdict" == FAILED* ]]; then tail -n 25 "$LOGS/$name.log"; fi
  return 0
}

# ---- install: the extension, offline, against the torch already present; in the background -------------------
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
install_ext() {
  MAX_JOBS=${MAX_JOBS:-12} run_phase install 240 "$PY" -m pip install -e . --no-build-isolation --no-deps
  if ! ext_status; then  # e.g. a setuptools too old for editable installs: build the extension in place instead
    MAX_JOBS=${MAX_JOBS:-12} run_phase build_inplace 240 "$PY" setup.py build_ext --inplace
    ext_status
  fi
}
INSTALL_PID=
if [ "${GPU_CHECK_PHASES:-}" != quality ]; then  # the quality benchmark alone runs on the torch fallbacks: no build
  install_ext > "$LOGS/install_driver.log" 2>&1 &  # competing with its data loaders for the CPU
  INSTALL_PID=$!
fi

# ---- the machine -------------------------------------------------------------------------------------------------
nvidia-smi > "$LOGS/nvidia-smi.log" 2>&1 || echo "nvidia-smi failed" >> "$LOGS/nvidia-smi.log"
head -n 20 "$LOGS/nvidia-smi.log"
"$PY" -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)" \
  2>&1 | tee "$LOGS/versions.log"

run_phase roofline 60 "$PY" benchmarks/roofline.py --json "$OUT/roofline.json"
if [ -f "$OUT/roofline.json" ]; then
  cat "$OUT/roofline.json"; echo
  export VJEPA_FAST_ROOFLINE_JSON=$OUT/roofline.json  # the benchmark runs reuse it instead of measuring again
fi

# ---- where the step's time goes, before anything below changes it (the extension may still be building: the
# anatomy then runs the EMA through torch's foreach kernels) -------------------------------------------------------
ANATOMY_ARGS=(--config configs/vitl16.yaml --out "$OUT" train.batch_size=24 train.compile=true
              train.activation_checkpointing=false)
run_phase anatomy_before 150 "$PY" benchmarks/step_anatomy.py --tag before "${ANATOMY_ARGS[@]}"

# ---- attention: tune the block sizes on this card, then benchmark with them ----------------------------------------
run_phase tune_attention 170 "$PY" benchmarks/tune_attention.py --out "$OUT/flash_varlen_tuned.json" --budget 130
grep -E "best|no candidate|skipped|trials" "$LOGS/tune_attention.log"
if [ -s "$OUT/flash_varlen_tuned.json" ]; then
  export VJEPA_FAST_FLASH_TUNING=$OUT/flash_varlen_tuned.json
fi

bench() {  # bench NAME MAX_SECONDS PYTEST_ARGS...
  local name=$1 max=$2; shift 2
  run_phase "bench_$name" "$max" "$PY" -m pytest "$@" --benchmark-only -q -p no:cacheprovider \
    --benchmark-json="$RAW/bench_$name.json"
}
bench attention 120 benchmarks/test_bench_attention.py ${GPU_CHECK_BENCH_K:+-k "$GPU_CHECK_BENCH_K"}

# ---- correctness on the GPU (needs the extension) ----------------------------------------------------------------
if [ -n "$INSTALL_PID" ]; then
  wait "$INSTALL_PID"
  cat "$LOGS/install_driver.log"
  cat "$LOGS/extension.log"
fi
run_phase gpu_tests 110 "$PY" -m pytest tests -m gpu -q -p no:cacheprovider --continue-on-collection-errors \
  --junitxml="$OUT/gpu_tests.xml"
grep -E "passed|failed|error|no tests ran" "$LOGS/gpu_tests.log" | tail -n 3
# The interpreter's CPU tests of the Triton kernels, here on compiled kernels (ragged batches, fp32/fp16, compile).
run_phase attention_tests 70 "$PY" -m pytest tests/test_attention.py tests/test_l1_loss.py -m "not gpu" -q \
  -p no:cacheprovider
grep -E "passed|failed|error|no tests ran" "$LOGS/attention_tests.log" | tail -n 3

# ---- the step, a real run, the other kernels ---------------------------------------------------------------------
bench train_step 120 benchmarks/test_bench_train_step.py -k "not compiled and not truncated"
run_phase train_run 90 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 vjepa_fast/train.py \
  run_dir="$WORK/run" train.steps=40 train.log_every=10 train.progress=false
grep -E "step|loss|done|Error" "$LOGS/train_run.log" | tail -n 6
for name in ema gather l1_loss; do
  bench "$name" 50 "benchmarks/test_bench_$name.py"
done
bench train_step_compiled 180 benchmarks/test_bench_train_step.py -k "compiled or truncated"
bench data 40 benchmarks/test_bench_data.py
bench collapse 180 benchmarks/test_bench_collapse.py  # effective ranks and SIGReg beside a ViT-L/16 step
# the same anatomy again, now with the extension and the block sizes tuned above
run_phase anatomy_after 150 "$PY" benchmarks/step_anatomy.py --tag after "${ANATOMY_ARGS[@]}"
# the dense target pass through SDPA's cuDNN kernel instead (measured faster alone; not yet in the step)
run_phase anatomy_dense_cudnn 150 "$PY" benchmarks/step_anatomy.py --tag dense_cudnn "${ANATOMY_ARGS[@]}" \
  backends.dense_attention=sdpa_cudnn

# ---- representation quality: only when named (GPU_CHECK_PHASES="quality"), as it needs a device session of its own.
# bench_quality's GPU preset, shortened by GPU_CHECK_QUALITY_ARGS to fit one call (docs/eval.md); its table, JSON and
# chart are copied to $OUT.
if [[ " ${GPU_CHECK_PHASES:-} " == *" quality "* ]]; then
  read -r -a QUALITY_ARGS <<< "${GPU_CHECK_QUALITY_ARGS:---minutes 1 --probe-epochs 10}"
  run_phase quality 560 "$PY" -m vjepa_fast.bench_quality --preset gpu --out "$WORK/quality" "${QUALITY_ARGS[@]}"
  for f in quality.md quality.json quality.png; do cp "$WORK/quality/$f" "$OUT/" 2>/dev/null; done
  grep -E "wall time|Counted" "$LOGS/quality.log" | tail -n 3
fi

# ---- merge, render, pack -----------------------------------------------------------------------------------------
shopt -s nullglob
jsons=("$RAW"/bench_*.json)
if [ ${#jsons[@]} -gt 0 ]; then
  "$PY" benchmarks/render_summary.py "${jsons[@]}" --merged-json "$OUT/bench.json" --out "$OUT/summary.md" \
    > "$LOGS/render.log" 2>&1 || echo "render failed: see $LOGS/render.log"
else
  echo "no kernel or step benchmark produced results" | tee "$OUT/summary.md"
fi
{
  echo
  echo "## Phases"
  echo
  sed 's/^== /- /' "$STATUS"
  echo
  echo "Versions: $(cat "$LOGS/versions.log")"
  echo
  echo "Extension: $(tail -n 1 "$LOGS/extension.log" 2>/dev/null)"
  for tag in before after dense_cudnn; do
    if [ -f "$OUT/anatomy_$tag.md" ]; then echo; echo "## Step anatomy ($tag)"; echo; sed 1d "$OUT/anatomy_$tag.md"; fi
  done
  if [ -f "$OUT/quality.md" ]; then echo; echo "## Representation quality (bench_quality --preset gpu)"; echo
    cat "$OUT/quality.md"; fi
  if [ -f "$LOGS/tune_attention.log" ]; then
    echo
    echo "## Attention block-size tuning (benchmarks/tune_attention.py)"
    echo
    echo '```'
    grep -E "best|no candidate|skipped|trials" "$LOGS/tune_attention.log"
    echo '```'
  fi
} >> "$OUT/summary.md"
cp -r "$WORK/run/metrics.jsonl" "$RAW/train_run_metrics.jsonl" 2>/dev/null
tar czf "$OUT/details.tar.gz" -C "$WORK" logs raw 2>/dev/null || echo "packing the logs failed"
echo "== total $(( $(date +%s) - START ))s; summary in $OUT/summary.md"
cat "$OUT/summary.md"
