"""Triton kernel for V-JEPA 2's rotary q / k (ops/rope.py has the layout, the definition and the
op; models/rope.py builds the tables).

One pass over the fused qkv [R, 3, H, Dh]: q and k are rotated, v is copied bit for bit, every element read once
(plus its pair partner, the neighbouring channel of the same head, from cache), in the working dtype (float32, or
float64 when qkv or the tables are float64, as the torch path), rounded once. The backward is the same kernel with
the transposed coefficients: for y_j = x_j c_j + x_p(j) s_j, dx_j = dy_j c_j + dy_p(j) s_p(j), where p(j) = j ^ 1 is
the partner channel within the head (an odd head dim's last channel, which is never rotated, is its own partner).
Eager only (under torch.compile, Inductor fuses the torch expression itself); the `rope` op's `triton` backend.
Import it through `vjepa_fast.ops._triton.load`, which builds the kernel compiled or interpreted for the process.
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
    cols = tl.arange(0, BLOCK_HD)  # h * DH + d over the row's H heads
    mask = (rows < R)[:, None] & (cols < HD)[None, :]
    base = rows[:, None].to(tl.int64) * (3 * HD) + which * HD
    x = tl.load(X + base + cols[None, :], mask=mask, other=0.0)
    if which == 2:  # v: a copy, whatever its values (inf * 0 would turn a neighbour into NaN)
        tl.store(OUT + base + cols[None, :], x, mask=mask)
    else:
        work = COS.dtype.element_ty  # the host passes tables in the working dtype
        d = cols % DH
        # the pair partner within the head; flipping the low bit of h * DH + d would cross heads when DH is odd
        pd = tl.where((d ^ 1) < DH, d ^ 1, d)
        partner = cols - d + pd
        xp = tl.load(X + base + partner[None, :], mask=mask, other=0.0).to(work)
        trow = (rows % P)[:, None].to(tl.int64) * DH
        c = tl.load(COS + trow + d[None, :], mask=mask, other=1.0)
        if BACKWARD:
            s = tl.load(SIN + trow + pd[None, :], mask=mask, other=0.0)
        else:
            s = tl.load(SIN + trow + d[None, :], mask=mask, other=0.0)
        tl.store(OUT + base + cols[None, :], (x.to(work) * c + xp * s).to(OUT.dtype.element_ty), mask=mask)


def rope_qkv_into(out: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  backward: bool = False) -> torch.Tensor:
    """Write the rotation of x [R, 3, H, Dh] (contiguous) by the tables cos / sin [P, Dh] (contiguous, in the
    working dtype; row r uses table row r % P) into `out` (contiguous, x's shape and dtype), and return it.
    backward=True applies the transpose (x is then the gradient of the output)."""
    R, _, H, Dh = x.shape
    if R == 0:
        return out
    HD = H * Dh
    block_hd = triton.next_power_of_2(HD)
    block_r = max(1, min(16, 4096 // block_hd))
    grid = (triton.cdiv(R, block_r), 3)
    _rope_kernel[grid](x, cos, sin, out, R, cos.shape[0], HD=HD, DH=Dh, BLOCK_R=block_r, BLOCK_HD=block_hd,
                       BACKWARD=backward)
    return out


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool) -> torch.Tensor:
    x = x.contiguous()
    return rope_qkv_into(torch.empty_like(x), x, cos, sin, backward)


class _RopeQKV(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(qkv, cos, sin, backward=False)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, sin, backward=True), None, None


def working_tables(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The tables in the dtype the rotation is computed in (as the torch path: float32 for 16/32-bit inputs,
    float64 when qkv or the tables are float64), contiguous."""
    work = torch.promote_types(torch.promote_types(qkv.dtype, cos.dtype), torch.float32)
    return cos.to(work).contiguous(), sin.to(work).contiguous()


def rope_qkv_triton(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """apply_rope_qkv's result (same arguments, tables as plain tensors) from one kernel launch, differentiable."""
    return _RopeQKV.apply(qkv, *working_tables(qkv, cos, sin))
