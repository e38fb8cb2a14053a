"""Backend selection shared by every op.

Each op declares its backends in preference order with an availability check. The default is the first one
available for the input's device; `VJEPA_FAST_<OP>_BACKEND` (or `set_backend`) forces one, and a forced backend
that cannot run is an error that says why, never a silent fallback.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import torch

# op name -> forced backend name (set from a config or a test); the environment variable wins over nothing else.
_forced: dict[str, str] = {}

# A check returns None when the backend can run on that device, otherwise the reason it cannot.
Check = Callable[[torch.device], Optional[str]]


def set_backend(op: str, name: Optional[str]) -> None:
    """Force `name` for `op` in this process (None returns to automatic choice)."""
    if name is None or name == "auto":
        _forced.pop(op, None)
    else:
        _forced[op] = name


def forced_backend(op: str) -> Optional[str]:
    env = os.environ.get(f"VJEPA_FAST_{op.upper()}_BACKEND")
    if env and env != "auto":
        return env
    return _forced.get(op)


def choose(op: str, device: torch.device, backends: dict[str, Check]) -> str:
    """Pick the backend for `op` on `device`; `backends` is ordered fastest first."""
    forced = forced_backend(op)
    if forced is not None:
        if forced not in backends:
            raise ValueError(f"{op}: unknown backend {forced!r}; choose one of {sorted(backends)}")
        reason = backends[forced](device)
        if reason is not None:
            raise RuntimeError(f"{op}: backend {forced!r} was forced but cannot run on {device}: {reason}")
        return forced
    for name, check in backends.items():
        if check(device) is None:
            return name
    raise RuntimeError(f"{op}: no backend can run on {device}")


def always(_device: torch.device) -> Optional[str]:
    return None


def cuda_only(device: torch.device) -> Optional[str]:
    return None if device.type == "cuda" else "needs a CUDA tensor"


# Index-range checks cost a host synchronisation on a GPU, so there they run only in debug mode:
# VJEPA_FAST_CHECK_INDICES=1 or `set_check_indices(True)` (config key train.check_indices). On the CPU they always run.
_check_indices = False


def set_check_indices(on: bool) -> None:
    global _check_indices
    _check_indices = bool(on)


def check_indices_by_default(device: torch.device) -> bool:
    if device.type == "cpu":
        return True
    return _check_indices or os.environ.get("VJEPA_FAST_CHECK_INDICES", "0") in ("1", "true", "on", "yes")
