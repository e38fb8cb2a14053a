"""V-JEPA 2's 3D rotary position embedding, applied to q and k of the fused qkv [T, 3, H, Dh] in one op.

Layout (what the published V-JEPA 2 weights were trained with; docs/weights.md):
- the head dim is split into three equal, even segments of d = 2 * ((Dh // 3) // 2) channels for the time, height
  and width index of the token; the last Dh - 3d channels are not rotated;
- inside a segment, channel i has the angle a_i = position * w_(i mod d/2), w_j = 10000^(-j / (d/2)) (the d/2
  frequencies appear twice, concatenated, not once per channel pair), and with pairs (2k, 2k + 1)
  y[2k] = x[2k] cos a_2k - x[2k+1] sin a_2k, y[2k+1] = x[2k+1] cos a_2k+1 + x[2k] sin a_2k+1. The two channels of
  a pair turn by different angles, so this is not a norm-preserving rotation; it is what the weights expect;
- positions are the token's integer grid index (t, h, w) on the clip's own grid, so the rotation depends only on
  each row's token index n = t * H * W + h * W + w: packed, masked rows need no padding.

`RopeTables` holds cos / sin [T, Dh] for the rows of one forward pass (built once, used by every block);
`apply_rope_qkv` rotates q and k in one elementwise expression (fused by torch.compile) and leaves v as it is.
`apply_rope_qkv_reference` is the definition written segment by segment, for the tests. The op `rope` has two
backends: `torch` (the default, and always under torch.compile) and `triton` (ops/triton_rope.py: one kernel launch
in eager mode; opt in with backends.rope=triton or VJEPA_FAST_ROPE_BACKEND=triton until a GPU benchmark shows
it pays).
"""
from __future__ import annotations

import importlib.util
from typing import NamedTuple, Optional

import torch

from vjepa_fast.models.pos_embed import Grid
from vjepa_fast.ops import _backend, _triton

THETA = 10000.0


def rope_segment(head_dim: int) -> int:
    """Channels per axis (time, height, width) of a head of `head_dim` channels."""
    return 2 * ((head_dim // 3) // 2)


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


class RopeTables(NamedTuple):
    """cos and signed sin [R, Dh] (float32) for R rows; the unrotated tail has cos 1, sin 0. A NamedTuple, so
    torch.compile'd blocks take it as plain tensors."""
    cos: torch.Tensor
    sin: torch.Tensor  # sign folded in: -sin on even channels, +sin on odd ones


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


def _pair_swap(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (x1, x0, x3, x2, ...) along the last dim; an odd last channel (never rotated: its sin
    is 0) stays where it is."""
    even = x.shape[-1] - x.shape[-1] % 2
    swapped = x[..., :even].unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return swapped if even == x.shape[-1] else torch.cat([swapped, x[..., even:]], dim=-1)


def apply_rope_qkv(qkv: torch.Tensor, tables: RopeTables) -> torch.Tensor:
    """Rotate q and k of qkv [R, 3, H, Dh] by the tables' positions; v is passed through. Returns [R, 3, H, Dh].

    The tables have R rows, or R / B rows for B whole clips back to back (the dense path: one table of N rows
    serves every clip; no rows at all: empty tables). Computed in float32 (float64 for float64 qkv or tables) and
    rounded once to qkv's dtype; one elementwise expression over q and k together."""
    R, P = qkv.shape[0], tables.cos.shape[0]
    if qkv.dim() != 4 or qkv.shape[1] != 3 or qkv.shape[3] != tables.cos.shape[1] or (R % P if P else R):
        raise ValueError(f"apply_rope_qkv: qkv must be [R, 3, H, Dh] with R a multiple of the tables' rows "
                         f"{tuple(tables.cos.shape)}, got {tuple(qkv.shape)}")
    if not torch.compiler.is_compiling() and ROPE.choose(qkv.device.type).name == "triton":
        return _triton.load("triton_rope").rope_qkv_triton(qkv, tables.cos, tables.sin)
    work = torch.promote_types(qkv.dtype, tables.cos.dtype)  # float32 for 16-bit qkv, float64 for float64
    qk = qkv[:, :2].to(work).reshape(R // P if P else 1, P, 2, *qkv.shape[2:])
    cos, sin = tables.cos[:, None, None, :].to(work), tables.sin[:, None, None, :].to(work)
    rotated = (qk * cos + _pair_swap(qk) * sin).to(qkv.dtype).reshape(R, 2, *qkv.shape[2:])
    return torch.cat([rotated, qkv[:, 2:]], dim=1)


def _triton_reason(device: str) -> Optional[str]:
    if device != "cuda" and not _backend.INTERPRET:
        return "needs a CUDA tensor (or TRITON_INTERPRET=1)"
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    return None


def _triton_not_chosen(_device: str) -> Optional[str]:
    return "opt-in until a GPU benchmark shows it pays"


# The op's key is the device type; `torch` is the automatic choice, `triton` is taken only when forced.
ROPE = _backend.Op("rope", _backend.Backend("torch", None),
                   _backend.Backend("triton", None, _triton_reason, _triton_not_chosen))


def apply_rope_qkv_reference(qkv: torch.Tensor, index: torch.Tensor, grid: Grid) -> torch.Tensor:
    """The definition, one axis segment at a time: qkv [R, 3, H, Dh], index [R] token indices on `grid`."""
    R, _, H, Dh = qkv.shape
    d = rope_segment(Dh)
    pos = grid_positions(index, grid)
    half = d // 2
    omega = 1.0 / THETA ** (torch.arange(half, dtype=torch.float64) / half)
    out = qkv.clone()
    for which in (0, 1):  # q, k
        x = qkv[:, which].double()  # [R, H, Dh]
        for axis in range(3):
            seg = x[..., axis * d:(axis + 1) * d]
            ang = pos[:, axis].double()[:, None] * omega[None, :]  # [R, d/2]
            cos = torch.cat([ang.cos(), ang.cos()], dim=1)[:, None, :]  # frequencies repeated, not interleaved
            sin = torch.cat([ang.sin(), ang.sin()], dim=1)[:, None, :]
            partner = torch.empty_like(seg)
            partner[..., 0::2] = -seg[..., 1::2]
            partner[..., 1::2] = seg[..., 0::2]
            out[:, which, :, axis * d:(axis + 1) * d] = (seg * cos + partner * sin).to(qkv.dtype)
    return out
