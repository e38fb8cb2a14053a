"""Test hooks on the Triton kernels' plumbing, kept out of the package (nothing on the launch path checks for them).

- `poison_outputs()`: every output the attention kernels allocate starts as NaN, so an element a kernel forgets to
  write shows up (it replaces the module's one allocation function for the duration);
- `attention_backward(mode)`: run the attention backward's "split" or "atomic" dQ path for the duration.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from vjepa_fast.ops import _backend, _triton


def _nan_alloc(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


@contextlib.contextmanager
def poison_outputs() -> Iterator[None]:
    tfv = _triton.load("triton_flash_varlen")
    old, tfv._alloc = tfv._alloc, _nan_alloc
    try:
        yield
    finally:
        tfv._alloc = old


@contextlib.contextmanager
def attention_backward(mode: str) -> Iterator[None]:
    old = _backend.attention_backward
    _backend.set_attention_backward(mode)
    try:
        yield
    finally:
        _backend.attention_backward = old
