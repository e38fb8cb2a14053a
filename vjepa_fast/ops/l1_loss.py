"""L1 target loss: sum_r w[r] * sum_d |z[r, d] - LN(h[rows[r]])[d]| with LN the affine-free LayerNorm.

`row_weight` carries the averaging (1 / (num_masks * rows_of_that_mask * D), times the world size under data
parallelism), so the same op gives the objective's per-mask mean (docs/recipe.md) for any packing. Gradients flow
into z only: the target is the EMA encoder's output under stop-gradient, and the weights are constants.

Backends, fastest first: `triton` (one fused pass, vjepa_fast/ops/triton_l1_loss.py; docs/l1_loss.md), `reference`.
"""
from __future__ import annotations

import importlib.util
from typing import Optional

import torch
import torch.nn.functional as F

from vjepa_fast.ops import _backend, _triton

OP = "l1_loss"
LN_EPS = 1e-5  # F.layer_norm's default, as in the original V-JEPA objective
MAX_D = 8192   # the whole row lives in registers; ViT-g's 1408 needs BLOCK_D 2048, far below this


def l1_target_loss_reference(z: torch.Tensor, h: torch.Tensor, rows: torch.Tensor, row_weight: torch.Tensor,
                             eps: float = LN_EPS) -> torch.Tensor:
    """The definition: z [R, D] predictions, h [M, D] raw target-encoder rows, rows int64 [R], row_weight [R]."""
    D = z.shape[-1]
    with torch.no_grad():
        target = F.layer_norm(h.float(), (D,), eps=eps).index_select(0, rows)
    return (row_weight.float()[:, None] * (z.float() - target).abs()).sum()


# ----------------------------------------------------------------------------------------------------------------
# Backends (key: device type, row width D)
# ----------------------------------------------------------------------------------------------------------------

_HAS_TRITON = importlib.util.find_spec("triton") is not None


def _triton_reason(key) -> Optional[str]:
    """Why the Triton path cannot run on such inputs (None if it can): CUDA, or CPU under TRITON_INTERPRET=1."""
    device, D = key
    if not _HAS_TRITON:
        return "triton is not installed"
    if D > MAX_D:
        return f"the triton backend supports D <= {MAX_D}, got D = {D}"
    if device == "cuda":
        return None
    if device == "cpu":
        return None if _backend.INTERPRET else "CPU tensors need the Triton interpreter (TRITON_INTERPRET=1)"
    return f"needs a CUDA tensor, got {device}"


def _not_interpreted(key) -> Optional[str]:
    # Automatic choice never picks the (very slow) interpreter; forcing the backend does.
    return "the interpreter is used only when forced" if key[0] == "cpu" else None


def _run_triton(z, h, rows, row_weight, eps):
    _triton.load("triton_l1_loss")  # builds the kernel and registers the op on first use
    return torch.ops.vjepa_fast.l1_target_loss_fwd(z, h, rows, row_weight, float(eps))[0]


def _run_reference(z, h, rows, row_weight, eps):
    return l1_target_loss_reference(z, h, rows.long(), row_weight, eps)


def _probe(device: torch.device, dtype: torch.dtype, head_dim: int) -> None:
    z = torch.zeros(2, 8, device=device, dtype=dtype)
    l1_target_loss(z, torch.zeros_like(z), torch.tensor([0, 1], device=device), torch.ones(2, device=device))


L1_LOSS = _backend.Op(OP, _backend.Backend("triton", _run_triton, _triton_reason, _not_interpreted),
                      _backend.Backend("reference", _run_reference), probe=_probe)


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
    if check_range:
        _backend.check_index_range("l1_target_loss", "row", rows, h.shape[0])


def _validate_eps(eps) -> None:
    # LayerNorm divides by sqrt(var + eps): eps <= 0 gives NaN or Inf for a constant row instead of an error.
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < float("inf"):
        raise ValueError(f"l1_target_loss: eps must be a positive finite number, got {eps!r}")


def l1_target_loss(z: torch.Tensor, h: torch.Tensor, rows: torch.Tensor, row_weight: torch.Tensor,
                   eps: float = LN_EPS, check_range: bool | None = None) -> torch.Tensor:
    """L1 loss of z against affine-free-normalised target rows h[rows], weighted per row; an fp32 scalar.

    The index range is checked on CPU always and on GPU only when `check_range=True` (it costs a host sync);
    unchecked out-of-range rows make the Triton path return NaN rather than read out of bounds.
    """
    if check_range is None:
        check_range = _backend.check_indices_by_default(z.device)
    _validate(z, h, rows, row_weight, check_range)
    _validate_eps(eps)
    backend = L1_LOSS.choose((z.device.type, z.shape[1]))
    return backend.run(z, h.detach(), rows, row_weight.detach(), eps)
