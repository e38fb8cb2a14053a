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

And the two rules every op's `triton` backend follows, written once here:
- `device_reason(device)`: whether Triton kernels can run on tensors of that device type in this process (triton
  installed; CUDA, or the CPU under the interpreter), for the backend's check;
- `interpreted_only_when_forced(key)`: the backend's `auto` check, so that automatic choice never picks the (very
  slow) interpreter and only forcing the backend brings it in.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Callable, Hashable, Optional

import torch

from vjepa_fast.ops import _backend

# Looked up once, at import: find_spec imports nothing, and it must not run while torch.compile traces a check.
INSTALLED = importlib.util.find_spec("triton") is not None
NEEDS_INTERPRETER = "CPU tensors need the Triton interpreter (TRITON_INTERPRET=1 when vjepa_fast is imported)"


def device_reason(device: str) -> Optional[str]:
    """Why Triton kernels cannot run on tensors of device type `device` in this process (None if they can)."""
    if not INSTALLED:
        return "triton is not installed"
    if device == "cuda":
        return None
    if device == "cpu":
        return None if _backend.INTERPRET else NEEDS_INTERPRETER
    return f"needs a CUDA tensor (or CPU under TRITON_INTERPRET=1), got {device}"


def interpreted_only_when_forced(key: Hashable) -> Optional[str]:
    """The `auto` check of a `triton` backend (`key` starts with the device type, as every op's key does)."""
    return "the interpreter is used only when forced" if key[0] == "cpu" else None


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
        raise RuntimeError(f"vjepa_fast: {device_reason(args[0].device.type)}")
    torch.library.wrap_triton(kernel)[grid](*args, **meta)
