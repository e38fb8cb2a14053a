"""The Triton kernel of the L1 target loss (vjepa_fast.ops.l1_loss) and its torch op.

One program per block of rows gathers its target rows, normalises them in registers, accumulates w * |z - hn| and
writes sign(z - hn) in the same pass, because the target is constant. Backward is then one scale of that sign by
w * (the incoming scalar gradient), computed in fp32 and rounded once to z's dtype, exactly as the plain definition's
autograd rounds it (storing w * sign in bf16 and scaling that would round twice). The normalised target is never
materialised. Per-program partial sums are reduced by torch (no atomics), so the loss is deterministic.

Import it through `vjepa_fast.ops._triton.load` (l1_loss.py does): the kernel is built compiled or interpreted as the
process decided at import.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from vjepa_fast.ops._triton import launch, register


@triton.jit
def _l1_fwd_kernel(z_ptr, h_ptr, rows_ptr, w_ptr, sgn_ptr, partial_ptr, R, M, D, stride_z, stride_h, stride_sgn,
                   EPS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    # EPS is a compile-time constant: a float argument may arrive as fp64 under torch.compile, which sqrt_rn refuses.
    pid = tl.program_id(0)
    r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    d = tl.arange(0, BLOCK_D)
    rmask = r < R
    dmask = d < D
    m = rmask[:, None] & dmask[None, :]

    src = tl.load(rows_ptr + r, mask=rmask, other=0).to(tl.int64)
    # An out-of-range index (possible when the caller skipped the host-side check to avoid a sync) must neither
    # read out of bounds nor pass silently: its row is not loaded and its target becomes NaN, so the loss and the
    # gradient are NaN.
    bad = (src < 0) | (src >= M)
    w = tl.load(w_ptr + r, mask=rmask, other=0.0).to(tl.float32)

    h = tl.load(h_ptr + src[:, None] * stride_h + d[None, :], mask=m & ~bad[:, None], other=0.0).to(tl.float32)
    mean = tl.sum(h, axis=1) / D
    hc = tl.where(m, h - mean[:, None], 0.0)  # padded columns would otherwise add mean^2 to the variance
    var = tl.sum(hc * hc, axis=1) / D  # biased, as LayerNorm; two passes over registers, no cancellation
    rstd = 1.0 / tl.sqrt_rn(var + EPS)
    hn = tl.where(bad[:, None], float("nan"), hc * rstd[:, None])

    offs_r = r.to(tl.int64)[:, None]
    z = tl.load(z_ptr + offs_r * stride_z + d[None, :], mask=m, other=0.0).to(tl.float32)
    diff = z - hn
    # sign with sign(0) = 0 (torch's abs gradient) and NaN kept NaN (diff * 0 is 0 for finite diff, NaN for NaN).
    sgn = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, diff * 0.0))
    tl.store(sgn_ptr + offs_r * stride_sgn + d[None, :], sgn.to(sgn_ptr.dtype.element_ty), mask=m)

    row_abs = tl.sum(tl.where(m, tl.abs(diff), 0.0), axis=1)
    tl.store(partial_ptr + pid, tl.sum(w * row_abs, axis=0))


def _tile(D: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_D, num_warps): a tile of about 4096 elements, so each thread holds ~16 values per tensor."""
    block_d = 1 << max(D - 1, 0).bit_length()
    block_r = max(1, min(16, 4096 // block_d))
    num_warps = max(1, min(16, block_r * block_d // 512))
    return block_r, block_d, num_warps


def _fwd_impl(z: torch.Tensor, h: torch.Tensor, rows: torch.Tensor, row_weight: torch.Tensor,
              eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    # The kernel indexes columns with unit stride; row strides are passed through.
    z = z if z.stride(-1) == 1 else z.contiguous()
    h = h if h.stride(-1) == 1 else h.contiguous()
    rows, row_weight = rows.contiguous(), row_weight.contiguous()
    R, D = z.shape
    sgn = torch.empty((R, D), dtype=z.dtype, device=z.device)  # -1, 0, +1 (NaN for a bad row): exact in any dtype
    if R == 0 or D == 0:
        return torch.zeros((), dtype=torch.float32, device=z.device), sgn
    block_r, block_d, num_warps = _tile(D)
    partials = torch.empty(triton.cdiv(R, block_r), dtype=torch.float32, device=z.device)  # one per program
    launch(_l1_fwd_kernel, (partials.shape[0],), z, h, rows, row_weight, sgn, partials, R, h.shape[0], D,
           z.stride(0), h.stride(0), sgn.stride(0), EPS=float(eps), BLOCK_R=block_r, BLOCK_D=block_d,
           num_warps=num_warps)
    return partials.sum(), sgn


def _fwd_fake(z: torch.Tensor, h: torch.Tensor, rows: torch.Tensor, row_weight: torch.Tensor,
              eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return z.new_empty((), dtype=torch.float32), torch.empty(z.shape, dtype=z.dtype, device=z.device)


def _setup_context(ctx, inputs, output) -> None:
    sgn = output[1]
    ctx.save_for_backward(sgn, inputs[3])  # the sign and row_weight
    ctx.mark_non_differentiable(sgn)


def _backward(ctx, grad_loss: torch.Tensor, _grad_sgn):
    sgn, row_weight = ctx.saved_tensors
    # d(loss)/dz = w * sign(z - hn) * upstream: the [R, 1] fp32 factor promotes the product to fp32, so the only
    # rounding is the final one to z's dtype (as in the plain definition). One elementwise pass, fused under compile.
    scale = row_weight.float()[:, None] * grad_loss.float()
    return (sgn * scale).to(sgn.dtype), None, None, None, None



_l1_op = register("vjepa_fast::l1_target_loss_fwd", _fwd_impl, _fwd_fake)
_l1_op.register_autograd(_backward, setup_context=_setup_context)
