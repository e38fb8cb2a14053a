"""Measured rooflines of the machine the benchmarks run on: copy bandwidth (GB/s) and bf16 matmul rate (TFLOP/s).

Benchmarks divide their achieved GB/s or TFLOP/s by these to report a fraction of what this very card can do,
rather than of a datasheet number. Both are medians of timed runs after a warm-up:
- copy: a device-to-device copy of a buffer far larger than any cache (1 GiB on a GPU, 64 MiB on the CPU), counted
  as read + write bytes;
- matmul: an 8192 x 8192 x 8192 bf16 matmul (2 * 8192^3 FLOPs) on a GPU; on the CPU no matmul is timed (None): a
  CPU bf16 matmul is slow and no CPU figure here is judged against it.

    python benchmarks/roofline.py [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable, Optional

import torch

GPU_COPY_BYTES = 1 << 30
CPU_COPY_BYTES = 1 << 26
MATMUL_N = 8192


def _time(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int) -> float:
    """Median seconds of `fn` (CUDA events on a GPU, synchronised; perf_counter on the CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth_gbps(device: torch.device, nbytes: Optional[int] = None, repeats: int = 10) -> float:
    """Device-to-device copy bandwidth in GB/s (1e9 bytes), read + write counted."""
    device = torch.device(device)
    n = nbytes or (GPU_COPY_BYTES if device.type == "cuda" else CPU_COPY_BYTES)
    if n < 1:
        raise ValueError(f"copy_bandwidth_gbps: nbytes must be positive, got {n}")
    src = torch.empty(n, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    seconds = _time(lambda: dst.copy_(src), device, repeats, warmup=3)
    return 2 * n / seconds / 1e9


def matmul_tflops(device: torch.device, n: int = MATMUL_N, repeats: int = 10) -> Optional[float]:
    """bf16 n x n x n matmul rate in TFLOP/s on a GPU; None on the CPU (not measured there)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
    out = torch.empty(n, n, device=device, dtype=torch.bfloat16)
    seconds = _time(lambda: torch.mm(a, b, out=out), device, repeats, warmup=3)
    return 2 * n ** 3 / seconds / 1e12


def device_name(device: torch.device) -> str:
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def measure(device: Optional[torch.device] = None) -> dict:
    """{'device', 'copy_gb_per_s', 'matmul_tflops', 'matmul_shape'} for `device` (default: CUDA if present)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return {
        "device": device_name(device),
        "copy_gb_per_s": round(copy_bandwidth_gbps(device), 1),
        "matmul_tflops": _round(matmul_tflops(device)),
        "matmul_shape": f"{MATMUL_N}^3 bf16" if device.type == "cuda" else None,
    }


def _round(v: Optional[float]) -> Optional[float]:
    return None if v is None else round(v, 1)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    result = measure()
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
