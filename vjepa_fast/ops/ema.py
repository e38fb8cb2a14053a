"""EMA update of the target encoder: target <- m * target + (1 - m) * online, over a list of tensors.

Works on plain tensors; the training loop passes the local shards of FSDP2's DTensors, so no communication is needed.
"""
from __future__ import annotations

from typing import Sequence

import torch

from vjepa_fast.ops import _backend

OP = "ema"


def ema_update_reference(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor], momentum: float) -> None:
    """The definition (and the reference code's Python loop)."""
    for t, s in zip(targets, sources):
        t.mul_(momentum).add_(s.to(t.dtype), alpha=1.0 - momentum)


def _ema_foreach(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor], momentum: float) -> None:
    # lerp(t, s, w) = t + w * (s - t) = (1 - w) * t + w * s with w = 1 - m; sources are cast per dtype group.
    srcs = [s if s.dtype == t.dtype else s.to(t.dtype) for t, s in zip(targets, sources)]
    torch._foreach_lerp_(list(targets), srcs, 1.0 - momentum)


_BACKENDS: dict[str, _backend.Check] = {"foreach": _backend.always, "reference": _backend.always}


def _validate(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor], momentum: float) -> None:
    if len(targets) != len(sources):
        raise ValueError(f"ema_update_: {len(targets)} targets but {len(sources)} sources")
    if not (0.0 <= float(momentum) <= 1.0):
        raise ValueError(f"ema_update_: momentum must be in [0, 1], got {momentum}")
    for i, (t, s) in enumerate(zip(targets, sources)):
        if t.shape != s.shape:
            raise ValueError(f"ema_update_: tensor {i}: target shape {tuple(t.shape)} != source {tuple(s.shape)}")
        if t.device != s.device:
            raise ValueError(f"ema_update_: tensor {i}: target on {t.device}, source on {s.device}")
        if not t.is_floating_point() or not s.is_floating_point():
            raise ValueError(f"ema_update_: tensor {i}: floating point tensors required")


@torch.no_grad()
def ema_update_(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor], momentum: float) -> None:
    """In place: targets[i] = momentum * targets[i] + (1 - momentum) * sources[i]."""
    targets, sources = list(targets), list(sources)
    _validate(targets, sources, momentum)
    if not targets:
        return
    backend = _backend.choose(OP, targets[0].device, _BACKENDS)
    if backend == "foreach":
        _ema_foreach(targets, sources, momentum)
    else:
        ema_update_reference(targets, sources, momentum)
