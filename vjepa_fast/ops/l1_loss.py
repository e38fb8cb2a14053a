"""L1 target loss: sum_r w[r] * sum_d |z[r, d] - LN(h[rows[r]])[d]| with LN the affine-free LayerNorm.

`row_weight` carries the averaging (1 / (num_masks * rows_of_that_mask * D), times the world size under data
parallelism), so the same op gives the RECIPE's per-mask mean for any packing. Gradients flow into z only: the
target is the EMA encoder's output under stop-gradient, and the weights are constants.

Fast path (kernel 3 of DESIGN.md): one Triton program per block of rows gathers its target rows, normalises them in
registers, accumulates w * |z - hn| and writes sign(z - hn) in the same pass, because the target is constant.
Backward is then one scale of that sign by w * (the incoming scalar gradient), computed in fp32 and rounded once to
z's dtype, exactly as the reference's autograd rounds it (storing w * sign in bf16 and scaling that would round twice).
The normalised target is never materialised.
Per-program partial sums are reduced by torch (no atomics), so the loss is deterministic.

Triton is imported lazily, and the kernel is built on first use: `@triton.jit` decides at decoration time whether
the kernel is compiled or interpreted (TRITON_INTERPRET=1, used by the CPU tests), so building it at import would
freeze whatever the environment was when some other module first imported the package.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch
import torch.nn.functional as F

from vjepa_fast.ops import _backend

OP = "l1_loss"
OP_NAME = "vjepa_fast::l1_target_loss_fwd"
LN_EPS = 1e-5  # F.layer_norm's default, as in the reference objective
MAX_D = 8192   # the whole row lives in registers; ViT-g's 1408 needs BLOCK_D 2048, far below this


def l1_target_loss_reference(z: torch.Tensor, h: torch.Tensor, rows: torch.Tensor, row_weight: torch.Tensor,
                             eps: float = LN_EPS) -> torch.Tensor:
    """The definition: z [R, D] predictions, h [M, D] raw target-encoder rows, rows int64 [R], row_weight [R]."""
    D = z.shape[-1]
    with torch.no_grad():
        target = F.layer_norm(h.float(), (D,), eps=eps).index_select(0, rows)
    return (row_weight.float()[:, None] * (z.float() - target).abs()).sum()


# ----------------------------------------------------------------------------------------------------------------
# Triton fast path
# ----------------------------------------------------------------------------------------------------------------

tl = None  # triton.language, bound by _build() (lazy import, see the module docstring)
_KERNEL = None  # the jitted (or interpreted) kernel, built once per process by _build()
_INTERPRETED: Optional[bool] = None  # how _KERNEL was built
_OP = None  # the registered torch op (OpOverload), None until _build()


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


def _launch(z: torch.Tensor, h: torch.Tensor, rows: torch.Tensor, row_weight: torch.Tensor, eps: float,
            sgn: torch.Tensor, partials: torch.Tensor) -> None:
    """Run the kernel into caller-provided buffers (the tests poison them to catch unwritten elements)."""
    from torch.library import wrap_triton

    R, D = z.shape
    block_r, block_d, num_warps = _tile(D)
    # wrap_triton makes the launch traceable for torch.compile; an interpreted kernel is called directly (older
    # torch rejects it in wrap_triton, and the interpreted op is registered as an opaque custom op anyway).
    kernel = _KERNEL if _INTERPRETED else wrap_triton(_KERNEL)
    kernel[(partials.shape[0],)](z, h, rows, row_weight, sgn, partials, R, h.shape[0], D, z.stride(0), h.stride(0),
                                 sgn.stride(0), EPS=float(eps), BLOCK_R=block_r, BLOCK_D=block_d,
                                 num_warps=num_warps)


def _num_programs(R: int, D: int) -> int:
    return -(-R // _tile(D)[0])


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
    partials = torch.empty(_num_programs(R, D), dtype=torch.float32, device=z.device)
    _launch(z, h, rows, row_weight, eps, sgn, partials)
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
    # rounding is the final one to z's dtype (as in the reference). One elementwise pass, fused under compile.
    scale = row_weight.float()[:, None] * grad_loss.float()
    return (sgn * scale).to(sgn.dtype), None, None, None, None


def _build():
    """Import triton, jit the kernel and register the op; once per process (see the module docstring)."""
    global tl, _KERNEL, _INTERPRETED, _OP
    if _OP is not None:
        return _OP
    import triton
    import triton.language as language

    tl = language
    _INTERPRETED = _interpreter_on()
    _KERNEL = triton.jit(_l1_fwd_kernel)
    if _INTERPRETED:
        # The interpreter cannot run on fake tensors, so torch.compile must see an opaque op with a fake kernel.
        op = torch.library.custom_op(OP_NAME, _fwd_impl, mutates_args=())
        op.register_fake(_fwd_fake)
    else:
        # triton_op: torch.compile traces into _fwd_impl and sees the kernel (fake kernel derived automatically).
        op = torch.library.triton_op(OP_NAME, _fwd_impl, mutates_args=())
    op.register_autograd(_backward, setup_context=_setup_context)
    _OP = torch.ops.vjepa_fast.l1_target_loss_fwd.default
    return _OP


@torch.compiler.assume_constant_result
def _ensure_built() -> bool:
    """_build() for the public entry point. Under torch.compile, dynamo runs this at trace time instead of tracing
    into triton and torch.library, so even a first call inside a fullgraph compile needs no graph break."""
    _build()
    return True


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


_HAS_TRITON: Optional[bool] = None


def _triton_reason(device: torch.device) -> Optional[str]:
    """Why the Triton path cannot run on `device` (None if it can): CUDA, or CPU under TRITON_INTERPRET=1."""
    global _HAS_TRITON
    if _HAS_TRITON is None:
        _HAS_TRITON = importlib.util.find_spec("triton") is not None
    if not _HAS_TRITON:
        return "triton is not installed"
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if _INTERPRETED is False:
            return "the kernel was already built for the GPU in this process (TRITON_INTERPRET was unset)"
        if _INTERPRETED or _interpreter_on():
            return None
        return "CPU tensors need the Triton interpreter (TRITON_INTERPRET=1)"
    return f"needs a CUDA tensor, got {device.type}"


def _triton_auto_reason(device: torch.device) -> Optional[str]:
    # Automatic choice never picks the (very slow) interpreter; forcing the backend does.
    return "the interpreter is used only when forced" if device.type == "cpu" else _triton_reason(device)


_BACKENDS: dict[str, _backend.Check] = {"triton": _triton_reason, "reference": _backend.always}
_AUTO_BACKENDS: dict[str, _backend.Check] = {"triton": _triton_auto_reason, "reference": _backend.always}


def _choose(device: torch.device, D: int) -> str:
    forced = _backend.forced_backend(OP) is not None
    name = _backend.choose(OP, device, _BACKENDS if forced else _AUTO_BACKENDS)
    if name == "triton" and D > MAX_D:
        if forced:
            raise ValueError(f"l1_target_loss: the triton backend supports D <= {MAX_D}, got D = {D}")
        name = "reference"
    return name


# ----------------------------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------------------------

def _validate(z: torch.Tensor, h: torch.Tensor, rows: torch.Tensor, row_weight: torch.Tensor, check_range: bool):
    if z.dim() != 2 or h.dim() != 2 or z.shape[1] != h.shape[1]:
        raise ValueError(f"l1_target_loss: z [R, D] and h [M, D] expected, got {tuple(z.shape)} and {tuple(h.shape)}")
    if rows.shape != (z.shape[0],) or row_weight.shape != (z.shape[0],):
        raise ValueError(f"l1_target_loss: rows and row_weight must be [R={z.shape[0]}], got "
                         f"{tuple(rows.shape)} and {tuple(row_weight.shape)}")
    if rows.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"l1_target_loss: rows must be int32/int64, got {rows.dtype}")
    for name, t in (("z", z), ("h", h), ("row_weight", row_weight)):
        if not t.is_floating_point():
            raise ValueError(f"l1_target_loss: {name} must be a floating-point tensor, got {t.dtype}")
    for name, t in (("h", h), ("rows", rows), ("row_weight", row_weight)):
        if t.device != z.device:
            raise ValueError(f"l1_target_loss: {name} on {t.device} but z on {z.device}")
    if check_range and rows.numel() > 0:
        lo, hi = int(rows.min()), int(rows.max())
        if lo < 0 or hi >= h.shape[0]:
            raise IndexError(f"l1_target_loss: row index out of range [0, {h.shape[0]}): min {lo}, max {hi}")


def l1_target_loss(z: torch.Tensor, h: torch.Tensor, rows: torch.Tensor, row_weight: torch.Tensor,
                   eps: float = LN_EPS, check_range: bool | None = None) -> torch.Tensor:
    """L1 loss of z against affine-free-normalised target rows h[rows], weighted per row; an fp32 scalar.

    The index range is checked on CPU always and on GPU only when `check_range=True` (it costs a host sync);
    unchecked out-of-range rows make the Triton path return NaN rather than read out of bounds.
    """
    if check_range is None:
        check_range = _backend.check_indices_by_default(z.device)
    _validate(z, h, rows, row_weight, check_range)
    backend = _choose(z.device, z.shape[1])
    if backend == "triton":
        _ensure_built()
        return torch.ops.vjepa_fast.l1_target_loss_fwd(z, h.detach(), rows, row_weight.detach(), float(eps))[0]
    return l1_target_loss_reference(z, h.detach(), rows.long(), row_weight.detach(), eps)
