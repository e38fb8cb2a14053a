"""Test hooks on the Triton kernels' plumbing, kept out of the package (nothing on the launch path checks for them).

- `poison_outputs()`: every floating-point tensor the kernels' launch code allocates (with torch.empty, as all of
  them do) starts as NaN, so an element a kernel forgets to write shows up (it replaces torch.empty for the
  duration);
- `attention_backward(mode)`: run the attention backward's "split" or "atomic" dQ path for the duration;
- `block_sizes(**per_kernel)`: the attention kernels named launch with these options (block sizes, MAX_PROGRAMS,
  EXP2_POLY) instead of the tuned ones, e.g. `block_sizes(fwd={"BLOCK_M": 16, "BLOCK_N": 32})` (it replaces
  flash_tuning.config, the one lookup the launches make, for the duration);
- `launched_kernels()`: the Triton kernels launched for the duration, compiled or interpreted, as
  "module.kernel" names (it wraps the launch of triton's JITFunction and InterpretedFunction, which every launch
  reaches: `kernel[grid](...)` directly or through torch's wrap_triton).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List

import torch

from vjepa_fast.ops import _backend, flash_tuning


@contextlib.contextmanager
def poison_outputs() -> Iterator[None]:
    empty = torch.empty

    def nan_empty(*args, **kwargs) -> torch.Tensor:
        t = empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    torch.empty = nan_empty
    try:
        yield
    finally:
        torch.empty = empty


@contextlib.contextmanager
def attention_backward(mode: str) -> Iterator[None]:
    old = _backend.attention_backward
    _backend.set_attention_backward(mode)
    try:
        yield
    finally:
        _backend.attention_backward = old


@contextlib.contextmanager
def block_sizes(**per_kernel: dict) -> Iterator[None]:
    tuned = flash_tuning.config

    def forced(kernel: str, *args) -> dict:
        return dict(per_kernel[kernel]) if kernel in per_kernel else tuned(kernel, *args)

    flash_tuning.config = forced
    try:
        yield
    finally:
        flash_tuning.config = tuned


@contextlib.contextmanager
def launched_kernels() -> Iterator[List[str]]:
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    launched: List[str] = []
    originals = {cls: cls.__dict__["run"] for cls in (JITFunction, InterpretedFunction)}

    def recording(run):
        def run_and_record(self, *args, **kwargs):
            if not kwargs.get("warmup"):
                launched.append(f"{self.fn.__module__}.{self.fn.__name__}")
            return run(self, *args, **kwargs)
        return run_and_record

    for cls, run in originals.items():
        cls.run = recording(run)
    try:
        yield launched
    finally:
        for cls, run in originals.items():
            cls.run = run
