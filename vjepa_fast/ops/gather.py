"""Row gather with an added position embedding: out[r] = src[src_rows[r]] + pos[pos_rows[r]], in one pass.

The packed layout uses it twice (docs/architecture.md):
- the context encoder's input: src = the clips' patch tokens [B * N, D], src_rows = the packed context rows b * N + n,
  pos = the position table [N, D], pos_rows = n (`unique_rows=True`: a token is gathered at most once per mask);
- the predictor's buffer: src = [projected context rows ; mask tokens], one slot per (sequence, token), pos = the
  predictor's table (a mask token is gathered once per target row: the accumulating backward).

Backends, fastest first: `cuda` (CUDA kernel of vjepa_fast._C), `cpu` (its C++ kernel), `reference`.
The fast paths add in fp32 and round once to src's dtype; pos may be fp32 while src is bf16/fp16 (the plain
definition instead rounds pos to src's dtype before adding, so it is at most one rounding less exact). fp64 inputs
(numerical checks) run on `reference` only. The position embedding is a fixed buffer in V-JEPA: no backend gives it
a gradient, and a pos that requires grad is rejected while autograd is recording.
"""
from __future__ import annotations

from typing import Optional

import torch

from vjepa_fast import _ext
from vjepa_fast.ops import _backend

OP = "gather"
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def indexed_gather_add_reference(src: torch.Tensor, src_rows: torch.Tensor, pos: Optional[torch.Tensor],
                                 pos_rows: Optional[torch.Tensor]) -> torch.Tensor:
    """The definition: src [S, D], src_rows int64 [R] in [0, S), pos [P, D] or None, pos_rows int64 [R] in [0, P)."""
    out = src.index_select(0, src_rows)
    if pos is not None:
        out = out + pos.index_select(0, pos_rows).to(out.dtype)
    return out


# ---- the C++/CUDA op: autograd and fake (meta) implementations, so torch.compile can trace it ----------------------

def _register_op() -> bool:
    if not (_ext.has_op("indexed_gather_add") and _ext.has_op("indexed_gather_add_backward")):
        return False

    @torch.library.register_fake("vjepa_fast::indexed_gather_add")
    def _fake(src, src_rows, pos, pos_rows, unique_rows=False):
        return src.new_empty((src_rows.shape[0], src.shape[1]))

    @torch.library.register_fake("vjepa_fast::indexed_gather_add_backward")
    def _backward_fake(grad, src_rows, num_src_rows, unique_rows):
        return grad.new_empty((num_src_rows, grad.shape[1]))

    def _setup(ctx, inputs, output):
        src, src_rows = inputs[0], inputs[1]
        ctx.save_for_backward(src_rows)
        ctx.num_src_rows = src.shape[0]
        ctx.unique_rows = inputs[4] if len(inputs) > 4 else False

    def _backward(ctx, grad):
        if ctx.needs_input_grad[2]:
            raise RuntimeError("indexed_gather_add: pos gets no gradient (it is a fixed buffer); pass pos.detach()")
        (src_rows,) = ctx.saved_tensors
        grad_src = None
        if ctx.needs_input_grad[0]:
            grad_src = torch.ops.vjepa_fast.indexed_gather_add_backward(grad.contiguous(), src_rows, ctx.num_src_rows,
                                                                       ctx.unique_rows)
        return grad_src, None, None, None, None

    torch.library.register_autograd("vjepa_fast::indexed_gather_add", _backward, setup_context=_setup)

    # Double backward: the backward is a linear scatter, so its own gradient is a gather (without pos).
    def _scatter_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    def _scatter_backward(ctx, grad):
        (src_rows,) = ctx.saved_tensors
        return (torch.ops.vjepa_fast.indexed_gather_add(grad.contiguous(), src_rows, None, src_rows),
                None, None, None)

    torch.library.register_autograd("vjepa_fast::indexed_gather_add_backward", _scatter_backward,
                                    setup_context=_scatter_setup)
    return True


_OP_REGISTERED = _register_op()


def _kernel_reason(key, device: str) -> Optional[str]:
    if key[0] != device:
        return f"needs a {device.upper()} tensor"
    if key[1] not in _DTYPES:
        return f"takes fp32/bf16/fp16, not {key[1]}"
    reason = _ext.unavailable_reason(torch.device(device))
    if reason is None and not _OP_REGISTERED:
        reason = "vjepa_fast._C has no indexed_gather_add (built from older sources); rebuild it"
    return reason


def _run_kernel(src, src_rows, pos, pos_rows, unique_rows):
    if pos is None:
        pos_rows = src_rows  # not read by the kernels; the schema wants a tensor
    # The kernels read rows of contiguous memory; copies here are no-ops for the usual contiguous inputs.
    return torch.ops.vjepa_fast.indexed_gather_add(src.contiguous(), src_rows.contiguous(),
                                                   None if pos is None else pos.contiguous(), pos_rows.contiguous(),
                                                   unique_rows)


def _run_reference(src, src_rows, pos, pos_rows, unique_rows):
    return indexed_gather_add_reference(src, src_rows, pos, pos_rows)


def _probe(device: torch.device, dtype: torch.dtype, head_dim: int) -> None:
    indexed_gather_add(torch.zeros(2, 8, device=device, dtype=dtype), torch.tensor([1, 0], device=device), None, None)


GATHER = _backend.Op(OP, _backend.Backend("cuda", _run_kernel, lambda key: _kernel_reason(key, "cuda")),
                     _backend.Backend("cpu", _run_kernel, lambda key: _kernel_reason(key, "cpu")),
                     _backend.Backend("reference", _run_reference), probe=_probe)


def _check_index_list(name: str, idx: torch.Tensor, src: torch.Tensor) -> None:
    if not isinstance(idx, torch.Tensor) or idx.dim() != 1 or idx.dtype not in (torch.int32, torch.int64):
        what = f"{idx.dtype} {tuple(idx.shape)}" if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"indexed_gather_add: {name} must be a 1-D int32/int64 tensor, got {what}")
    if idx.device != src.device:
        raise ValueError(f"indexed_gather_add: {name} on {idx.device} but src on {src.device}")


def _validate(src: torch.Tensor, src_rows: torch.Tensor, pos: Optional[torch.Tensor],
              pos_rows: Optional[torch.Tensor]) -> None:
    if not isinstance(src, torch.Tensor) or src.dim() != 2:
        raise ValueError(f"indexed_gather_add: src must be [S, D], got shape {tuple(getattr(src, 'shape', ()))}")
    if src.dtype not in _DTYPES + (torch.float64,):
        raise ValueError(f"indexed_gather_add: src must be fp32/bf16/fp16 (fp64: the reference backend only), "
                         f"got {src.dtype}")
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


def _check_ranges(src: torch.Tensor, src_rows: torch.Tensor, pos: Optional[torch.Tensor],
                  pos_rows: Optional[torch.Tensor]) -> None:
    _backend.check_index_range("indexed_gather_add", "src_rows", src_rows, src.shape[0])
    if pos is not None:
        _backend.check_index_range("indexed_gather_add", "pos_rows", pos_rows, pos.shape[0])


def indexed_gather_add(src: torch.Tensor, src_rows: torch.Tensor, pos: Optional[torch.Tensor],
                       pos_rows: Optional[torch.Tensor], check_range: Optional[bool] = None,
                       unique_rows: bool = False) -> torch.Tensor:
    """out[r] = src[src_rows[r]] + pos[pos_rows[r]]: rows of `src` [S, D] plus rows of `pos` [P, D] (or None).

    src_rows, pos_rows: int32/int64 [R] (pos_rows may be None when pos is None). Returns [R, D] in src.dtype,
    added in fp32 and rounded once on the fast paths. d(src) is a scatter-add summed in fp32, so a row gathered
    many times (a mask token) gets the sum of all its copies' gradients; pos (a fixed buffer) gets none.
    check_range: check every index against its table (default: on the CPU always, on a GPU in debug mode only,
        `train.check_indices`, since it costs a host sync; unchecked, the CUDA kernel fills the output row of an
        out-of-range index with NaN, and the C++ CPU kernel and the plain definition raise IndexError). Under
        torch.compile it runs as a traced assertion (_backend.check_index_range).
    unique_rows: picks the backward algorithm; both are correct for any rows and sum repeats in fp32.
        True: each destination row is written once, walking the list of rows that gathered it (no atomics; good
        when a row repeats a few times). False (default): accumulation (for rows repeated very many times).
    """
    if check_range is None:
        check_range = _backend.check_indices_by_default(src.device)
    _validate(src, src_rows, pos, pos_rows)
    backend = GATHER.choose((src.device.type, src.dtype))
    # The C++ CPU kernel checks both index lists itself (the same IndexError), so a Python pass would only repeat it.
    if check_range and (backend.name != "cpu" or torch.compiler.is_compiling()):
        _check_ranges(src, src_rows, pos, pos_rows)
    return backend.run(src, src_rows.long(), pos, None if pos is None else pos_rows.long(), unique_rows)
