"""L1 target loss: sum_r w[r] * sum_d |z[r, d] - LN(h[rows[r]])[d]| with LN the affine-free LayerNorm.

`row_weight` carries the averaging (1 / (num_masks * rows_of_that_mask * D), times the world size under data
parallelism), so the same op gives the RECIPE's per-mask mean for any packing. Gradients flow into z only: the
target is the EMA encoder's output under stop-gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vjepa_fast.ops import _backend

OP = "l1_loss"
LN_EPS = 1e-5  # F.layer_norm's default, as in the reference objective


def l1_target_loss_reference(z: torch.Tensor, h: torch.Tensor, rows: torch.Tensor, row_weight: torch.Tensor,
                             eps: float = LN_EPS) -> torch.Tensor:
    """The definition: z [R, D] predictions, h [M, D] raw target-encoder rows, rows int64 [R], row_weight [R]."""
    D = z.shape[-1]
    with torch.no_grad():
        target = F.layer_norm(h.float(), (D,), eps=eps).index_select(0, rows)
    return (row_weight.float()[:, None] * (z.float() - target).abs()).sum()


_BACKENDS: dict[str, _backend.Check] = {"reference": _backend.always}


def _validate(z: torch.Tensor, h: torch.Tensor, rows: torch.Tensor, row_weight: torch.Tensor, check_range: bool):
    if z.dim() != 2 or h.dim() != 2 or z.shape[1] != h.shape[1]:
        raise ValueError(f"l1_target_loss: z [R, D] and h [M, D] expected, got {tuple(z.shape)} and {tuple(h.shape)}")
    if rows.shape != (z.shape[0],) or row_weight.shape != (z.shape[0],):
        raise ValueError(f"l1_target_loss: rows and row_weight must be [R={z.shape[0]}], got "
                         f"{tuple(rows.shape)} and {tuple(row_weight.shape)}")
    if rows.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"l1_target_loss: rows must be int32/int64, got {rows.dtype}")
    for name, t in (("h", h), ("rows", rows), ("row_weight", row_weight)):
        if t.device != z.device:
            raise ValueError(f"l1_target_loss: {name} on {t.device} but z on {z.device}")
    if check_range and rows.numel() > 0:
        lo, hi = int(rows.min()), int(rows.max())
        if lo < 0 or hi >= h.shape[0]:
            raise IndexError(f"l1_target_loss: row index out of range [0, {h.shape[0]}): min {lo}, max {hi}")


def l1_target_loss(z: torch.Tensor, h: torch.Tensor, rows: torch.Tensor, row_weight: torch.Tensor,
                   eps: float = LN_EPS, check_range: bool | None = None) -> torch.Tensor:
    """Fused-able L1 loss against affine-free-normalised target rows; returns an fp32 scalar."""
    if check_range is None:
        check_range = z.device.type == "cpu"
    _validate(z, h, rows, row_weight, check_range)
    _backend.choose(OP, z.device, _BACKENDS)
    return l1_target_loss_reference(z, h.detach(), rows.long(), row_weight, eps)
