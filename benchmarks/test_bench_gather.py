"""The context encoder's token gather (kernel 1: `indexed_gather_add` as models/vit.py calls it, token rows b * N + n
plus position rows n, unique-rows backward), forward and forward + backward: the fast backend vs the eager plain
definition vs torch.compile of it.

Rows (group "gather", parametrized by mode = fwd | fwdbwd and variant):
- `cuda` on a GPU / `cpu` on the CPU: `vjepa_fast.ops.indexed_gather_add` with that backend forced (the C++/CUDA op);
- `reference` (the baseline): `indexed_gather_add_reference`, index_select + add, eager;
- `compiled`: `torch.compile` of the reference (GPU only: on the shared CPU machine compiling costs more than the
  whole file's time budget, and inductor's CPU code says nothing about the GPU).

GPU shape: a ViT-L/16 step on one card, tokens [24, 1568, 1024] bf16 (the patch embedding's output under autocast),
pos [1568, 1024] fp32 (the model's fixed sin-cos buffer, kept in fp32), rows = the context rows of both mask
configurations of a real multi-block mask batch (MultiBlockMasker((8, 14, 14)) + pack_masks, ~24k rows).
CPU shape: tokens [4, 144, 96] fp32, rows from MultiBlockMasker((4, 6, 6)) (~360 rows).

Bytes counted are the op's useful traffic, the same for every variant (R rows, width D, B*N tokens):
forward = R*D*(token read + pos read + output write) + 8*R (int64 rows); backward = R*D (gradient read) +
B*N*D (token gradient written); fwdbwd = both. GB/s is that over the median time per call; `roofline` divides it by
this machine's measured copy bandwidth (the session `roofline` fixture, benchmarks/roofline.py). pos rows are shared
by the B samples and mostly hit in cache, so the fraction can come out a little optimistic.

Timing: each timed round runs CALLS calls and synchronises after the last one (pytest-benchmark divides by the
iterations, so the median is per call). One synchronise per call would add the launch-and-wait latency of an empty
queue to a ~70 us kernel; back-to-back calls are how the op runs in a training step. On a GPU the calls rotate over
COPIES copies of the tokens and of the incoming gradient (3 x 77 MB of tokens, far beyond the 50 MB L2 of an H100),
so every call reads from memory, not from L2.

    PYTHONPATH=. pytest benchmarks/test_bench_gather.py --benchmark-only
"""
from __future__ import annotations

import itertools

import pytest
import torch

from vjepa_fast.masks import MultiBlockMasker, pack_masks  # noqa: E402
from vjepa_fast.ops import gather as G  # noqa: E402
from forced_backends import forced_backends  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
FAST = "cuda" if CUDA else "cpu"  # the op's fast backend for this device
MODES = ["fwd", "fwdbwd"]
if CUDA:
    BATCH, GRID, DIM, DTYPE, POS_DTYPE = 24, (8, 14, 14), 1024, torch.bfloat16, torch.float32
    VARIANTS = [FAST, "reference", "compiled"]
    COPIES, CALLS = 3, 10
    WARMUP, ROUNDS = 3, 30
else:
    BATCH, GRID, DIM, DTYPE, POS_DTYPE = 4, (4, 6, 6), 96, torch.float32, torch.float32
    VARIANTS = [FAST, "reference"]
    COPIES, CALLS = 1, 10
    WARMUP, ROUNDS = 2, 10
NUM_TOKENS = GRID[0] * GRID[1] * GRID[2]
# Checked against an fp64 reference: the fast path rounds the result once (fp32 add), the reference rounds a bf16
# result and, with bf16 tokens, pos too (|pos| < ~5 for randn here), so half an ulp of each is allowed.
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[DTYPE]


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


@pytest.fixture(scope="module")
def inputs():
    """rows [R] int64, pos [N, D], COPIES token tensors [B, N, D] and COPIES incoming gradients [R, D]."""
    masker = MultiBlockMasker(GRID, seed=0)
    packed = pack_masks(masker.sample(0, list(range(BATCH))), masker.num_tokens)
    rows = packed.ctx_rows.to(DEVICE)
    torch.manual_seed(0)
    pos = torch.randn(NUM_TOKENS, DIM, device=DEVICE, dtype=POS_DTYPE)
    tokens = [torch.randn(BATCH, NUM_TOKENS, DIM, device=DEVICE, dtype=DTYPE) for _ in range(COPIES)]
    grads = [torch.randn(rows.numel(), DIM, device=DEVICE, dtype=DTYPE) for _ in range(COPIES)]
    yield rows, pos, tokens, grads
    del tokens, grads
    if CUDA:
        torch.cuda.empty_cache()


def _context_gather(tokens: torch.Tensor, pos, rows: torch.Tensor) -> torch.Tensor:
    B, N, D = tokens.shape  # as models/vit.py calls it; default check_range
    return G.indexed_gather_add(tokens.reshape(B * N, D), rows, pos, rows % N, unique_rows=True)


def _context_gather_reference(tokens: torch.Tensor, pos, rows: torch.Tensor) -> torch.Tensor:
    B, N, D = tokens.shape
    return G.indexed_gather_add_reference(tokens.reshape(B * N, D), rows, pos, None if pos is None else rows % N)


def _op(variant: str):
    if variant == "compiled":
        return torch.compile(_context_gather_reference, dynamic=False)
    if variant == "reference":
        return _context_gather_reference
    return _context_gather  # with the backend forced by the test


def _timed_target(call, calls: int):
    """A benchmark target: call(i) for i = 0, 1, ...; synchronises after every `calls`-th call (a round's last)."""
    counter = itertools.count()

    def target():
        i = next(counter)
        call(i)
        if i % calls == calls - 1:
            _sync()  # never time an unsynchronised launch: each round ends here

    return target


def _bytes(mode: str, rows: torch.Tensor, pos: torch.Tensor, tokens: torch.Tensor) -> int:
    R, es = rows.numel(), tokens.element_size()  # the output and gradients have the tokens' dtype
    fwd = R * DIM * (es + pos.element_size() + es) + R * rows.element_size()
    bwd = R * DIM * es + BATCH * NUM_TOKENS * DIM * es
    return fwd if mode == "fwd" else fwd + bwd


@pytest.mark.benchmark(group="gather")
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", MODES)
def test_bench_context_gather(benchmark, roofline, inputs, mode, variant):
    rows, pos, tokens, grads = inputs
    op = _op(variant)
    with forced_backends({G.OP: FAST} if variant == FAST else None):
        backend = G.GATHER.choose((DEVICE, DTYPE)).name if variant == FAST else variant
        # Leaves that require grad share the tokens' storage (fwdbwd); the forward rows read plain tensors.
        leaves = [t.detach().requires_grad_(True) for t in tokens] if mode == "fwdbwd" else tokens

        # One checked call first: a fast wrong answer is no result (it also compiles the compiled variant).
        out = op(leaves[0], pos, rows)
        x64 = leaves[0].detach().double()
        expected = _context_gather_reference(x64, pos.double(), rows)
        torch.testing.assert_close(out.detach().double(), expected, rtol=TOL, atol=TOL)
        if mode == "fwdbwd":
            (grad,) = torch.autograd.grad(out, leaves[0], grads[0])
            x64.requires_grad_(True)
            (grad_ref,) = torch.autograd.grad(_context_gather_reference(x64, None, rows), x64, grads[0].double())
            torch.testing.assert_close(grad.double(), grad_ref, rtol=TOL, atol=TOL)
        del out

        if mode == "fwd":
            def call(i):
                op(leaves[i % COPIES], pos, rows)
        else:
            def call(i):
                x = leaves[i % COPIES]
                torch.autograd.grad(op(x, pos, rows), x, grads[i % COPIES])

        _sync()
        benchmark.pedantic(_timed_target(call, CALLS), warmup_rounds=WARMUP, rounds=ROUNDS, iterations=CALLS)
        _sync()  # --benchmark-disable runs one call and no round end

    info = dict(
        variant=variant, mode=mode, backend=backend, device=torch.cuda.get_device_name() if CUDA else "cpu",
        batch=BATCH, num_tokens=NUM_TOKENS, dim=DIM, rows=rows.numel(), dtype=str(DTYPE).removeprefix("torch."),
        pos_dtype=str(POS_DTYPE).removeprefix("torch."), copies=COPIES, calls_per_round=CALLS)
    if variant == "reference":
        info["baseline"] = True
    benchmark.extra_info.update(info)
    if benchmark.stats is None:  # --benchmark-disable: the body ran once, untimed; nothing to report
        return
    nbytes = _bytes(mode, rows, pos, tokens[0])
    gbps = nbytes / benchmark.stats.stats.median / 1e9
    copy = roofline["copy_gb_per_s"]
    benchmark.extra_info.update(bytes=nbytes, gb_per_s=round(gbps, 2), copy_gb_per_s=copy,
                                roofline=round(gbps / copy, 3) if copy else None)
