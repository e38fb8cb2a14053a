"""V-JEPA 2's 3D rotary position embedding, applied to q and k of the fused qkv [R, 3, H, Dh] in one op.

Layout (what the published V-JEPA 2 weights were trained with; docs/weights.md):
- the head dim is split into three equal, even segments of d = 2 * ((Dh // 3) // 2) channels for the time, height
  and width index of the token; the last Dh - 3d channels are not rotated;
- inside a segment, channel i has the angle a_i = position * w_(i mod d/2), w_j = 10000^(-j / (d/2)) (the d/2
  frequencies appear twice, concatenated, not once per channel pair), and with pairs (2k, 2k + 1)
  y[2k] = x[2k] cos a_2k - x[2k+1] sin a_2k, y[2k+1] = x[2k+1] cos a_2k+1 + x[2k] sin a_2k+1. The two channels of
  a pair turn by different angles, so this is not a norm-preserving rotation; it is what the weights expect.

The op takes the angles as `RopeTables` (cos / signed sin [P, Dh], built once per forward by the model:
vjepa_fast/models/rope.py turns token indices into positions and tables). `apply_rope_qkv` rotates q and k in one
elementwise expression and leaves v as it is; `apply_rope_qkv_reference` is the definition written segment by
segment from the positions, for the tests.

Backends: `torch` (the default, and always under torch.compile, where Inductor fuses the expression) and `triton`
(ops/triton_rope.py: one kernel launch in eager mode; opt in with backends.rope=triton or
VJEPA_FAST_ROPE_BACKEND=triton until a GPU benchmark shows it pays).
"""
from __future__ import annotations

import importlib.util
from typing import NamedTuple, Optional

import torch

from vjepa_fast.ops import _backend, _triton

OP = "rope"
THETA = 10000.0


def rope_segment(head_dim: int) -> int:
    """Channels per axis (time, height, width) of a head of `head_dim` channels."""
    return 2 * ((head_dim // 3) // 2)


class RopeTables(NamedTuple):
    """cos and signed sin [P, Dh] for P rows; the unrotated tail has cos 1, sin 0. A NamedTuple, so torch.compile'd
    blocks take it as plain tensors."""
    cos: torch.Tensor
    sin: torch.Tensor  # sign folded in: -sin on even channels, +sin on odd ones


def apply_rope_qkv_reference(qkv: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The definition, one axis segment at a time: qkv [R, 3, H, Dh], positions [R, 3] (each row's t, h, w)."""
    Dh = qkv.shape[-1]
    d = rope_segment(Dh)
    half = d // 2
    omega = 1.0 / THETA ** (torch.arange(half, dtype=torch.float64) / half)
    out = qkv.clone()
    for which in (0, 1):  # q, k
        x = qkv[:, which].double()  # [R, H, Dh]
        for axis in range(3):
            seg = x[..., axis * d:(axis + 1) * d]
            ang = positions[:, axis].double()[:, None] * omega[None, :]  # [R, d/2]
            cos = torch.cat([ang.cos(), ang.cos()], dim=1)[:, None, :]  # frequencies repeated, not interleaved
            sin = torch.cat([ang.sin(), ang.sin()], dim=1)[:, None, :]
            partner = torch.empty_like(seg)
            partner[..., 0::2] = -seg[..., 1::2]
            partner[..., 1::2] = seg[..., 0::2]
            out[:, which, :, axis * d:(axis + 1) * d] = (seg * cos + partner * sin).to(qkv.dtype)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Backends (key: device type)
# ----------------------------------------------------------------------------------------------------------------

def _pair_swap(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (x1, x0, x3, x2, ...) along the last dim; an odd last channel (never rotated: its sin
    is 0) stays where it is."""
    even = x.shape[-1] - x.shape[-1] % 2
    swapped = x[..., :even].unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return swapped if even == x.shape[-1] else torch.cat([swapped, x[..., even:]], dim=-1)


def _run_torch(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    R, P = qkv.shape[0], cos.shape[0]
    work = torch.promote_types(qkv.dtype, cos.dtype)  # float32 for 16-bit qkv, float64 for float64
    qk = qkv[:, :2].to(work).reshape(R // P if P else 1, P, 2, *qkv.shape[2:])
    cos, sin = cos[:, None, None, :].to(work), sin[:, None, None, :].to(work)
    rotated = (qk * cos + _pair_swap(qk) * sin).to(qkv.dtype).reshape(R, 2, *qkv.shape[2:])
    return torch.cat([rotated, qkv[:, 2:]], dim=1)


def _run_triton(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return _triton.load("triton_rope").rope_qkv_triton(qkv, cos, sin)


def _triton_reason(device: str) -> Optional[str]:
    if device != "cuda" and not _backend.INTERPRET:
        return "needs a CUDA tensor (or TRITON_INTERPRET=1)"
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    return None


def _triton_not_chosen(_device: str) -> Optional[str]:
    return "opt-in until a GPU benchmark shows it pays"


def _probe(device: torch.device, dtype: torch.dtype, head_dim: int) -> None:
    # two rows of one head of the model's width, turned by angle 0 (the kernel does the same work for any angle)
    tables = RopeTables(torch.ones(2, head_dim, device=device), torch.zeros(2, head_dim, device=device))
    apply_rope_qkv(torch.zeros(2, 3, 1, head_dim, device=device, dtype=dtype), tables)


# `torch` is the automatic choice, `triton` is taken only when forced.
ROPE = _backend.Op(OP, _backend.Backend("torch", _run_torch),
                   _backend.Backend("triton", _run_triton, _triton_reason, _triton_not_chosen), probe=_probe)


# ----------------------------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------------------------

def apply_rope_qkv(qkv: torch.Tensor, tables: RopeTables) -> torch.Tensor:
    """Rotate q and k of qkv [R, 3, H, Dh] by the tables' positions; v is passed through. Returns [R, 3, H, Dh].

    The tables have R rows, or R / B rows for B whole clips back to back (the dense path: one table of N rows
    serves every clip; no rows at all: empty tables). Computed in float32 (float64 for float64 qkv or tables) and
    rounded once to qkv's dtype; one elementwise expression over q and k together."""
    R, P = qkv.shape[0], tables.cos.shape[0]
    if qkv.dim() != 4 or qkv.shape[1] != 3 or qkv.shape[3] != tables.cos.shape[1] or (R % P if P else R):
        raise ValueError(f"apply_rope_qkv: qkv must be [R, 3, H, Dh] with R a multiple of the tables' rows "
                         f"{tuple(tables.cos.shape)}, got {tuple(qkv.shape)}")
    if torch.compiler.is_compiling():  # Inductor fuses the torch expression with its neighbours
        return _run_torch(qkv, tables.cos, tables.sin)
    return ROPE.choose(qkv.device.type).run(qkv, tables.cos, tables.sin)
