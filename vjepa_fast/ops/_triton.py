"""The one way the ops build, register and launch Triton kernels, the same compiled (CUDA) or interpreted (CPU).

- `load(name)` imports a kernel module of this package on first use. `triton.jit` decides when it decorates a
  function whether it is compiled or interpreted, so the import runs with Triton's interpreter switch set to
  `_backend.INTERPRET` (TRITON_INTERPRET when vjepa_fast was imported): every kernel of the process is built in that
  one mode, whatever the environment holds later and whichever module (or torch.compile) imported triton first.
- `register(name, impl, fake)` makes a torch op of a Python body that launches kernels: compiled, a `triton_op`
  (torch.compile traces into the body and sees the kernels); interpreted, an opaque `custom_op` with an explicit
  fake, since the interpreter cannot run on fake tensors (this keeps opcheck and torch.compile working on the CPU).
- `launch(kernel, grid, *args, **meta)` goes through `wrap_triton` when compiled (so torch.compile and make_fx see
  the kernel) and calls the kernel directly when interpreted.
"""
from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Callable

import torch

from vjepa_fast.ops import _backend


def load(name: str) -> ModuleType:
    """Import vjepa_fast.ops.<name> (a kernel module) with its kernels built in this process's mode."""
    _build(name)
    return sys.modules[f"vjepa_fast.ops.{name}"]


@torch.compiler.assume_constant_result
def _build(name: str) -> bool:
    # Under torch.compile dynamo runs this at trace time instead of tracing into triton's import machinery, so even
    # a first call inside a fullgraph compile needs no graph break.
    full = f"vjepa_fast.ops.{name}"
    if full not in sys.modules:
        from triton import knobs

        with knobs.runtime.scope():
            knobs.runtime.interpret = _backend.INTERPRET
            importlib.import_module(full)
    return True


def register(name: str, impl: Callable, fake: Callable):
    """The op `name` ("vjepa_fast::...") running `impl`; returns it for register_autograd."""
    if _backend.INTERPRET:
        op = torch.library.custom_op(name, impl, mutates_args=())
        op.register_fake(fake)
        return op
    return torch.library.triton_op(name, impl, mutates_args=())


def launch(kernel, grid, *args, **meta) -> None:
    if _backend.INTERPRET:
        kernel[grid](*args, **meta)
        return
    if args[0].device.type != "cuda":
        raise RuntimeError("vjepa_fast: CPU tensors need the Triton interpreter; set TRITON_INTERPRET=1 before "
                           "vjepa_fast is imported")
    torch.library.wrap_triton(kernel)[grid](*args, **meta)
