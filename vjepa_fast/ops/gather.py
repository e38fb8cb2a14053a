"""Masked token gather: packed[r] = tokens[b(r), n(r)] + pos[n(r)] for flat rows r = b * N + n.

This is step 3 of the packed layout (DESIGN.md): the context encoder's input for every (sample, mask) sequence,
built in one pass instead of a repeated int64 index_select followed by an add.

Its sibling `indexed_gather_add` (out[r] = src[src_rows[r]] + pos[pos_rows[r]], two independent index lists) is
step 5's layout: the predictor's [context rows ; mask token + pos per target] buffer in one pass.

Backends, fastest first: `cuda` (CUDA kernel of vjepa_fast._C), `cpu` (its C++ kernel), `reference`.
The fast paths add in fp32 and round once to the tokens' dtype; pos may be fp32 while the tokens are bf16/fp16
(the reference instead rounds pos to the tokens' dtype before adding, so it is at most one rounding less exact).
The position embedding is a fixed buffer in V-JEPA: no backend gives it a gradient, and a pos that requires grad is
rejected while autograd is recording.
"""
from __future__ import annotations

from typing import Optional

import torch

from vjepa_fast import _ext
from vjepa_fast.ops import _backend

OP = "gather"
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def masked_gather_reference(tokens: torch.Tensor, pos: Optional[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """The definition: tokens [B, N, D], pos [N, D] or None, rows int64 [R] with values in [0, B*N)."""
    B, N, D = tokens.shape
    out = tokens.reshape(B * N, D).index_select(0, rows)
    if pos is not None:
        out = out + pos.index_select(0, rows % N).to(out.dtype)
    return out


# ---- the C++/CUDA op: autograd and fake (meta) implementations, so torch.compile can trace it ----------------------

def _register_op() -> bool:
    if not (_ext.has_op("masked_gather") and _ext.has_op("masked_gather_backward")):
        return False

    @torch.library.register_fake("vjepa_fast::masked_gather")
    def _gather_fake(tokens, pos, rows, unique_rows=True):
        return tokens.new_empty((rows.shape[0], tokens.shape[2]))

    @torch.library.register_fake("vjepa_fast::masked_gather_backward")
    def _gather_backward_fake(grad, rows, batch, num_tokens, unique):
        return grad.new_empty((batch, num_tokens, grad.shape[1]))

    def _gather_setup(ctx, inputs, output):
        tokens, pos, rows = inputs[:3]
        ctx.save_for_backward(rows)
        ctx.batch, ctx.num_tokens = tokens.shape[0], tokens.shape[1]
        ctx.unique = inputs[3] if len(inputs) > 3 else True

    def _gather_backward(ctx, grad):
        if ctx.needs_input_grad[1]:
            raise RuntimeError("masked_gather: pos gets no gradient (it is a fixed buffer); pass pos.detach()")
        (rows,) = ctx.saved_tensors
        grad_tokens = None
        if ctx.needs_input_grad[0]:
            grad_tokens = torch.ops.vjepa_fast.masked_gather_backward(
                grad.contiguous(), rows, ctx.batch, ctx.num_tokens, ctx.unique)
        return grad_tokens, None, None, None

    torch.library.register_autograd("vjepa_fast::masked_gather", _gather_backward, setup_context=_gather_setup)

    # Double backward: the backward is a linear scatter, so its own gradient is a gather (without pos).
    def _scatter_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    def _scatter_backward(ctx, grad):
        (rows,) = ctx.saved_tensors
        return torch.ops.vjepa_fast.masked_gather(grad.contiguous(), None, rows, True), None, None, None, None

    torch.library.register_autograd("vjepa_fast::masked_gather_backward", _scatter_backward,
                                    setup_context=_scatter_setup)
    return True


_OP_REGISTERED = _register_op()


def _cpu_check(device: torch.device) -> Optional[str]:
    if device.type != "cpu":
        return "needs a CPU tensor"
    return _ext.unavailable_reason(device)


def _cuda_check(device: torch.device) -> Optional[str]:
    if device.type != "cuda":
        return "needs a CUDA tensor"
    return _ext.unavailable_reason(device)


_BACKENDS: dict[str, _backend.Check] = {"cuda": _cuda_check, "cpu": _cpu_check, "reference": _backend.always}


def _validate(tokens: torch.Tensor, pos: Optional[torch.Tensor], rows: torch.Tensor, check_range: bool) -> None:
    if tokens.dim() != 3:
        raise ValueError(f"masked_gather: tokens must be [B, N, D], got shape {tuple(tokens.shape)}")
    B, N, D = tokens.shape
    if tokens.dtype not in _DTYPES + (torch.float64,):
        raise ValueError(f"masked_gather: tokens must be fp32/bf16/fp16 (fp64: reference only), got {tokens.dtype}")
    if rows.dim() != 1 or rows.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"masked_gather: rows must be a 1-D int32/int64 tensor, got {rows.dtype} {tuple(rows.shape)}")
    if rows.device != tokens.device:
        raise ValueError(f"masked_gather: rows on {rows.device} but tokens on {tokens.device}")
    if pos is not None:
        if tokens.dtype == torch.float64 and pos.dtype != torch.float64:
            raise ValueError(f"masked_gather: fp64 tokens need fp64 pos, got {pos.dtype}")
        if tuple(pos.shape) != (N, D):
            raise ValueError(f"masked_gather: pos must be [N, D] = [{N}, {D}], got {tuple(pos.shape)}")
        if pos.device != tokens.device:
            raise ValueError(f"masked_gather: pos on {pos.device} but tokens on {tokens.device}")
        if pos.dtype not in (tokens.dtype, torch.float32) and tokens.dtype != torch.float64:
            raise ValueError(f"masked_gather: pos must have the tokens' dtype ({tokens.dtype}) or fp32, got {pos.dtype}")
        if pos.requires_grad and torch.is_grad_enabled():
            raise ValueError("masked_gather: pos gets no gradient (the position embedding is a fixed buffer); "
                             "pass pos.detach() or a buffer")
    if check_range and rows.numel() > 0:
        lo, hi = int(rows.min()), int(rows.max())
        if lo < 0 or hi >= B * N:
            raise IndexError(f"masked_gather: row index out of range [0, {B * N}): min {lo}, max {hi}")


def masked_gather(tokens: torch.Tensor, pos: Optional[torch.Tensor], rows: torch.Tensor,
                  check_range: Optional[bool] = None, unique_rows: bool = True) -> torch.Tensor:
    """Gather packed rows of `tokens` [B, N, D] and add their position embedding `pos` [N, D] (or None).

    rows: int32/int64 [R], flat indices b * N + n. Returns [R, D] in tokens.dtype; d(tokens) is a scatter-add.
    check_range: check that every row is in [0, B*N) (default: on CPU only; on GPU it costs a host sync, and
        without it the CUDA kernel fills the output row of an out-of-range index with NaN). Under torch.compile
        the Python check is skipped; the C++ CPU kernel and the reference still raise IndexError.
    unique_rows: picks the backward algorithm; both are correct for any rows and sum repeats in fp32.
        True (default): each destination row is written once, walking the list of rows that gathered it
        (no atomics; good when a row repeats a few times, e.g. M mask configurations packed together).
        False: accumulation with fp32 atomics on CUDA (for rows repeated very many times).
    """
    if check_range is None:
        check_range = _backend.check_indices_by_default(tokens.device)
    if torch.compiler.is_compiling():
        check_range = False  # a data-dependent check would break the graph
    _validate(tokens, pos, rows, check_range)
    if tokens.dtype == torch.float64:  # fp64 (tests, numerical checks) is the reference's alone
        forced = _backend.forced_backend(OP)
        if forced not in (None, "reference"):
            raise RuntimeError(f"gather: backend {forced!r} was forced but takes fp32/bf16/fp16, not fp64")
        backend = "reference"
    else:
        backend = _backend.choose(OP, tokens.device, _BACKENDS)
    rows = rows.long()
    if backend == "reference":
        return masked_gather_reference(tokens, pos, rows)
    # The kernels read rows of contiguous memory; copies here are no-ops for the usual contiguous inputs.
    return torch.ops.vjepa_fast.masked_gather(tokens.contiguous(), None if pos is None else pos.contiguous(),
                                              rows.contiguous(), unique_rows)


# ---- indexed_gather_add: out[r] = src[src_rows[r]] + pos[pos_rows[r]] ---------------------------------------------

def indexed_gather_add_reference(src: torch.Tensor, src_rows: torch.Tensor, pos: Optional[torch.Tensor],
                                 pos_rows: Optional[torch.Tensor]) -> torch.Tensor:
    """The definition: src [S, D], src_rows int64 [R] in [0, S), pos [P, D] or None, pos_rows int64 [R] in [0, P)."""
    out = src.index_select(0, src_rows)
    if pos is not None:
        out = out + pos.index_select(0, pos_rows).to(out.dtype)
    return out


def _register_indexed_op() -> bool:
    if not (_ext.has_op("indexed_gather_add") and _ext.has_op("indexed_gather_add_backward")):
        return False

    @torch.library.register_fake("vjepa_fast::indexed_gather_add")
    def _fake(src, src_rows, pos, pos_rows):
        return src.new_empty((src_rows.shape[0], src.shape[1]))

    @torch.library.register_fake("vjepa_fast::indexed_gather_add_backward")
    def _backward_fake(grad, src_rows, num_src_rows):
        return grad.new_empty((num_src_rows, grad.shape[1]))

    def _setup(ctx, inputs, output):
        src, src_rows = inputs[0], inputs[1]
        ctx.save_for_backward(src_rows)
        ctx.num_src_rows = src.shape[0]

    def _backward(ctx, grad):
        if ctx.needs_input_grad[2]:
            raise RuntimeError("indexed_gather_add: pos gets no gradient (it is a fixed buffer); pass pos.detach()")
        (src_rows,) = ctx.saved_tensors
        grad_src = None
        if ctx.needs_input_grad[0]:
            grad_src = torch.ops.vjepa_fast.indexed_gather_add_backward(grad.contiguous(), src_rows, ctx.num_src_rows)
        return grad_src, None, None, None

    torch.library.register_autograd("vjepa_fast::indexed_gather_add", _backward, setup_context=_setup)

    # Double backward: the backward is a linear scatter, so its own gradient is a gather (without pos).
    def _scatter_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    def _scatter_backward(ctx, grad):
        (src_rows,) = ctx.saved_tensors
        return torch.ops.vjepa_fast.indexed_gather_add(grad.contiguous(), src_rows, None, src_rows), None, None

    torch.library.register_autograd("vjepa_fast::indexed_gather_add_backward", _scatter_backward,
                                    setup_context=_scatter_setup)
    return True


_INDEXED_OP_REGISTERED = _register_indexed_op()


def _indexed_check(device_check: _backend.Check) -> _backend.Check:
    # An extension built before this op existed loads fine but lacks it: say so instead of an AttributeError.
    def check(device: torch.device) -> Optional[str]:
        reason = device_check(device)
        if reason is None and not _INDEXED_OP_REGISTERED:
            reason = "vjepa_fast._C has no indexed_gather_add (built from older sources); rebuild it"
        return reason
    return check


_INDEXED_BACKENDS: dict[str, _backend.Check] = {
    "cuda": _indexed_check(_cuda_check), "cpu": _indexed_check(_cpu_check), "reference": _backend.always}


def _check_index_list(name: str, idx: torch.Tensor, src: torch.Tensor) -> None:
    if not isinstance(idx, torch.Tensor) or idx.dim() != 1 or idx.dtype not in (torch.int32, torch.int64):
        what = f"{idx.dtype} {tuple(idx.shape)}" if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"indexed_gather_add: {name} must be a 1-D int32/int64 tensor, got {what}")
    if idx.device != src.device:
        raise ValueError(f"indexed_gather_add: {name} on {idx.device} but src on {src.device}")


def _check_in_range(name: str, idx: torch.Tensor, limit: int) -> None:
    if idx.numel() == 0:
        return
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= limit:
        raise IndexError(f"indexed_gather_add: {name} index out of range [0, {limit}): min {lo}, max {hi}")


def _validate_indexed(src: torch.Tensor, src_rows: torch.Tensor, pos: Optional[torch.Tensor],
                      pos_rows: Optional[torch.Tensor], check_range: bool) -> None:
    if not isinstance(src, torch.Tensor) or src.dim() != 2:
        raise ValueError(f"indexed_gather_add: src must be [S, D], got shape {tuple(getattr(src, 'shape', ()))}")
    if src.dtype not in _DTYPES + (torch.float64,):
        raise ValueError(f"indexed_gather_add: src must be fp32/bf16/fp16 (fp64: reference only), got {src.dtype}")
    _check_index_list("src_rows", src_rows, src)
    if pos is None:
        if pos_rows is not None:
            _check_index_list("pos_rows", pos_rows, src)  # not read, but a wrong type is still a mistake
    else:
        if pos_rows is None:
            raise ValueError("indexed_gather_add: pos is given but pos_rows is None")
        _check_index_list("pos_rows", pos_rows, src)
        if pos_rows.shape[0] != src_rows.shape[0]:
            raise ValueError(f"indexed_gather_add: pos_rows has {pos_rows.shape[0]} entries but src_rows "
                             f"{src_rows.shape[0]}: one position per output row")
        if pos.dim() != 2 or pos.shape[1] != src.shape[1]:
            raise ValueError(f"indexed_gather_add: pos must be [P, D] with D = {src.shape[1]}, got {tuple(pos.shape)}")
        if pos.device != src.device:
            raise ValueError(f"indexed_gather_add: pos on {pos.device} but src on {src.device}")
        if src.dtype == torch.float64 and pos.dtype != torch.float64:
            raise ValueError(f"indexed_gather_add: fp64 src needs fp64 pos, got {pos.dtype}")
        if pos.dtype not in (src.dtype, torch.float32):
            raise ValueError(f"indexed_gather_add: pos must have src's dtype ({src.dtype}) or fp32, got {pos.dtype}")
        if pos.requires_grad and torch.is_grad_enabled():
            raise ValueError("indexed_gather_add: pos gets no gradient (the position embedding is a fixed buffer); "
                             "pass pos.detach() or a buffer")
    if check_range:
        _check_in_range("src_rows", src_rows, src.shape[0])
        if pos is not None:
            _check_in_range("pos_rows", pos_rows, pos.shape[0])


def indexed_gather_add(src: torch.Tensor, src_rows: torch.Tensor, pos: Optional[torch.Tensor],
                       pos_rows: Optional[torch.Tensor], check_range: Optional[bool] = None) -> torch.Tensor:
    """out[r] = src[src_rows[r]] + pos[pos_rows[r]]: rows of `src` [S, D] plus rows of `pos` [P, D] (or None).

    src_rows, pos_rows: int32/int64 [R] (pos_rows may be None when pos is None). Returns [R, D] in src.dtype,
    added in fp32 and rounded once on the fast paths. d(src) is a scatter-add summed in fp32, so a row gathered
    many times (a mask token) gets the sum of all its copies' gradients; pos (a fixed buffer) gets none.
    check_range: as for masked_gather (default: on CPU only; unchecked, the CUDA kernel fills the output row of
    an out-of-range index with NaN). Under torch.compile the Python check is skipped; the C++ CPU kernel and the
    reference still raise IndexError.
    """
    if check_range is None:
        check_range = _backend.check_indices_by_default(src.device)
    if torch.compiler.is_compiling():
        check_range = False  # a data-dependent check would break the graph
    _validate_indexed(src, src_rows, pos, pos_rows, check_range)
    if src.dtype == torch.float64:  # fp64 (tests, numerical checks) is the reference's alone
        forced = _backend.forced_backend(OP)
        if forced not in (None, "reference"):
            raise RuntimeError(f"gather: backend {forced!r} was forced but takes fp32/bf16/fp16, not fp64")
        backend = "reference"
    else:
        backend = _backend.choose(OP, src.device, _INDEXED_BACKENDS)
    src_rows = src_rows.long()
    pos_rows = None if pos is None else pos_rows.long()
    if backend == "reference":
        return indexed_gather_add_reference(src, src_rows, pos, pos_rows)
    if pos is None:
        pos_rows = src_rows  # not read by the kernels; the schema wants a tensor
    # The kernels read rows of contiguous memory; copies here are no-ops for the usual contiguous inputs.
    return torch.ops.vjepa_fast.indexed_gather_add(src.contiguous(), src_rows.contiguous(),
                                                   None if pos is None else pos.contiguous(), pos_rows.contiguous())
