"""EMA update of the target encoder: target <- m * target + (1 - m) * online, over a list of tensors.

Works on plain tensors. With FSDP2 the caller passes the local shards of the DTensors (`t.to_local()`), so no
communication is needed; a DTensor passed here is replaced by its local shard automatically (the shard is a view
of the DTensor's storage, so the update lands in place). Targets and sources must then be sharded alike.

Backends, fastest first: `cuda` (one multi-tensor launch per source dtype, vjepa_fast._C), `cpu` (its C++ kernel),
`foreach` (torch._foreach_lerp_), `reference` (a Python loop). The C++ kernels take fp32 contiguous targets and fp32
or bf16 contiguous sources; other lists go to `foreach` when the choice is automatic, and are an error when a C++
backend is forced.

`apply`, optional, is a 0-d bool tensor on the targets' device: where it is false every backend leaves the targets
bit-identical, where it is true the result is bit-identical to a call without it. The kernels read it on the device,
so a training step can skip its update (a non-finite loss) without the host waiting for the GPU.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from vjepa_fast import _ext
from vjepa_fast.ops import _backend

OP = "ema"


def ema_update_reference(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor], momentum: float,
                         apply: Optional[torch.Tensor] = None) -> None:
    """The definition, a Python loop as in the original V-JEPA code. Out of place, then copied: a target that
    aliases its source (or overlaps it) is read whole before it is written."""
    for t, s in zip(targets, sources):
        new = t * momentum + s.to(t.dtype) * (1.0 - momentum)
        t.copy_(new if apply is None else torch.where(apply, new, t))


# Target dtypes whose lerp computes in their own precision: a 0-d weight tensor of that dtype gives the same bits as
# the Python-float weight. (bf16/fp16 targets compute in fp32 with a float weight but round a tensor weight to their
# own dtype, so they take torch.where.)
_OWN_OPMATH = (torch.float32, torch.float64)


def _ema_foreach(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor], momentum: float,
                 apply: Optional[torch.Tensor] = None) -> None:
    # lerp(t, s, w) = t + w * (s - t) = (1 - w) * t + w * s with w = 1 - m; sources are cast per dtype group.
    srcs = [s if s.dtype == t.dtype else s.to(t.dtype) for t, s in zip(targets, sources)]
    if apply is None:
        torch._foreach_lerp_(list(targets), srcs, 1.0 - momentum)
        return
    # With a flag: weight (1 - m) where apply, 0 where not, made on the device (lerp(t, s, 0) = t exactly).
    weights: dict[torch.dtype, torch.Tensor] = {}
    exact, exact_srcs, other, other_srcs = [], [], [], []
    for t, s in zip(targets, srcs):
        if t.dtype in _OWN_OPMATH:
            exact.append(t)
            exact_srcs.append(s)
            if t.dtype not in weights:  # 1 * (1 - m) and 0 * (1 - m) are exact; no host value is copied over
                weights[t.dtype] = apply.to(t.dtype) * (1.0 - momentum)
        else:
            other.append(t)
            other_srcs.append(s)
    if exact:
        torch._foreach_lerp_(exact, exact_srcs, [weights[t.dtype] for t in exact])
    if other:  # the unflagged computation out of place, then kept where apply
        for t, new in zip(other, torch._foreach_lerp(other, other_srcs, 1.0 - momentum)):
            t.copy_(torch.where(apply, new, t))


# ---- the C++/CUDA op: a fake implementation so torch.compile can trace it (it mutates, returns nothing) -------------

def _register_op() -> bool:
    if not _ext.has_op("ema_update_"):
        return False

    @torch.library.register_fake("vjepa_fast::ema_update_")
    def _ema_fake(targets, sources, momentum, apply=None):
        return None

    return True


_OP_REGISTERED = _register_op()


def _check(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor], momentum: float) -> Optional[str]:
    """Validate the lists (raise on bad input) and say whether the C++ kernels accept them: None, or why not.

    One pass with plain attribute reads: this runs every step over every parameter (~300 for ViT-L), so its Python
    cost is part of the step's."""
    if len(targets) != len(sources):
        raise ValueError(f"ema_update_: {len(targets)} targets but {len(sources)} sources")
    if not (0.0 <= float(momentum) <= 1.0):
        raise ValueError(f"ema_update_: momentum must be in [0, 1], got {momentum}")
    fp32, kernel_sources = torch.float32, (torch.float32, torch.bfloat16)
    device0 = targets[0].device if targets else None
    reason = None
    for i, (t, s) in enumerate(zip(targets, sources)):
        if t.shape != s.shape:
            raise ValueError(f"ema_update_: tensor {i}: target shape {tuple(t.shape)} != source {tuple(s.shape)}")
        td, sd = t.device, s.device
        if td != sd:
            raise ValueError(f"ema_update_: tensor {i}: target on {td}, source on {sd}")
        tt, st = t.dtype, s.dtype
        if not (tt.is_floating_point and st.is_floating_point):
            raise ValueError(f"ema_update_: tensor {i}: floating point tensors required")
        if reason is None:
            if td != device0:
                reason = f"tensor {i}: on {td} but tensor 0 on {device0} (one device per call)"
            elif tt is not fp32 or st not in kernel_sources:
                reason = f"tensor {i}: needs fp32 targets and fp32/bf16 sources, got {tt} and {st}"
            elif not (t.is_contiguous() and s.is_contiguous()):
                reason = f"tensor {i}: needs contiguous tensors"
    return reason


def _kernel_reason(key, device: str) -> Optional[str]:
    # key: (device type, why the lists do not fit the C++ kernels or None)
    if key[0] != device:
        return f"needs {device.upper()} tensors"
    return _ext.unavailable_reason(torch.device(device)) or key[1]


def _run_kernel(targets, sources, momentum, apply=None):
    torch.ops.vjepa_fast.ema_update_(targets, sources, float(momentum), apply)


def _probe(device: torch.device, dtype: torch.dtype, head_dim: int) -> None:
    # fp32 whatever the run's compute dtype: the EMA keeps fp32 master weights
    ema_update_([torch.zeros(8, device=device)], [torch.zeros(8, device=device)], 0.5)


EMA = _backend.Op(OP, _backend.Backend("cuda", _run_kernel, lambda key: _kernel_reason(key, "cuda")),
                  _backend.Backend("cpu", _run_kernel, lambda key: _kernel_reason(key, "cpu")),
                  _backend.Backend("foreach", _ema_foreach),
                  _backend.Backend("reference", ema_update_reference), probe=_probe)


def _local(t: torch.Tensor) -> torch.Tensor:
    # DTensor -> its local shard (an alias, so in-place updates reach the DTensor).
    if type(t) is torch.Tensor or not torch.distributed.is_available():
        return t
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def _check_apply(apply: torch.Tensor, targets: Sequence[torch.Tensor], one_device: bool) -> None:
    if not isinstance(apply, torch.Tensor) or apply.dim() != 0 or apply.dtype is not torch.bool:
        got = f"{apply.dtype} tensor of shape {tuple(apply.shape)}" if isinstance(apply, torch.Tensor) else type(apply)
        raise ValueError(f"ema_update_: apply must be a 0-d bool tensor, got {got}")
    # one_device: _check found all targets on targets[0]'s device, so only the lists it turned away are walked
    for i, t in enumerate(targets[:1] if one_device else targets):
        if apply.device != t.device:
            raise ValueError(f"ema_update_: apply on {apply.device} but the targets on {t.device} (tensor {i}); "
                             "a flag on another device would need a copy")


@torch.no_grad()
def ema_update_(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor], momentum: float,
                apply: Optional[torch.Tensor] = None) -> None:
    """In place: targets[i] = momentum * targets[i] + (1 - momentum) * sources[i]; where the 0-d bool device tensor
    `apply` is given and false, nothing changes (decided on the device: no host sync).

    For FSDP2, pass local shards (DTensors are converted with .to_local()). The C++ kernels need every tensor on
    one device, fp32 targets, fp32/bf16 sources, all contiguous; the automatic choice falls back to foreach otherwise.
    """
    targets, sources = [_local(t) for t in targets], [_local(s) for s in sources]
    kernel_reason = _check(targets, sources, momentum)
    if apply is not None:
        apply = _local(apply)
        _check_apply(apply, targets, kernel_reason is None)
    if not targets:
        return
    EMA.choose((targets[0].device.type, kernel_reason)).run(targets, sources, momentum, apply)
