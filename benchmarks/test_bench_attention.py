"""Variable-length attention, forward / backward / forward + backward, every backend this machine has.

GPU shapes (bf16, 16 heads), as in a ViT-L/16 step on one card with 24 clips of 1568 tokens:
- `context`: the context encoder's packed batch, 24 clips x 2 masks = 48 sequences, half with lengths uniform in
  [392, 784] (short-range masks) and half in [112, 448] (long-range), head dim 64;
- `predictor`: the predictor's sequences, context + targets = 1568 tokens each (48 of them), head dim 24;
- `dense`: the target encoder, 24 clips x 1568 tokens, head dim 64 (uniform: SDPA is the default there).
Variants: `triton` (ours; `triton_deterministic` is its bitwise-repeatable backward), `torch_varlen`
(torch.nn.attention.varlen), `sdpa_padded` (our padded fallback op),
`flash_attn` / `xformers` when installed, and on the uniform shapes plain batched SDPA with the flash and cuDNN
kernels (`sdpa_flash`, `sdpa_cudnn`, via torch.nn.attention.sdpa_kernel).
On CPU: a tiny ragged batch and the backends that run there (sdpa_padded, reference); the Triton interpreter would
time Python, not the kernel.

Timing: pytest-benchmark rounds (each synchronised) give the wall-clock statistics; on a GPU the figure of record is
triton.testing.do_bench's median (CUDA events, warm-up, L2 flushed), stored in extra_info with the derived TFLOP/s.
FLOPs count useful work only (docs/architecture.md, performance model): forward 4 * sum(len^2) * H * Dh, backward 2 x forward, no recompute.
`roofline` divides by this card's measured bf16 matmul rate (benchmarks/roofline.py).

    PYTHONPATH=. pytest benchmarks/test_bench_attention.py --benchmark-only
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vjepa_fast.ops import attention as A  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention_candidates import CONTEXT_LENS, DENSE_LENS, PREDICTOR_LENS, _lens  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
MODES = ["fwd", "bwd", "fwdbwd"]


if CUDA:
    DTYPE, H = torch.bfloat16, 16
    SHAPES = {
        "context": (CONTEXT_LENS, 64, False),
        "predictor": (PREDICTOR_LENS, 24, True),
        "dense": (DENSE_LENS, 64, True),
    }
    VARLEN = ["triton", "triton_deterministic", "torch_varlen", "flash_attn", "xformers", "sdpa_padded"]
    DENSE_ONLY = ["sdpa_flash", "sdpa_cudnn"]
    ROUNDS, WARMUP = 20, 3
else:
    DTYPE, H = torch.float32, 2
    SHAPES = {"tiny": (_lens(6, 5, 40, 0) + [0], 24, False)}
    VARLEN = ["sdpa_padded", "reference"]
    DENSE_ONLY = []
    ROUNDS, WARMUP = 10, 2

CASES = [(shape, variant) for shape, (_, _, uniform) in SHAPES.items()
         for variant in VARLEN + (DENSE_ONLY if uniform else [])]


@pytest.fixture(scope="module")
def matmul_peak():
    """This card's measured bf16 matmul rate (TFLOP/s), the roofline for attention; None on the CPU."""
    if not CUDA:
        return None
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from roofline import matmul_tflops

    return matmul_tflops(DEVICE)


def _batch(shape: str):
    lens, Dh, _ = SHAPES[shape]
    g = torch.Generator().manual_seed(1)
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    T = int(cu[-1])
    qkv = torch.randn(T, 3, H, Dh, generator=g).to(DEVICE, DTYPE)
    dout = torch.randn(T, H, Dh, generator=g).to(DEVICE, DTYPE)
    return qkv, cu.to(DEVICE), max(lens), dout, lens


def _sdpa_dense(kernel):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[kernel]

    def run(qkv, cu, max_len):
        T, _, Hh, Dh = qkv.shape
        q, k, v = qkv.view(T // max_len, max_len, 3, Hh, Dh).permute(2, 0, 3, 1, 4).unbind(0)
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(T, Hh, Dh)
    return run


def _variant(name: str, qkv: torch.Tensor):
    """A callable (qkv, cu, max_len) -> out, or a pytest.skip with the reason the backend cannot run here."""
    if name.startswith("sdpa_") and name != "sdpa_padded":
        return _sdpa_dense(name.removeprefix("sdpa_"))
    deterministic = name.endswith("_deterministic")
    name = name.removesuffix("_deterministic")
    backend = A.VARLEN.backends[name]
    reason = backend.check(A.backend_key(qkv))
    if reason is not None:
        pytest.skip(f"{name}: {reason}")
    return lambda x, cu, m: backend.run(x, cu, m, deterministic)


def _timed(benchmark, fn):
    def step():
        out = fn()
        if CUDA:
            torch.cuda.synchronize()  # never time an unsynchronised launch
        return out

    benchmark.pedantic(step, warmup_rounds=WARMUP, rounds=ROUNDS, iterations=1)
    if benchmark.stats is None:  # --benchmark-disable: the body ran once, untimed; nothing to report
        return None
    if CUDA:
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median") / 1e3
    return benchmark.stats.stats.median


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,variant", CASES)
def test_bench_varlen_attention(benchmark, matmul_peak, shape, variant, mode):
    qkv, cu, max_len, dout, lens = _batch(shape)
    run = _variant(variant, qkv)
    x = qkv.detach().requires_grad_(True)
    try:
        out = run(x, cu, max_len)
    except RuntimeError as e:  # e.g. a cuDNN / flash SDPA kernel that refuses this head dim or card
        pytest.skip(f"{variant}: {e}")
    ref = A.varlen_attention_reference(qkv.float(), cu)
    tol = 2e-2 if DTYPE == torch.bfloat16 else 1e-4
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)  # a fast wrong answer is no result

    if mode == "fwd":
        def fn():
            with torch.no_grad():
                return run(qkv, cu, max_len)
    elif mode == "bwd":
        def fn():
            return torch.autograd.grad(out, x, dout, retain_graph=True)
    else:
        def fn():
            y = run(x, cu, max_len)
            return torch.autograd.grad(y, x, dout)

    seconds = _timed(benchmark, fn)
    if seconds is None:
        return
    Dh = qkv.shape[-1]
    fwd_flops = 4 * sum(n * n for n in lens) * H * Dh
    flops = fwd_flops * {"fwd": 1, "bwd": 2, "fwdbwd": 3}[mode]
    tflops = flops / seconds / 1e12
    benchmark.extra_info.update(
        variant=variant, shape=shape, mode=mode, device=torch.cuda.get_device_name() if CUDA else "cpu",
        dtype=str(DTYPE).removeprefix("torch."), heads=H, head_dim=Dh, sequences=len(lens), tokens=sum(lens),
        max_len=max_len, median_ms=round(seconds * 1e3, 4), tflops=round(tflops, 2), flops=flops,
        timer="triton.testing.do_bench median" if CUDA else "pytest-benchmark median",
        roofline=round(tflops / matmul_peak, 3) if matmul_peak else None)

