"""Fixed sine-cosine position tables (3D "uniform power" split, or VideoMAE's 1D table over the token index), their
trilinear resizing, and the choice of position kind.

Token order everywhere is n = t * H * W + h * W + w, the order a Conv3d patch embedding flattens to.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

Grid = tuple[int, int, int]

# sincos: the 3D table (V-JEPA); sincos_1d: a 1D table over n (VideoMAE); rope: no table, rotary q and k (V-JEPA 2)
POS_EMBEDS = ("sincos", "sincos_1d", "rope")


def _sincos_1d(positions: torch.Tensor, channels: int) -> torch.Tensor:
    """[P] positions -> [P, channels]: first half sin(p * w_k), second half cos(p * w_k), w_k = 1e4^-(k / (c/2))."""
    half = channels // 2
    k = torch.arange(half, dtype=torch.float64, device=positions.device)
    omega = 1.0 / (10000.0 ** (k / half))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def _check_grid(grid, name: str) -> Grid:
    if len(grid) != 3 or any(int(g) != g or g < 1 for g in grid):
        raise ValueError(f"{name} must be three positive ints (T, H, W), got {tuple(grid)}")
    return tuple(int(g) for g in grid)  # type: ignore[return-value]


def sincos_3d(grid: Grid, dim: int) -> torch.Tensor:
    """The fixed position table [T * H * W, dim] (float32) for a (T, H, W) token grid.

    Every axis gets the same 2 * ceil(dim / 6) channels ("uniform power"), concatenated time, height, width and cut
    to `dim`. Computed in float64 and rounded once, so tables built on any device agree.
    """
    T, H, W = _check_grid(grid, "sincos_3d: grid")
    if dim < 1:
        raise ValueError(f"sincos_3d: dim must be positive, got {dim}")
    c = 2 * math.ceil(dim / 6)
    tt, hh, ww = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    table = torch.cat([_sincos_1d(tt.reshape(-1), c), _sincos_1d(hh.reshape(-1), c), _sincos_1d(ww.reshape(-1), c)],
                      dim=1)
    return table[:, :dim].to(torch.float32)


def sincos_1d(num_tokens: int, dim: int) -> torch.Tensor:
    """VideoMAE's table [num_tokens, dim] (float32): channel j of token n is sin (even j) or cos (odd j) of
    n / 10000^(2 * (j // 2) / dim), computed in float64."""
    j = torch.arange(dim, dtype=torch.float64)
    angles = torch.arange(num_tokens, dtype=torch.float64)[:, None] / 10000.0 ** (2 * (j // 2) / dim)[None, :]
    return torch.where(j % 2 == 0, torch.sin(angles), torch.cos(angles)).to(torch.float32)


def position_table(kind: str, grid: Grid, dim: int) -> Optional[torch.Tensor]:
    """The fixed [N, dim] table of a position kind (POS_EMBEDS) on `grid`; None for rotary positions."""
    if kind not in POS_EMBEDS:
        raise ValueError(f"unknown position embedding {kind!r}; choose one of {POS_EMBEDS}")
    if kind == "rope":
        return None
    return sincos_3d(grid, dim) if kind == "sincos" else sincos_1d(math.prod(_check_grid(grid, "grid")), dim)


def interpolate_pos(table: torch.Tensor, from_grid: Grid, to_grid: Grid) -> torch.Tensor:
    """Resize a [N, D] table laid out on `from_grid` to `to_grid` with trilinear interpolation -> [N', D].

    align_corners=False with the output size given, as the reference does with scale factors out / in; corner
    tokens keep their values when upsampling. Returns the input unchanged when the grids are equal.
    """
    from_grid = _check_grid(from_grid, "interpolate_pos: from_grid")
    to_grid = _check_grid(to_grid, "interpolate_pos: to_grid")
    if table.dim() != 2 or table.shape[0] != math.prod(from_grid):
        raise ValueError(f"interpolate_pos: table must be [{math.prod(from_grid)}, D] for grid {from_grid}, "
                         f"got {tuple(table.shape)}")
    if from_grid == to_grid:
        return table
    D = table.shape[1]
    vol = table.reshape(1, *from_grid, D).permute(0, 4, 1, 2, 3)  # [1, D, T, H, W]
    # interpolate has no fp16/bf16 trilinear kernel on every device: resize in fp32 (or fp64) and cast back.
    work = vol if vol.dtype in (torch.float32, torch.float64) else vol.float()
    out = F.interpolate(work, size=to_grid, mode="trilinear", align_corners=False)
    return out.permute(0, 2, 3, 4, 1).reshape(math.prod(to_grid), D).to(table.dtype)
