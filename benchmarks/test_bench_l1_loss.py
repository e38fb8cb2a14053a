"""Fused L1 target loss, forward + backward: Triton kernel vs the eager reference vs torch.compile of the reference.

On a GPU the shape is a ViT-L/16 step on one card: 24 clips x 1568 tokens of width 1024 from the target encoder
(h, bf16) and 48,000 predicted target rows (z, bf16; about two masks of ~1,000 targets per clip). On CPU a small
shape, and no Triton (the interpreter would time Python, not the kernel).

Bytes counted are the op's useful traffic, the same for every variant: z read, the gathered h rows read, dz written,
rows and weights read. GB/s is that over the median time; `roofline` divides it by this card's measured copy bandwidth.

    PYTHONPATH=. pytest benchmarks/test_bench_l1_loss.py --benchmark-only
"""
from __future__ import annotations


import pytest
import torch

from vjepa_fast.ops import l1_loss as L  # noqa: E402
from forced_backends import forced_backends  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
if CUDA:
    R, D, M, DTYPE = 48_000, 1024, 24 * 1568, torch.bfloat16
    VARIANTS = ["triton", "reference", "compiled"]
    WARMUP, ROUNDS = 5, 50
else:
    R, D, M, DTYPE = 2048, 96, 1024, torch.float32
    VARIANTS = ["reference", "compiled"]
    WARMUP, ROUNDS = 3, 20


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


@pytest.fixture(scope="module")
def copy_bandwidth() -> float:
    """Measured peak copy bandwidth in GB/s (read + write), the roofline for this memory-bound op."""
    n = (1 << 30) if CUDA else (1 << 26)
    src = torch.empty(n, dtype=torch.uint8, device=DEVICE).fill_(1)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    _sync()
    times = []
    for _ in range(10):
        if CUDA:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            import time
            t0 = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t0)
    return 2 * n / sorted(times)[len(times) // 2] / 1e9


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(R, D, generator=g).to(DEVICE, DTYPE).requires_grad_(True)
    h = (torch.randn(M, D, generator=g) * 2.0 + 0.5).to(DEVICE, DTYPE)
    rows = torch.randint(0, M, (R,), generator=g).to(DEVICE)
    w = torch.full((R,), 1.0 / (R * D)).to(DEVICE)
    return z, h, rows, w


def _variant(name: str):
    if name == "triton":  # the public op, with its triton backend forced around the row (test_bench_l1_target_loss)
        return lambda z, h, rows, w: L.l1_target_loss(z, h, rows, w, check_range=False)
    if name == "compiled":
        return torch.compile(L.l1_target_loss_reference)
    return L.l1_target_loss_reference


@pytest.mark.parametrize("variant", VARIANTS)
def test_bench_l1_target_loss(benchmark, inputs, copy_bandwidth, variant):
    z, h, rows, w = inputs
    fn = _variant(variant)

    def step():
        z.grad = None
        loss = fn(z, h, rows, w)
        loss.backward()
        _sync()  # never time an unsynchronised launch
        return loss

    with forced_backends({L.OP: "triton"} if variant == "triton" else None):
        loss = step()  # compiles the compiled variant outside the timed rounds
        expected = L.l1_target_loss_reference(z.detach(), h, rows, w)
        assert torch.allclose(loss.detach(), expected, rtol=1e-3), (float(loss), float(expected))

        benchmark.pedantic(step, warmup_rounds=WARMUP, rounds=ROUNDS, iterations=1)
    if benchmark.stats is None:  # --benchmark-disable: the body ran once, untimed; nothing to report
        return
    median = benchmark.stats.stats.median
    nbytes = R * D * (2 * z.element_size() + h.element_size()) + R * (rows.element_size() + w.element_size())
    gbps = nbytes / median / 1e9
    benchmark.extra_info.update(
        variant=variant, device=torch.cuda.get_device_name() if CUDA else "cpu", rows=R, dim=D, target_rows=M,
        dtype=str(DTYPE).removeprefix("torch."), bytes=nbytes, gb_per_s=round(gbps, 2),
        copy_gb_per_s=round(copy_bandwidth, 1), roofline=round(gbps / copy_bandwidth, 3))
