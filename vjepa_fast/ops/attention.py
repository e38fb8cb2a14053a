"""Variable-length (packed) non-causal self-attention over the fused qkv projection.

qkv [T, 3, H, Dh] holds the S sequences back to back; cu_seqlens (int32, [S + 1]) are their offsets. The output is
[T, H, Dh]. `uniform_len` marks the dense case (every sequence the same length, e.g. the target encoder over whole
clips), where a plain batched SDPA call is best.

Backends, fastest first on CUDA: `triton` (our kernels, vjepa_fast/ops/triton_flash_varlen.py), `flash_attn`,
`torch_varlen`, `xformers` (each when installed), `sdpa_padded` (the CPU default), `reference` (the plain
definition). The dense case is its own op, `dense_attention`: the Triton kernel for 16-bit CUDA tensors, one batched
SDPA call (`sdpa`) otherwise. See docs/attention.md.
"""
from __future__ import annotations

import importlib.util
from typing import Optional

import torch
import torch.nn.functional as F

from vjepa_fast.ops import _backend

OP = "attention"
DENSE_OP = "dense_attention"


def varlen_attention_reference(qkv: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """The definition: one SDPA call per sequence (slow, obviously correct)."""
    T, _, H, Dh = qkv.shape
    if T == 0:
        return qkv[:, 2].clone()  # empty, but part of the autograd graph like any other result
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

    Padded slots read row min(start + j, T - 1) and write to a dump row T, so nothing is out of range (T >= 1)."""
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
    if T == 0:  # no rows to pad from (and no output to write)
        return qkv.new_empty(0, H, Dh)
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
    if T == 0:
        return torch.zeros_like(qkv)
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
# Backends. Each runner takes (qkv, cu_seqlens, max_seqlen, deterministic); each check takes the key
# (device type, dtype, head dim) and returns None when the backend can run on such inputs, else the reason.

# Looked up once at import: find_spec is cheap (it imports nothing) and must not run under torch.compile's tracing.
_INSTALLED = {m: importlib.util.find_spec(m) is not None for m in ("triton", "flash_attn", "xformers")}
try:
    from torch.nn.attention.varlen import varlen_attn as _torch_varlen_attn  # torch >= 2.10
except ImportError:
    _torch_varlen_attn = None


def _kernels():
    # Imported on first use: importing it imports triton and builds the kernels (ops/_triton.py).
    from vjepa_fast.ops import _triton

    return _triton.load("triton_flash_varlen")


def _triton_reason(key) -> Optional[str]:
    device, dtype, Dh = key
    if not _INSTALLED["triton"]:
        return "triton is not installed"
    if Dh > 128:
        return f"head dim {Dh} > 128 is not supported by the Triton kernels"
    if device == "cuda":
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            return f"dtype {dtype} is not supported (float16, bfloat16, float32)"
        return None
    if device != "cpu":
        return f"needs a CUDA tensor (or CPU under TRITON_INTERPRET=1), got {device}"
    if not _backend.INTERPRET:
        return "CPU tensors need the Triton interpreter (TRITON_INTERPRET=1 when vjepa_fast is imported)"
    if dtype not in (torch.float16, torch.float32):
        return f"the Triton interpreter runs float32/float16 only, got {dtype}"
    return None


def _not_interpreted(key) -> Optional[str]:
    # Automatic choice never picks the (very slow) interpreter; forcing the backend does.
    return "the interpreter is used only when forced" if key[0] == "cpu" else None


def _cuda_16bit_reason(key) -> Optional[str]:
    device, dtype, _ = key
    if device != "cuda":
        return f"needs a CUDA tensor, got {device}"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"needs float16/bfloat16, got {dtype}"
    return None


def _dense_triton_auto(key) -> Optional[str]:
    # Dense case: the kernel is chosen automatically only where it measured faster than SDPA (16-bit on CUDA,
    # benchmarks/results/); SDPA elsewhere.
    return _not_interpreted(key) or _cuda_16bit_reason(key)


def _flash_attn_reason(key) -> Optional[str]:
    if not _INSTALLED["flash_attn"]:
        return "flash_attn is not installed (pip install flash-attn)"
    if key[2] % 8 != 0 or key[2] > 256:
        return f"head dim {key[2]} must be a multiple of 8 and <= 256"
    return _cuda_16bit_reason(key)


def _torch_varlen_reason(key) -> Optional[str]:
    if _torch_varlen_attn is None:
        return "torch.nn.attention.varlen.varlen_attn is not available in this torch"
    return _cuda_16bit_reason(key)


def _xformers_reason(key) -> Optional[str]:
    if not _INSTALLED["xformers"]:
        return "xformers is not installed"
    return None if key[0] == "cuda" else f"needs a CUDA tensor, got {key[0]}"


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


def _forced_only(_key) -> Optional[str]:
    return "chosen only when forced, until a whole training step has measured it"


_OTHERS = (
    _backend.Backend("flash_attn", _run_flash_attn, _flash_attn_reason),
    _backend.Backend("torch_varlen", _run_torch_varlen, _torch_varlen_reason),
    _backend.Backend("xformers", _run_xformers, _xformers_reason),
    _backend.Backend("sdpa_padded", _run_padded),
    _backend.Backend("reference", _run_reference),
)
def _probe(device: torch.device, dtype: torch.dtype, head_dim: int, uniform_len: Optional[int] = None) -> None:
    # one sequence of 4 tokens, one head of the model's width
    varlen_attention(torch.zeros(4, 3, 1, head_dim, device=device, dtype=dtype),
                     torch.tensor([0, 4], device=device, dtype=torch.int32), 4, uniform_len)


def _dense_probe(device: torch.device, dtype: torch.dtype, head_dim: int) -> None:
    _probe(device, dtype, head_dim, uniform_len=4)


# Packed sequences of any lengths, fastest first on CUDA.
VARLEN = _backend.Op(OP, _backend.Backend("triton", _run_triton, _triton_reason, _not_interpreted), *_OTHERS,
                     probe=_probe)
# The dense case (every sequence uniform_len long): our kernel for 16-bit CUDA tensors, else one batched SDPA call;
# any varlen backend may be forced.
DENSE = _backend.Op(DENSE_OP, _backend.Backend("triton", _run_triton, _triton_reason, _dense_triton_auto),
                    _backend.Backend("sdpa", _run_dense_sdpa), *_OTHERS,
                    _backend.Backend("sdpa_cudnn", _run_dense_sdpa_cudnn, _cuda_16bit_reason, _forced_only),
                    probe=_dense_probe)
BACKENDS = tuple(VARLEN.backends)
DENSE_BACKENDS = tuple(DENSE.backends)


def backend_key(qkv: torch.Tensor) -> tuple:
    """What the attention backends' checks look at: (device type, dtype, head dim)."""
    return qkv.device.type, qkv.dtype, qkv.shape[-1]


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
    """Value checks on cu_seqlens: offsets 0 .. T, non-decreasing, no length > max_seqlen. A host sync on a GPU;
    under torch.compile traced assertions instead (no graph break, no sync; see _backend.check_index_range)."""
    T = qkv.shape[0]
    if torch.compiler.is_compiling():
        cu = cu_seqlens.long()
        lens = cu[1:] - cu[:-1]
        ok = (cu[0] == 0) & (cu[-1] == T) & (lens >= 0).all() & (lens <= max_seqlen).all()
        if uniform_len is not None:
            ok = ok & (lens == uniform_len).all()
        # A constant message: formatting the (possibly symbolic) sizes into it would specialise the graph on them.
        torch._assert_async(ok, "varlen_attention: cu_seqlens must run from 0 to T, non-decreasing, with every "
                                "length <= max_seqlen (and == uniform_len when given)")
        return
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
    on the CPU always and on a GPU only when `check_range=True` or in debug mode (train.check_indices: it costs a
    host sync; under torch.compile the checks are traced assertions); unchecked bad
    offsets cannot make the Triton kernels read or write out of bounds, but rows outside every sequence are left
    unwritten. Backends and how to force one: docs/attention.md.
    """
    _validate(qkv, cu_seqlens)
    _validate_lengths(qkv, max_seqlen, uniform_len)
    if check_range is None:
        check_range = _backend.check_indices_by_default(qkv.device)
    if check_range:
        _check_range(qkv, cu_seqlens, max_seqlen, uniform_len)
    if uniform_len is not None:
        return DENSE.choose(backend_key(qkv)).run(qkv, cu_seqlens, uniform_len, deterministic)
    return VARLEN.choose(backend_key(qkv)).run(qkv, cu_seqlens, max_seqlen, deterministic)
