"""The model side of V-JEPA 2's rotary positions: each row's (t, h, w) position on the clip's grid, and the cos / sin
tables the `rope` op (vjepa_fast/ops/rope.py, which has the layout and the definition) rotates q and k by.

Positions are the token's integer grid index (t, h, w) on the clip's own grid, so the rotation depends only on each
row's token index n = t * H * W + h * W + w: packed, masked rows need no padding. `rope_tables` builds the tables
for the rows of one forward pass (once, used by every block).
"""
from __future__ import annotations

import torch

from vjepa_fast.models.pos_embed import Grid
from vjepa_fast.ops.rope import THETA, RopeTables, rope_segment


def grid_positions(index: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Token indices n [R] on a (T, H, W) grid -> float32 [R, 3] positions (t, h, w)."""
    _, H, W = grid
    n = index.long()
    return torch.stack([n // (H * W), (n // W) % H, n % W], dim=1).to(torch.float32)


def _frequencies(d: int, device) -> torch.Tensor:
    """[d] frequency of each channel of one segment: the d/2 frequencies, twice over (concatenated)."""
    half = d // 2
    omega = 1.0 / THETA ** (torch.arange(half, dtype=torch.float64, device=device) / half)
    return torch.cat([omega, omega])


def rope_dtype(weight: torch.Tensor) -> torch.dtype:
    """The tables' dtype for a model whose weights are `weight`'s dtype: float64 models get float64 tables."""
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


def rope_tables(index: torch.Tensor, grid: Grid, head_dim: int, dtype: torch.dtype = torch.float32) -> RopeTables:
    """The tables for rows whose token indices on `grid` are `index` [R], in `dtype` (float32, or float64 for a
    float64 model, so that its rotation carries no float32 rounding)."""
    d = rope_segment(head_dim)
    if d == 0:
        raise ValueError(f"rotary positions need a head dim of at least 6, got {head_dim}")
    pos = grid_positions(index, grid).to(dtype)  # [R, 3]
    freq = _frequencies(d, index.device).to(dtype)  # [d]
    angles = (pos[:, :, None] * freq[None, None, :]).reshape(pos.shape[0], 3 * d)  # time, height, width
    rest = head_dim - 3 * d
    cos = torch.cat([angles.cos(), angles.new_ones(pos.shape[0], rest)], dim=1)
    sin = angles.sin()
    sign = torch.tensor([-1.0, 1.0], device=index.device).repeat(3 * d // 2)
    sin = torch.cat([sin * sign, angles.new_zeros(pos.shape[0], rest)], dim=1)
    return RopeTables(cos, sin)
