"""EMA update of the target encoder: target <- m * target + (1 - m) * online, over a list of tensors.

Works on plain tensors. With FSDP2 the caller passes the local shards of the DTensors (`t.to_local()`), so no
communication is needed; a DTensor passed here is replaced by its local shard automatically (the shard is a view
of the DTensor's storage, so the update lands in place). Targets and sources must then be sharded alike.

Backends, fastest first: `cuda` (one multi-tensor launch per source dtype, vjepa_fast._C), `cpu` (its C++ kernel),
`foreach` (torch._foreach_lerp_), `reference` (a Python loop). The C++ kernels take fp32 contiguous targets and fp32
or bf16 contiguous sources; other lists go to `foreach` when the choice is automatic, and are an error when a C++
backend is forced.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from vjepa_fast import _ext
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


# ---- the C++/CUDA op: a fake implementation so torch.compile can trace it (it mutates, returns nothing) -------------

def _register_op() -> bool:
    if not _ext.has_op("ema_update_"):
        return False

    @torch.library.register_fake("vjepa_fast::ema_update_")
    def _ema_fake(targets, sources, momentum):
        return None

    return True


_OP_REGISTERED = _register_op()


def _kernel_reason(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor]) -> Optional[str]:
    """None when the C++ kernels accept these lists, otherwise why not."""
    for i, (t, s) in enumerate(zip(targets, sources)):
        if t.device != targets[0].device:
            return f"tensor {i}: on {t.device} but tensor 0 on {targets[0].device} (one device per call)"
        if t.dtype != torch.float32 or s.dtype not in (torch.float32, torch.bfloat16):
            return f"tensor {i}: needs fp32 targets and fp32/bf16 sources, got {t.dtype} and {s.dtype}"
        if not (t.is_contiguous() and s.is_contiguous()):
            return f"tensor {i}: needs contiguous tensors"
    return None


def _backends(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor]) -> dict[str, _backend.Check]:
    kernel_reason = _kernel_reason(targets, sources)

    def cuda(device: torch.device) -> Optional[str]:
        if device.type != "cuda":
            return "needs CUDA tensors"
        return _ext.unavailable_reason(device) or kernel_reason

    def cpu(device: torch.device) -> Optional[str]:
        if device.type != "cpu":
            return "needs CPU tensors"
        return _ext.unavailable_reason(device) or kernel_reason

    return {"cuda": cuda, "cpu": cpu, "foreach": _backend.always, "reference": _backend.always}


def _local(t: torch.Tensor) -> torch.Tensor:
    # DTensor -> its local shard (an alias, so in-place updates reach the DTensor).
    if type(t) is torch.Tensor or not torch.distributed.is_available():
        return t
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


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
    """In place: targets[i] = momentum * targets[i] + (1 - momentum) * sources[i].

    For FSDP2, pass local shards (DTensors are converted with .to_local()). The C++ kernels need every tensor on
    one device, fp32 targets, fp32/bf16 sources, all contiguous; the automatic choice falls back to foreach otherwise.
    """
    targets, sources = [_local(t) for t in targets], [_local(s) for s in sources]
    _validate(targets, sources, momentum)
    if not targets:
        return
    backend = _backend.choose(OP, targets[0].device, _backends(targets, sources))
    if backend in ("cuda", "cpu"):
        torch.ops.vjepa_fast.ema_update_(targets, sources, float(momentum))
    elif backend == "foreach":
        _ema_foreach(targets, sources, momentum)
    else:
        ema_update_reference(targets, sources, momentum)
