"""Variable-length (packed) non-causal self-attention over the fused qkv projection.

qkv [T, 3, H, Dh] holds the S sequences back to back; cu_seqlens (int32, [S + 1]) are their offsets. The output is
[T, H, Dh]. `uniform_len` marks the dense case (every sequence the same length, e.g. the target encoder over whole
clips), where a plain batched SDPA call is best.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from vjepa_fast.ops import _backend

OP = "attention"


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


def _padded_attention(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
    """Pad every sequence to max_seqlen, one batched SDPA with a key mask, unpad. No host sync, so it traces."""
    T, _, H, Dh = qkv.shape
    S = cu_seqlens.numel() - 1
    L = max(int(max_seqlen), 1)
    starts = cu_seqlens[:-1].long()
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    j = torch.arange(L, device=qkv.device)
    valid = j[None, :] < lens[:, None]  # [S, L]
    src = (starts[:, None] + j[None, :]).clamp(max=max(T - 1, 0))
    padded = qkv.reshape(T, 3 * H * Dh).index_select(0, src.reshape(-1)).reshape(S, L, 3, H, Dh)
    q, k, v = padded.permute(2, 0, 3, 1, 4).unbind(0)  # each [S, H, L, Dh]
    # Padded query rows attend to everything so that no softmax row is empty (their output is dropped below).
    mask = valid[:, None, None, :] | ~valid[:, None, :, None]
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [S, H, L, Dh]
    o = o.transpose(1, 2).reshape(S * L, H, Dh)
    dest = torch.where(valid, src, torch.full_like(src, T)).reshape(-1)
    # Scatter valid rows into their packed positions; padded rows go to a dump row at index T.
    buf = qkv.new_zeros(T + 1, H, Dh)
    buf = buf.index_copy(0, dest, o)
    return buf[:T]


@torch.library.custom_op("vjepa_fast::padded_varlen_attention", mutates_args=())
def _padded_op(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
    return _padded_attention(qkv, cu_seqlens, max_seqlen)


@_padded_op.register_fake
def _(qkv, cu_seqlens, max_seqlen):
    T, _, H, Dh = qkv.shape
    return qkv.new_empty(T, H, Dh)


def _padded_setup(ctx, inputs, output):
    qkv, cu_seqlens, max_seqlen = inputs
    ctx.save_for_backward(qkv, cu_seqlens)
    ctx.max_seqlen = max_seqlen


def _padded_backward(ctx, grad):
    qkv, cu_seqlens = ctx.saved_tensors
    with torch.enable_grad():
        x = qkv.detach().requires_grad_(True)
        out = _padded_attention(x, cu_seqlens, ctx.max_seqlen)
        (dqkv,) = torch.autograd.grad(out, x, grad)
    return dqkv, None, None


_padded_op.register_autograd(_padded_backward, setup_context=_padded_setup)


def _dense_sdpa(qkv: torch.Tensor, seqlen: int) -> torch.Tensor:
    T, _, H, Dh = qkv.shape
    q, k, v = qkv.reshape(T // seqlen, seqlen, 3, H, Dh).permute(2, 0, 3, 1, 4).unbind(0)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(T, H, Dh)


_BACKENDS: dict[str, _backend.Check] = {"sdpa_padded": _backend.always, "reference": _backend.always}


def _validate(qkv: torch.Tensor, cu_seqlens: torch.Tensor) -> None:
    if qkv.dim() != 4 or qkv.shape[1] != 3:
        raise ValueError(f"varlen_attention: qkv must be [T, 3, H, Dh], got {tuple(qkv.shape)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.dtype != torch.int32 or cu_seqlens.numel() < 2:
        raise ValueError(f"varlen_attention: cu_seqlens must be int32 [S + 1], got {cu_seqlens.dtype} "
                         f"{tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != qkv.device:
        raise ValueError(f"varlen_attention: cu_seqlens on {cu_seqlens.device} but qkv on {qkv.device}")


def varlen_attention(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                     uniform_len: Optional[int] = None) -> torch.Tensor:
    """Attention within each packed sequence; qkv [T, 3, H, Dh] -> [T, H, Dh]."""
    _validate(qkv, cu_seqlens)
    if uniform_len is not None:
        return _dense_sdpa(qkv, uniform_len)
    backend = _backend.choose(OP, qkv.device, _BACKENDS)
    if backend == "reference":
        return varlen_attention_reference(qkv, cu_seqlens)
    return _padded_op(qkv, cu_seqlens, max_seqlen)
