"""Host overhead per call of each public op: tiny CPU shapes, so the time is the Python around the kernel
(validation, backend choice, dispatch) more than the kernel itself.

Rows (group "op_overhead"): one call of the public entry point as the model makes it, with the automatic backend:
- attention (packed, 4 sequences of 8 tokens, 2 heads x 16), dense_attention (the same as uniform_len),
- gather (the predictor's layout gather, 64 rows of 32), l1_loss (32 rows of 32), ema (the tiny encoder's 52
  parameter tensors, the trainer's per-step update).

    PYTHONPATH=. pytest benchmarks/test_bench_op_overhead.py --benchmark-only
"""
from __future__ import annotations

import pytest
import torch

from vjepa_fast import ops
from vjepa_fast.models.vit import VisionTransformer


def _attention(dense: bool):
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(32, 3, 2, 16, generator=g)
    cu = torch.arange(0, 33, 8, dtype=torch.int32)
    return lambda: ops.varlen_attention(qkv, cu, 8, 8 if dense else None)


def _gather():
    g = torch.Generator().manual_seed(0)
    src, pos = torch.randn(40, 32, generator=g), torch.randn(16, 32, generator=g)
    src_rows, pos_rows = torch.randint(0, 40, (64,), generator=g), torch.randint(0, 16, (64,), generator=g)
    return lambda: ops.indexed_gather_add(src, src_rows, pos, pos_rows)


def _l1_loss():
    g = torch.Generator().manual_seed(0)
    z, h = torch.randn(32, 32, generator=g), torch.randn(48, 32, generator=g)
    rows, w = torch.randint(0, 48, (32,), generator=g), torch.rand(32, generator=g)
    return lambda: ops.l1_target_loss(z, h, rows, w)


def _ema():
    torch.manual_seed(0)
    sources = [p.detach() for p in VisionTransformer("tiny").parameters()]
    targets = [s.clone() for s in sources]
    return lambda: ops.ema_update_(targets, sources, 0.998)


CASES = {"attention": lambda: _attention(False), "dense_attention": lambda: _attention(True), "gather": _gather,
         "l1_loss": _l1_loss, "ema": _ema}


@pytest.mark.parametrize("op", list(CASES))
def test_op_host_overhead(benchmark, op):
    benchmark.group = "op_overhead"
    call = CASES[op]()
    call()  # first call: lazy builds, backend resolution
    benchmark.pedantic(call, rounds=200, iterations=10, warmup_rounds=5)
