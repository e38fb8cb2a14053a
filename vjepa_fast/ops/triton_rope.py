"""Triton kernel for V-JEPA 2's rotary q / k (models/rope.py has the layout and the definition).

One pass over the fused qkv [R, 3, H, Dh]: q and k are rotated, v is copied, every element read once (plus its
pair partner, the neighbouring channel, from cache), in float32, rounded once. The backward is the same kernel with
the transposed coefficients: for y_i = x_i c_i + x_(i^1) s_i, dx_j = dy_j c_j + dy_(j^1) s_(j^1).
Eager CUDA only (under torch.compile, Inductor fuses the torch expression itself); the `rope` op's `triton` backend.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rope_kernel(X, COS, SIN, OUT, R, P, HD: tl.constexpr, DH: tl.constexpr, BLOCK_R: tl.constexpr,
                 BLOCK_HD: tl.constexpr, BACKWARD: tl.constexpr):
    pid_r = tl.program_id(0)
    which = tl.program_id(1)  # 0 q, 1 k, 2 v
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_HD)
    mask = (rows < R)[:, None] & (cols < HD)[None, :]
    base = rows[:, None].to(tl.int64) * (3 * HD) + which * HD
    x = tl.load(X + base + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    xp = tl.load(X + base + (cols ^ 1)[None, :], mask=mask, other=0.0).to(tl.float32)
    d = cols % DH
    trow = (rows % P)[:, None].to(tl.int64) * DH
    c = tl.load(COS + trow + d[None, :], mask=mask, other=1.0)
    if BACKWARD:
        s = tl.load(SIN + trow + (d ^ 1)[None, :], mask=mask, other=0.0)
    else:
        s = tl.load(SIN + trow + d[None, :], mask=mask, other=0.0)
    is_v = which == 2
    c = tl.where(is_v, 1.0, c)
    s = tl.where(is_v, 0.0, s)
    tl.store(OUT + base + cols[None, :], (x * c + xp * s).to(OUT.dtype.element_ty), mask=mask)


def _launch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool) -> torch.Tensor:
    R, _, H, Dh = x.shape
    x = x.contiguous()
    out = torch.empty_like(x)
    if R == 0:
        return out
    HD = H * Dh
    block_hd = triton.next_power_of_2(HD)
    block_r = max(1, min(16, 4096 // block_hd))
    grid = (triton.cdiv(R, block_r), 3)
    _rope_kernel[grid](x, cos.contiguous(), sin.contiguous(), out, R, cos.shape[0], HD=HD, DH=Dh, BLOCK_R=block_r,
                       BLOCK_HD=block_hd, BACKWARD=backward)
    return out


class _RopeQKV(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return _launch(qkv, cos, sin, backward=False)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cos, sin = ctx.saved_tensors
        return _launch(grad, cos, sin, backward=True), None, None


def rope_qkv_triton(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """apply_rope_qkv's result (same arguments, tables as plain tensors) from one kernel launch, differentiable."""
    return _RopeQKV.apply(qkv, cos, sin)
