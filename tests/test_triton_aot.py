"""The Triton kernels compile for a Hopper GPU (sm_90) on this GPU-less machine, as torch.compile would launch them.

Why: under torch.compile (Inductor, torch 2.11) Python-float kernel arguments arrive typed fp64, which once broke
both the attention kernels (a loop-carried fp32/fp64 mismatch) and the L1 loss (sqrt_rn refuses fp64) on the GPU
while every CPU interpreter test passed. Compiling ahead of time for sm_90 with fp64 scalars catches that class of
error here, and the shipped block-size table is checked to compile without register spills.

It runs in a subprocess: this test session has TRITON_INTERPRET=1 set (tests/conftest.py), and the interpreter
builds no GPU code.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "aot_compile_attention.py"


def test_kernels_compile_for_sm90_with_inductor_scalars():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, str(SCRIPT), "--only-table", "--fp64-scalars", "--with-l1"], env=env,
                       capture_output=True, text=True, timeout=600)
    if "No module named 'triton.backends.nvidia'" in r.stderr:
        pytest.skip("this Triton has no NVIDIA backend")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "l1_loss: ok" in r.stdout and "rejected" not in r.stdout
