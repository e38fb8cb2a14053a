"""Variable-length (packed) non-causal self-attention over the fused qkv projection.

qkv [T, 3, H, Dh] holds the S sequences back to back; cu_seqlens (int32, [S + 1]) are their offsets. The output is
[T, H, Dh]. `uniform_len` marks the dense case (every sequence the same length, e.g. the target encoder over whole
clips), where a plain batched SDPA call is best.

Backends, fastest first on CUDA: `triton` (our kernels, vjepa_fast/ops/triton_flash_varlen.py), `flash_attn`,
`torch_varlen`, `xformers` (each when installed), `sdpa_padded` (the CPU default), `reference`. The dense case has
its own key, `dense_attention`, defaulting to `sdpa`. See docs/attention.md.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch
import torch.nn.functional as F

from vjepa_fast.ops import _backend

OP = "attention"
DENSE_OP = "dense_attention"


def varlen_attention_reference(qkv: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """The definition: one SDPA call per sequence (slow, obviously correct)."""
    T, _, H, Dh = qkv.shape
    out = qkv.new_empty(T, H, Dh)
    bounds = cu_seqlens.tolist()
    for s in range(len(bounds) - 1):
        a, b = bounds[s], bounds[s + 1]
        if b == a:
            continue
        q, k, v = qkv[a:b].permute(1, 2, 0, 3).unbind(0)  # each [H, L, Dh]
        out[a:b] = F.scaled_dot_product_attention(q, k, v).transpose(0, 1)
    return out


def _padding(cu_seqlens: torch.Tensor, max_seqlen: int, T: int):
    """Row maps between the packed [T] layout and a padded [S, L] one: (valid [S, L], src [S, L], dest [S*L]).

    Padded slots read row min(start + j, T - 1) and write to a dump row T, so nothing is out of range."""
    L = max(int(max_seqlen), 1)
    starts = cu_seqlens[:-1].long()
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    j = torch.arange(L, device=cu_seqlens.device)
    valid = j[None, :] < lens[:, None]
    src = (starts[:, None] + j[None, :]).clamp(max=max(T - 1, 0))
    dest = torch.where(valid, src, torch.full_like(src, T)).reshape(-1)
    return valid, src, dest


def _padded_qkv(qkv: torch.Tensor, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    T, _, H, Dh = qkv.shape
    S, L = src.shape
    padded = qkv.reshape(T, 3 * H * Dh).index_select(0, src.reshape(-1)).reshape(S, L, 3, H, Dh)
    return padded.permute(2, 0, 3, 1, 4).unbind(0)  # each [S, H, L, Dh]


def _padded_attention(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
    """Pad every sequence to max_seqlen, one batched SDPA with a key mask, unpad. No host sync, so it traces."""
    T, _, H, Dh = qkv.shape
    valid, src, dest = _padding(cu_seqlens, max_seqlen, T)
    S, L = valid.shape
    q, k, v = _padded_qkv(qkv, src)
    # Padded query rows attend to everything so that no softmax row is empty (their output is dropped below).
    mask = valid[:, None, None, :] | ~valid[:, None, :, None]
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [S, H, L, Dh]
    o = o.transpose(1, 2).reshape(S * L, H, Dh)
    return qkv.new_zeros(T + 1, H, Dh).index_copy(0, dest, o)[:T]


def _padded_attention_backward(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                               grad: torch.Tensor) -> torch.Tensor:
    """d(qkv) of _padded_attention, written out (custom-op bodies run below autograd, so no autograd.grad here).

    P = softmax(Q K^T s), dV = P^T dO, dS = P * (dO V^T - rowsum(dO V^T * P)), dQ = dS K s, dK = dS^T Q s."""
    T, _, H, Dh = qkv.shape
    valid, src, dest = _padding(cu_seqlens, max_seqlen, T)
    S, L = valid.shape
    work = torch.float32 if qkv.dtype in (torch.float16, torch.bfloat16) else qkv.dtype
    q, k, v = (t.to(work) for t in _padded_qkv(qkv, src))
    g = grad.index_select(0, src.reshape(-1)).reshape(S, L, H, Dh).transpose(1, 2).to(work)
    g = g * valid[:, None, :, None]  # padded query rows carry no gradient
    mask = valid[:, None, None, :] | ~valid[:, None, :, None]
    scale = Dh ** -0.5
    p = torch.softmax((q @ k.transpose(-1, -2) * scale).masked_fill(~mask, float("-inf")), dim=-1)
    dv = p.transpose(-1, -2) @ g
    dp = g @ v.transpose(-1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdim=True))
    dq = ds @ k * scale
    dk = ds.transpose(-1, -2) @ q * scale
    d = torch.stack([dq, dk, dv]).permute(1, 3, 0, 2, 4).reshape(S * L, 3, H, Dh)  # [S*L, 3, H, Dh]
    return qkv.new_zeros(T + 1, 3, H, Dh).index_copy(0, dest, d.to(qkv.dtype))[:T]


@torch.library.custom_op("vjepa_fast::padded_varlen_attention", mutates_args=())
def _padded_op(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
    return _padded_attention(qkv, cu_seqlens, max_seqlen)


@_padded_op.register_fake
def _(qkv, cu_seqlens, max_seqlen):
    T, _, H, Dh = qkv.shape
    return qkv.new_empty(T, H, Dh)


@torch.library.custom_op("vjepa_fast::padded_varlen_attention_backward", mutates_args=())
def _padded_backward_op(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                        grad: torch.Tensor) -> torch.Tensor:
    # Its own opaque op so that AOT autograd never traces into the padding (which reads max_seqlen as a Python int
    # and would specialise a compiled block to one max_seqlen, recompiling on every new batch).
    return _padded_attention_backward(qkv, cu_seqlens, max_seqlen, grad)


@_padded_backward_op.register_fake
def _(qkv, cu_seqlens, max_seqlen, grad):
    return torch.empty_like(qkv)


def _padded_setup(ctx, inputs, output):
    qkv, cu_seqlens, max_seqlen = inputs
    ctx.save_for_backward(qkv, cu_seqlens)
    ctx.max_seqlen = max_seqlen


def _padded_backward(ctx, grad):
    qkv, cu_seqlens = ctx.saved_tensors
    return _padded_backward_op(qkv, cu_seqlens, ctx.max_seqlen, grad.contiguous()), None, None


_padded_op.register_autograd(_padded_backward, setup_context=_padded_setup)


def _dense_sdpa(qkv: torch.Tensor, seqlen: int) -> torch.Tensor:
    T, _, H, Dh = qkv.shape
    q, k, v = qkv.reshape(T // seqlen, seqlen, 3, H, Dh).permute(2, 0, 3, 1, 4).unbind(0)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(T, H, Dh)


# ----------------------------------------------------------------------------------------------------------------
# Backends. Each runner takes (qkv, cu_seqlens, max_seqlen, deterministic); each check takes the qkv tensor and
# returns None when the backend can run on it, else the reason (reported when the backend is forced).

# Looked up once at import: find_spec is cheap (it imports nothing) and must not run under torch.compile's tracing.
_INSTALLED = {m: importlib.util.find_spec(m) is not None for m in ("triton", "flash_attn", "xformers")}
try:
    from torch.nn.attention.varlen import varlen_attn as _torch_varlen_attn  # torch >= 2.10
except ImportError:
    _torch_varlen_attn = None


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _kernels():
    # Imported on first use, not at the top: the kernels are built (compiled, or interpreted under
    # TRITON_INTERPRET=1) when that module is imported, and the CPU tests set the variable first.
    from vjepa_fast.ops import triton_flash_varlen

    return triton_flash_varlen


def _triton_reason(qkv: torch.Tensor) -> Optional[str]:
    if not _INSTALLED["triton"]:
        return "triton is not installed"
    Dh = qkv.shape[-1]
    if Dh > 128:
        return f"head dim {Dh} > 128 is not supported by the Triton kernels"
    if qkv.device.type == "cuda":
        if qkv.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            return f"dtype {qkv.dtype} is not supported (float16, bfloat16, float32)"
        return None
    if qkv.device.type != "cpu":
        return f"needs a CUDA tensor (or CPU under TRITON_INTERPRET=1), got {qkv.device.type}"
    if not _interpreter_on():
        return "CPU tensors need the Triton interpreter (set TRITON_INTERPRET=1)"
    if not _kernels().interpreted():
        return ("the kernels were already built for the GPU in this process (TRITON_INTERPRET was unset when "
                "vjepa_fast.ops.triton_flash_varlen was first imported)")
    if qkv.dtype not in (torch.float16, torch.float32):
        return f"the Triton interpreter runs float32/float16 only, got {qkv.dtype}"
    return None


def _triton_auto_reason(qkv: torch.Tensor) -> Optional[str]:
    # Automatic choice never picks the (very slow) interpreter; forcing the backend does.
    return "the interpreter is used only when forced" if qkv.device.type == "cpu" else _triton_reason(qkv)


def _dense_triton_auto_reason(qkv: torch.Tensor) -> Optional[str]:
    # Dense case: the kernel is chosen automatically only where it measured faster than SDPA (16-bit on CUDA).
    return _triton_auto_reason(qkv) or _cuda_16bit_reason(qkv)


def _cuda_16bit_reason(qkv: torch.Tensor) -> Optional[str]:
    if qkv.device.type != "cuda":
        return f"needs a CUDA tensor, got {qkv.device.type}"
    if qkv.dtype not in (torch.float16, torch.bfloat16):
        return f"needs float16/bfloat16, got {qkv.dtype}"
    return None


def _flash_attn_reason(qkv: torch.Tensor) -> Optional[str]:
    if not _INSTALLED["flash_attn"]:
        return "flash_attn is not installed (pip install flash-attn)"
    if qkv.shape[-1] % 8 != 0 or qkv.shape[-1] > 256:
        return f"head dim {qkv.shape[-1]} must be a multiple of 8 and <= 256"
    return _cuda_16bit_reason(qkv)


def _torch_varlen_reason(qkv: torch.Tensor) -> Optional[str]:
    if _torch_varlen_attn is None:
        return "torch.nn.attention.varlen.varlen_attn is not available in this torch"
    return _cuda_16bit_reason(qkv)


def _xformers_reason(qkv: torch.Tensor) -> Optional[str]:
    if not _INSTALLED["xformers"]:
        return "xformers is not installed"
    return None if qkv.device.type == "cuda" else f"needs a CUDA tensor, got {qkv.device.type}"


def _always(_qkv: torch.Tensor) -> Optional[str]:
    return None


def _run_triton(qkv, cu_seqlens, max_seqlen, deterministic):
    return _kernels().flash_varlen_attention(qkv, cu_seqlens, max_seqlen, deterministic=deterministic)


def _run_flash_attn(qkv, cu_seqlens, max_seqlen, deterministic):
    from flash_attn import flash_attn_varlen_qkvpacked_func

    return flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, deterministic=deterministic)


def _run_torch_varlen(qkv, cu_seqlens, max_seqlen, deterministic):
    q, k, v = qkv.unbind(1)
    return _torch_varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen)


def _run_xformers(qkv, cu_seqlens, max_seqlen, deterministic):
    from xformers.ops import fmha

    lens = [n for n in (cu_seqlens[1:] - cu_seqlens[:-1]).tolist() if n > 0]  # host sync: xformers wants a list
    if not lens:
        return qkv.new_empty(qkv.shape[0], qkv.shape[2], qkv.shape[3])
    bias = fmha.attn_bias.BlockDiagonalMask.from_seqlens(lens)
    q, k, v = qkv.unsqueeze(0).unbind(2)  # each [1, T, H, Dh]
    return fmha.memory_efficient_attention(q, k, v, attn_bias=bias)[0]


def _run_padded(qkv, cu_seqlens, max_seqlen, deterministic):
    return _padded_op(qkv, cu_seqlens, max_seqlen)


def _run_reference(qkv, cu_seqlens, max_seqlen, deterministic):
    return varlen_attention_reference(qkv, cu_seqlens)


def _run_dense_sdpa(qkv, cu_seqlens, max_seqlen, deterministic):
    return _dense_sdpa(qkv, max_seqlen)


def _run_dense_sdpa_cudnn(qkv, cu_seqlens, max_seqlen, deterministic):
    # SDPA restricted to its cuDNN kernel, which plain SDPA ranks last (forward only in training: the target pass)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return _dense_sdpa(qkv, max_seqlen)


# name -> (check, runner), fastest first on CUDA.
_VARLEN = {
    "triton": (_triton_reason, _run_triton),
    "flash_attn": (_flash_attn_reason, _run_flash_attn),
    "torch_varlen": (_torch_varlen_reason, _run_torch_varlen),
    "xformers": (_xformers_reason, _run_xformers),
    "sdpa_padded": (_always, _run_padded),
    "reference": (_always, _run_reference),
}
# The dense case (every sequence uniform_len long): one batched SDPA call is the default; `dense_attention` may be
# forced to any varlen backend (VJEPA_FAST_DENSE_ATTENTION_BACKEND or set_backend("dense_attention", name)).
# Automatic choice there: our kernel for 16-bit CUDA tensors, else one batched SDPA call. Measured on an H200 (bf16,
# 24 x 1568 tokens, 16 heads, Dh 64; benchmarks/results/2026-11-26-h200-be59aab.md) the target encoder's
# forward-only pass takes 0.76 ms in the Triton kernel vs 0.90 ms in SDPA's default (flash) kernel; SDPA's cuDNN
# kernel (0.67 ms) is faster still but is not what plain SDPA picks.
_DENSE = {"triton": _VARLEN["triton"], "sdpa": (_always, _run_dense_sdpa),
          **{k: v for k, v in _VARLEN.items() if k != "triton"},
          "sdpa_cudnn": (_cuda_16bit_reason, _run_dense_sdpa_cudnn)}  # forced only, until measured in training
BACKENDS = tuple(_VARLEN)
DENSE_BACKENDS = tuple(_DENSE)


def _choose(op: str, table: dict, qkv: torch.Tensor) -> str:
    """Pick a backend for this tensor (device, dtype and head dim all matter), automatic or forced (_backend)."""
    forced = _backend.forced_backend(op) is not None
    checks: dict[str, _backend.Check] = {}
    for name, (check, _) in table.items():
        if name == "triton" and not forced:
            check = _dense_triton_auto_reason if table is _DENSE else _triton_auto_reason
        checks[name] = (lambda _device, c=check: c(qkv))
    return _backend.choose(op, qkv.device, checks)


# ----------------------------------------------------------------------------------------------------------------
# Validation and the public entry point.


def _validate(qkv: torch.Tensor, cu_seqlens: torch.Tensor) -> None:
    if qkv.dim() != 4 or qkv.shape[1] != 3:
        raise ValueError(f"varlen_attention: qkv must be [T, 3, H, Dh], got {tuple(qkv.shape)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.dtype != torch.int32 or cu_seqlens.numel() < 2:
        raise ValueError(f"varlen_attention: cu_seqlens must be int32 [S + 1], got {cu_seqlens.dtype} "
                         f"{tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != qkv.device:
        raise ValueError(f"varlen_attention: cu_seqlens on {cu_seqlens.device} but qkv on {qkv.device}")


def _validate_lengths(qkv: torch.Tensor, max_seqlen, uniform_len) -> None:
    """Checks on Python integers only (no host sync)."""
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, (int, torch.SymInt)) or max_seqlen < 0:
        raise ValueError(f"varlen_attention: max_seqlen must be a non-negative int, got {max_seqlen!r}")
    if not qkv.is_floating_point():
        raise ValueError(f"varlen_attention: qkv must be floating point, got {qkv.dtype}")
    if uniform_len is not None:
        if isinstance(uniform_len, bool) or not isinstance(uniform_len, (int, torch.SymInt)) or uniform_len < 1:
            raise ValueError(f"varlen_attention: uniform_len must be a positive int, got {uniform_len!r}")
        if qkv.shape[0] % uniform_len != 0:
            raise ValueError(f"varlen_attention: uniform_len {uniform_len} does not divide T = {qkv.shape[0]}")


def _check_range(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, uniform_len) -> None:
    """Value checks on cu_seqlens (a host sync on GPU): offsets 0 .. T, non-decreasing, no length > max_seqlen."""
    T = qkv.shape[0]
    cu = cu_seqlens.cpu().long()
    lens = cu[1:] - cu[:-1]
    if int(cu[0]) != 0:
        raise ValueError(f"varlen_attention: cu_seqlens[0] must be 0, got {int(cu[0])}")
    if int(cu[-1]) != T:
        raise IndexError(f"varlen_attention: cu_seqlens[-1] = {int(cu[-1])} but qkv has T = {T} rows")
    if bool((lens < 0).any()):
        s = int((lens < 0).nonzero()[0])
        raise ValueError(f"varlen_attention: cu_seqlens must be non-decreasing (sequence {s} has length "
                         f"{int(lens[s])})")
    longest = int(lens.max())
    if longest > max_seqlen:
        raise ValueError(f"varlen_attention: a sequence has {longest} tokens > max_seqlen = {max_seqlen}")
    if uniform_len is not None and bool((lens != uniform_len).any()):
        raise ValueError(f"varlen_attention: uniform_len = {uniform_len} but cu_seqlens has other lengths")


def varlen_attention(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                     uniform_len: Optional[int] = None, *, deterministic: bool = False,
                     check_range: Optional[bool] = None) -> torch.Tensor:
    """Attention within each packed sequence; qkv [T, 3, H, Dh] -> [T, H, Dh] (scale Dh^-0.5, non-causal).

    `uniform_len` marks the dense case (all sequences that long). `deterministic` asks the backward for bitwise
    repeatable gradients (triton: no atomics; flash_attn: its deterministic mode). The cu_seqlens values are checked
    on CPU (outside torch.compile) and on GPU only when `check_range=True` (it costs a host sync); unchecked bad
    offsets cannot make the Triton kernels read or write out of bounds, but rows outside every sequence are left
    unwritten. Backends and how to force one: docs/attention.md.
    """
    _validate(qkv, cu_seqlens)
    _validate_lengths(qkv, max_seqlen, uniform_len)
    if check_range is None:
        # Never while torch.compile traces: reading the offsets' values would break the graph.
        check_range = _backend.check_indices_by_default(qkv.device) and not torch.compiler.is_compiling()
    if check_range:
        _check_range(qkv, cu_seqlens, max_seqlen, uniform_len)
    if uniform_len is not None:
        backend = _choose(DENSE_OP, _DENSE, qkv)
        return _DENSE[backend][1](qkv, cu_seqlens, uniform_len, deterministic)
    backend = _choose(OP, _VARLEN, qkv)
    return _VARLEN[backend][1](qkv, cu_seqlens, max_seqlen, deterministic)
