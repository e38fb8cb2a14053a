"""Masked token gather: packed[r] = tokens[b(r), n(r)] + pos[n(r)] for flat rows r = b * N + n.

This is step 3 of the packed layout (DESIGN.md): the context encoder's input for every (sample, mask) sequence,
built in one pass instead of a repeated int64 index_select followed by an add.
"""
from __future__ import annotations

from typing import Optional

import torch

from vjepa_fast.ops import _backend

OP = "gather"


def masked_gather_reference(tokens: torch.Tensor, pos: Optional[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """The definition: tokens [B, N, D], pos [N, D] or None, rows int64 [R] with values in [0, B*N)."""
    B, N, D = tokens.shape
    out = tokens.reshape(B * N, D).index_select(0, rows)
    if pos is not None:
        out = out + pos.index_select(0, rows % N).to(out.dtype)
    return out


_BACKENDS: dict[str, _backend.Check] = {"reference": _backend.always}


def _validate(tokens: torch.Tensor, pos: Optional[torch.Tensor], rows: torch.Tensor, check_range: bool) -> None:
    if tokens.dim() != 3:
        raise ValueError(f"masked_gather: tokens must be [B, N, D], got shape {tuple(tokens.shape)}")
    B, N, D = tokens.shape
    if rows.dim() != 1 or rows.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"masked_gather: rows must be a 1-D int32/int64 tensor, got {rows.dtype} {tuple(rows.shape)}")
    if rows.device != tokens.device:
        raise ValueError(f"masked_gather: rows on {rows.device} but tokens on {tokens.device}")
    if pos is not None:
        if tuple(pos.shape) != (N, D):
            raise ValueError(f"masked_gather: pos must be [N, D] = [{N}, {D}], got {tuple(pos.shape)}")
        if pos.device != tokens.device:
            raise ValueError(f"masked_gather: pos on {pos.device} but tokens on {tokens.device}")
    if check_range and rows.numel() > 0:
        lo, hi = int(rows.min()), int(rows.max())
        if lo < 0 or hi >= B * N:
            raise IndexError(f"masked_gather: row index out of range [0, {B * N}): min {lo}, max {hi}")


def masked_gather(tokens: torch.Tensor, pos: Optional[torch.Tensor], rows: torch.Tensor,
                  check_range: Optional[bool] = None) -> torch.Tensor:
    """Gather packed rows of `tokens` and add their position embedding.

    The index range is checked on CPU always and on GPU only when `check_range=True` (it costs a host sync).
    """
    if check_range is None:
        check_range = tokens.device.type == "cpu"
    _validate(tokens, pos, rows, check_range)
    backend = _backend.choose(OP, tokens.device, _BACKENDS)
    rows = rows.long()
    return masked_gather_reference(tokens, pos, rows)
