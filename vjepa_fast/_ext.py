"""Loading of the compiled extension `vjepa_fast._C` (C++ CPU kernels and, when built with CUDA, CUDA kernels).

Importing `_C` registers the ops as `torch.ops.vjepa_fast.*`. Without it every op still works through its
reference (or Triton) path; `load()` says so once per process.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch

_loaded: Optional[bool] = None
_module = None
_error: Optional[str] = None


def load() -> bool:
    """Import `vjepa_fast._C` once; True when its ops are registered."""
    global _loaded, _module, _error
    if _loaded is None:
        try:
            from vjepa_fast import _C  # noqa: F401  (the import runs the TORCH_LIBRARY registrations)

            _module, _loaded = _C, True
        except (ImportError, OSError) as e:  # not built, or built against another torch (undefined symbols)
            _error, _loaded = f"{type(e).__name__}: {e}", False
            warnings.warn("vjepa_fast._C not built: using reference paths; run pip install -e . --no-build-isolation"
                          f" ({_error})", RuntimeWarning, stacklevel=2)
    return _loaded


def load_error() -> Optional[str]:
    """Why the extension could not be imported (None if it was, or if load() was not called yet)."""
    return _error


def has_op(name: str) -> bool:
    """Whether torch.ops.vjepa_fast.<name> exists (the extension is loaded first)."""
    if not load():
        return False
    try:
        getattr(torch.ops.vjepa_fast, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def has_cuda_kernels() -> bool:
    """Whether the extension was compiled with its CUDA kernels (says nothing about a GPU being present)."""
    return load() and bool(_module.cuda_built())


def unavailable_reason(device: torch.device) -> Optional[str]:
    """None when the C++ kernels can run on `device`, otherwise why not (for the ops' backend checks)."""
    if not load():
        return f"the extension vjepa_fast._C is not built ({_error}); run pip install -e . --no-build-isolation"
    if device.type == "cuda":
        return None if has_cuda_kernels() else "vjepa_fast._C was built without CUDA kernels"
    if device.type == "cpu":
        return None
    return f"no vjepa_fast._C kernels for {device.type} tensors"


def describe() -> str:
    """One line on what was built, for set-up scripts and bug reports."""
    if not load():
        return f"not built ({load_error()}); reference paths only"
    return "CPU + CUDA kernels" if has_cuda_kernels() else "CPU kernels only (no CUDA kernels compiled)"
