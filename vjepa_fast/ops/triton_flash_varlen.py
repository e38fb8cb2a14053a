"""Variable-length flash attention in Triton: forward, FlashAttention-2 backward, and their torch.library ops.

Layout (docs/architecture.md): qkv [T, 3, H, Dh] is read with its strides straight out of the fused qkv projection;
cu_seqlens int32 [S + 1] gives each sequence's token range; the output is [T, H, Dh] and the backward writes dq, dk
and dv into one [T, 3, H, Dh] gradient, so the qkv projection's backward consumes it without a concatenation.
Attention is non-causal, within each sequence only.

Kernels (all over the grid (query or key blocks of max_seqlen, S * H)):
- `_fwd_kernel`: online softmax in fp32 with exp2 (scores pre-multiplied by scale * log2(e)); stores O and the
  row logsumexp (log2 units) for the backward.
- `_bwd_delta_kernel`: delta = rowsum(dO * O), the softmax-backward correction term.
- `_bwd_dkdv_kernel`: one program per key block accumulates dK and dV over the query blocks; with ATOMIC_DQ it
  also adds each block's dQ contribution into an fp32 buffer with atomics (fewer matmuls, not bitwise repeatable).
- `_bwd_dq_kernel`: one program per query block accumulates dQ over the key blocks (the split backward: the
  default, deterministic, and measured faster than ATOMIC_DQ on an H200; see backward_mode()).

Robustness: sequence bounds are clamped into [0, T], and each program walks its block index in steps of the grid
size, so a max_seqlen that is too small only costs speed, never an unwritten row or an out-of-bounds access.
The public entry point with input validation is `vjepa_fast.ops.attention.varlen_attention`. Block sizes per shape
class come from `vjepa_fast.ops.flash_tuning.config` (the tuned table and its fallbacks).

Import it through `vjepa_fast.ops._triton.load` (attention.py does): that builds the kernels compiled or
interpreted as the process decided at import, and registers and launches them one way in both modes.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from vjepa_fast.ops import _backend, flash_tuning
from vjepa_fast.ops._triton import launch as _launch
from vjepa_fast.ops._triton import register

LOG2E = 1.4426950408889634


@triton.jit
def _load_rows(base, off, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows wholly inside the sequence: no row mask, and no head-dim mask when the head dim is a power of two."""
    if HEAD_DIM == BLOCK_D:
        x = tl.load(base + off)
    else:
        x = tl.load(base + off, mask=(offs_d < HEAD_DIM)[None, :], other=0.0)
    return x


@triton.jit
def _fwd_block(acc, l_i, m_i, q, k_base, v_base, start, n0, L, s_qt, s_qd, qk_scale,
               BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr,
               MASK_N: tl.constexpr):
    """One key block of the online softmax. MASK_N=False is the hot path (a block wholly inside the sequence):
    no key mask, and no head-dim mask when the head dim is a power of two, so loads are plain 16-byte vectors."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_off = (start + offs_n)[:, None] * s_qt + offs_d[None, :] * s_qd
    if MASK_N:
        n_ok = offs_n < L
        kv_mask = n_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
        k = tl.load(k_base + kv_off, mask=kv_mask, other=0.0)
        v = tl.load(v_base + kv_off, mask=kv_mask, other=0.0)
    else:
        k = _load_rows(k_base, kv_off, offs_d, HEAD_DIM, BLOCK_D)
        v = _load_rows(v_base, kv_off, offs_d, HEAD_DIM, BLOCK_D)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
    if MASK_N:
        s = tl.where(n_ok[None, :], s, float("-inf"))
    # qk_scale > 0, so max(s) * scale is the max of the scaled scores; s * scale - m is one FMA per score.
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s * qk_scale - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    return acc, l_i, m_new


# exp2 on the FMA units (docs/attention.md, "Small head dims"): 2^x = 2^floor(x) * 2^f, f in [0, 1), with 2^f a
# polynomial fitted for relative error on [0, 1] (degree 3: < 7.5e-5, below bf16/fp16 rounding of P; degree 6:
# < 1.9e-9, below fp32 rounding) and 2^floor(x) added straight into the exponent bits. x <= 0 here (scores minus the
# running max); it is clamped at -126 so the exponent stays normal (2^-126 where exp2 would give a smaller number or
# 0: far below one ulp of the row sum, which is >= 1).
@triton.jit
def _exp2_fma(x, DEGREE: tl.constexpr):
    x = tl.maximum(x, -126.0)
    j = tl.floor(x)
    f = x - j
    if DEGREE == 3:
        p = 0.07802403102606865 * f + 0.2260670727303973
        p = p * f + 0.6958339921071426
        p = p * f + 0.9999251255464437
    else:
        p = 0.00021702226816381042 * f + 0.0012439693799118543
        p = p * f + 0.00967884064782186
        p = p * f + 0.055483341972236054
        p = p * f + 0.24022983633404338
        p = p * f + 0.693146983827712
        p = p * f + 1.0000000018563406
    bits = p.to(tl.int32, bitcast=True) + (j.to(tl.int32) << 23)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _fwd_block_split(acc, l_i, m_i, q, k_base, v_base, start, n0, s_qt, s_qd, qk_scale,
                     BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr,
                     EXP2_POLY: tl.constexpr, POLY_PARTS: tl.constexpr):
    """A whole key block (no key mask) in power-of-two parts: the last 1/POLY_PARTS of its keys (2: a half, 4: a
    quarter) get their exponentials on the FMA units (_exp2_fma of degree EXP2_POLY), the others on the
    special-function units (exp2), so both pipes share the softmax. Parts: a = the first half (exp2), b = the last
    part (FMA) and, for quarters, c = the third quarter (exp2)."""
    FMA_N: tl.constexpr = BLOCK_N // POLY_PARTS
    offs_d = tl.arange(0, BLOCK_D)
    off_a = (start + n0 + tl.arange(0, BLOCK_N // 2))[:, None] * s_qt + offs_d[None, :] * s_qd
    off_b = (start + n0 + BLOCK_N - FMA_N + tl.arange(0, FMA_N))[:, None] * s_qt + offs_d[None, :] * s_qd
    k_a = _load_rows(k_base, off_a, offs_d, HEAD_DIM, BLOCK_D)
    k_b = _load_rows(k_base, off_b, offs_d, HEAD_DIM, BLOCK_D)
    v_a = _load_rows(v_base, off_a, offs_d, HEAD_DIM, BLOCK_D)
    v_b = _load_rows(v_base, off_b, offs_d, HEAD_DIM, BLOCK_D)
    s_a = tl.dot(q, tl.trans(k_a), input_precision=DOT_PREC)
    s_b = tl.dot(q, tl.trans(k_b), input_precision=DOT_PREC)
    s_max = tl.maximum(tl.max(s_a, 1), tl.max(s_b, 1))
    if POLY_PARTS == 4:
        off_c = off_b - FMA_N * s_qt
        k_c = _load_rows(k_base, off_c, offs_d, HEAD_DIM, BLOCK_D)
        v_c = _load_rows(v_base, off_c, offs_d, HEAD_DIM, BLOCK_D)
        s_c = tl.dot(q, tl.trans(k_c), input_precision=DOT_PREC)
        s_max = tl.maximum(s_max, tl.max(s_c, 1))
    m_new = tl.maximum(m_i, s_max * qk_scale)
    alpha = tl.exp2(m_i - m_new)
    p_a = tl.exp2(s_a * qk_scale - m_new[:, None])
    p_b = _exp2_fma(s_b * qk_scale - m_new[:, None], EXP2_POLY)
    l_i = l_i * alpha + tl.sum(p_a, 1) + tl.sum(p_b, 1)
    acc = acc * alpha[:, None] + tl.dot(p_a.to(v_a.dtype), v_a, input_precision=DOT_PREC)
    acc = acc + tl.dot(p_b.to(v_b.dtype), v_b, input_precision=DOT_PREC)
    if POLY_PARTS == 4:
        p_c = tl.exp2(s_c * qk_scale - m_new[:, None])
        l_i = l_i + tl.sum(p_c, 1)
        acc = acc + tl.dot(p_c.to(v_c.dtype), v_c, input_precision=DOT_PREC)
    return acc, l_i, m_new


@triton.jit
def _sequence_head(QKV, CU, T, H, s_qt, s_q3, s_qh, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   ALIGN: tl.constexpr):
    """The prologue every kernel over the grid (blocks, S * H) shares: this program's head h, its sequence's rows
    [start, start + L) of the packed tokens, the head-dim lanes, and the q / k / v bases of head h. Returns the
    token stride s_qt multiplied back by ALIGN (see _fwd_kernel)."""
    s_qt = s_qt * ALIGN
    s_q3 = s_q3 * ALIGN
    s_qh = s_qh * ALIGN
    pid_sh = tl.program_id(1)
    seq = pid_sh // H
    h = pid_sh % H
    # int64 from here on: row offsets must not overflow, and the interpreter skips its overflow checks for int64.
    start = tl.minimum(tl.maximum(tl.load(CU + seq).to(tl.int64), 0), T)
    end = tl.minimum(tl.maximum(tl.load(CU + seq + 1).to(tl.int64), start), T)
    L = end - start
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM  # head dims like 24 or 80 are padded to a power of two with masks
    q_base = QKV + h * s_qh
    k_base = q_base + s_q3
    v_base = q_base + 2 * s_q3
    return h, start, L, offs_d, d_ok, q_base, k_base, v_base, s_qt


@triton.jit
def _fwd_kernel(QKV, O, LSE, CU, T, H, qk_scale,
                s_qt, s_q3, s_qh, s_qd, s_ot, s_oh, s_od,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                DOT_PREC: tl.constexpr, ALIGN: tl.constexpr, EXP2_POLY: tl.constexpr = 0,
                POLY_PARTS: tl.constexpr = 2):
    # EXP2_POLY (0: off, the default until measured; 3 or 6: the polynomial's degree) moves 1/POLY_PARTS of each
    # whole key block's exponentials to the FMA units (_fwd_block_split); the tail block always uses exp2.
    # Row and head strides arrive divided by ALIGN (see _align()); multiplying by the constant (here and in
    # _sequence_head) tells the compiler they are multiples of it, so 16-byte vector loads survive head dims like 24.
    h, start, L, offs_d, d_ok, q_base, k_base, v_base, s_qt = _sequence_head(
        QKV, CU, T, H, s_qt, s_q3, s_qh, HEAD_DIM, BLOCK_D, ALIGN)
    s_ot = s_ot * ALIGN
    s_oh = s_oh * ALIGN
    # Inductor may pass Python floats as fp64; the softmax state must stay fp32 (a loop-carried type).
    qk_scale = tl.cast(qk_scale, tl.float32)
    pid_m = tl.program_id(0)
    n_full = (L // BLOCK_N) * BLOCK_N  # keys in whole blocks: the unmasked loop below
    # Normally one iteration (or none: the early exit for blocks past this sequence's end).
    for mb in range(pid_m, (L + BLOCK_M - 1) // BLOCK_M, tl.num_programs(0)):
        offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = offs_m < L
        rows = start + offs_m
        q = tl.load(q_base + rows[:, None] * s_qt + offs_d[None, :] * s_qd,
                    mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        # The first key block always holds key 0, so m is finite after it (whole or tail).
        for n0 in range(0, n_full, BLOCK_N):
            if EXP2_POLY > 0:
                acc, l_i, m_i = _fwd_block_split(acc, l_i, m_i, q, k_base, v_base, start, n0, s_qt, s_qd,
                                                 qk_scale, BLOCK_N, HEAD_DIM, BLOCK_D, DOT_PREC, EXP2_POLY,
                                                 POLY_PARTS)
            else:
                acc, l_i, m_i = _fwd_block(acc, l_i, m_i, q, k_base, v_base, start, n0, L, s_qt, s_qd, qk_scale,
                                           BLOCK_N, HEAD_DIM, BLOCK_D, DOT_PREC, False)
        if n_full < L:
            acc, l_i, m_i = _fwd_block(acc, l_i, m_i, q, k_base, v_base, start, n_full, L, s_qt, s_qd, qk_scale,
                                       BLOCK_N, HEAD_DIM, BLOCK_D, DOT_PREC, True)
        o = acc / l_i[:, None]
        tl.store(O + rows[:, None] * s_ot + h * s_oh + offs_d[None, :] * s_od, o.to(O.dtype.element_ty),
                 mask=m_ok[:, None] & d_ok[None, :])
        tl.store(LSE + h * T + rows, m_i + tl.log2(l_i), mask=m_ok)


@triton.jit
def _bwd_delta_kernel(O, DO, DELTA, T, s_ot, s_oh, s_od, s_dt, s_dh, s_dd,
                      BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    h = tl.program_id(1)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    r_ok = rows < T
    mask = r_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    rows64 = rows.to(tl.int64)
    o = tl.load(O + rows64[:, None] * s_ot + h * s_oh + offs_d[None, :] * s_od, mask=mask, other=0.0)
    do = tl.load(DO + rows64[:, None] * s_dt + h * s_dh + offs_d[None, :] * s_dd, mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + h * T + rows64, delta, mask=r_ok)


@triton.jit
def _bwd_scalars(s_dt, s_dh, s_gt, s_g3, s_gh, sm_scale, qk_scale, ALIGN: tl.constexpr):
    """The backward kernels' dO and dQKV strides multiplied back by ALIGN, and their scales as fp32."""
    return (s_dt * ALIGN, s_dh * ALIGN, s_gt * ALIGN, s_g3 * ALIGN, s_gh * ALIGN, tl.cast(sm_scale, tl.float32),
            tl.cast(qk_scale, tl.float32))


@triton.jit
def _bwd_dkdv_kernel(QKV, DO, LSE, DELTA, DQKV, DQ_ACC, CU, T, H, sm_scale, qk_scale,
                     s_qt, s_q3, s_qh, s_qd, s_dt, s_dh, s_dd, s_gt, s_g3, s_gh, s_gd,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                     ATOMIC_DQ: tl.constexpr, DOT_PREC: tl.constexpr, ALIGN: tl.constexpr):
    h, start, L, offs_d, d_ok, q_base, k_base, v_base, s_qt = _sequence_head(
        QKV, CU, T, H, s_qt, s_q3, s_qh, HEAD_DIM, BLOCK_D, ALIGN)
    s_dt, s_dh, s_gt, s_g3, s_gh, sm_scale, qk_scale = _bwd_scalars(s_dt, s_dh, s_gt, s_g3, s_gh, sm_scale,
                                                                    qk_scale, ALIGN)
    pid_n = tl.program_id(0)
    for nb in range(pid_n, (L + BLOCK_N - 1) // BLOCK_N, tl.num_programs(0)):
        offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < L
        krows = start + offs_n
        kv_mask = n_ok[:, None] & d_ok[None, :]
        kv_off = krows[:, None] * s_qt + offs_d[None, :] * s_qd
        k = tl.load(k_base + kv_off, mask=kv_mask, other=0.0)
        v = tl.load(v_base + kv_off, mask=kv_mask, other=0.0)
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        for m0 in range(0, L, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            m_ok = offs_m < L
            rows = start + offs_m
            q_mask = m_ok[:, None] & d_ok[None, :]
            q = tl.load(q_base + rows[:, None] * s_qt + offs_d[None, :] * s_qd, mask=q_mask, other=0.0)
            do = tl.load(DO + rows[:, None] * s_dt + h * s_dh + offs_d[None, :] * s_dd, mask=q_mask, other=0.0)
            lse = tl.load(LSE + h * T + rows, mask=m_ok, other=0.0)
            delta = tl.load(DELTA + h * T + rows, mask=m_ok, other=0.0)
            # Work transposed ([keys, queries]) so that dK and dV accumulate without transposing the accumulators.
            s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * qk_scale
            # Zero every pair outside the sequence: exp2 of a padded row's score minus a padded lse may overflow.
            p_t = tl.where(n_ok[:, None] & m_ok[None, :], tl.exp2(s_t - lse[None, :]), 0.0)
            dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PREC)
            dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
            ds_t = p_t * (dp_t - delta[None, :])
            dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PREC)
            if ATOMIC_DQ:
                dq = tl.dot(tl.trans(ds_t).to(k.dtype), k, input_precision=DOT_PREC) * sm_scale
                # DQ_ACC is a contiguous fp32 [T, H, HEAD_DIM] buffer; only atomicity matters, not ordering.
                tl.atomic_add(DQ_ACC + (rows[:, None] * H + h) * HEAD_DIM + offs_d[None, :], dq, mask=q_mask,
                              sem="relaxed")
        g_off = krows[:, None] * s_gt + h * s_gh + offs_d[None, :] * s_gd
        tl.store(DQKV + s_g3 + g_off, (dk * sm_scale).to(DQKV.dtype.element_ty), mask=kv_mask)
        tl.store(DQKV + 2 * s_g3 + g_off, dv.to(DQKV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _bwd_dq_kernel(QKV, DO, LSE, DELTA, DQKV, CU, T, H, sm_scale, qk_scale,
                   s_qt, s_q3, s_qh, s_qd, s_dt, s_dh, s_dd, s_gt, s_g3, s_gh, s_gd,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   DOT_PREC: tl.constexpr, ALIGN: tl.constexpr):
    h, start, L, offs_d, d_ok, q_base, k_base, v_base, s_qt = _sequence_head(
        QKV, CU, T, H, s_qt, s_q3, s_qh, HEAD_DIM, BLOCK_D, ALIGN)
    s_dt, s_dh, s_gt, s_g3, s_gh, sm_scale, qk_scale = _bwd_scalars(s_dt, s_dh, s_gt, s_g3, s_gh, sm_scale,
                                                                    qk_scale, ALIGN)
    pid_m = tl.program_id(0)
    for mb in range(pid_m, (L + BLOCK_M - 1) // BLOCK_M, tl.num_programs(0)):
        offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = offs_m < L
        rows = start + offs_m
        q_mask = m_ok[:, None] & d_ok[None, :]
        q = tl.load(q_base + rows[:, None] * s_qt + offs_d[None, :] * s_qd, mask=q_mask, other=0.0)
        do = tl.load(DO + rows[:, None] * s_dt + h * s_dh + offs_d[None, :] * s_dd, mask=q_mask, other=0.0)
        lse = tl.load(LSE + h * T + rows, mask=m_ok, other=0.0)
        delta = tl.load(DELTA + h * T + rows, mask=m_ok, other=0.0)
        dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        for n0 in range(0, L, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            n_ok = offs_n < L
            krows = start + offs_n
            kv_off = krows[:, None] * s_qt + offs_d[None, :] * s_qd
            kv_mask = n_ok[:, None] & d_ok[None, :]
            k = tl.load(k_base + kv_off, mask=kv_mask, other=0.0)
            v = tl.load(v_base + kv_off, mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
            p = tl.where(m_ok[:, None] & n_ok[None, :], tl.exp2(s - lse[:, None]), 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)
        tl.store(DQKV + rows[:, None] * s_gt + h * s_gh + offs_d[None, :] * s_gd,
                 (dq * sm_scale).to(DQKV.dtype.element_ty), mask=q_mask)


# ----------------------------------------------------------------------------------------------------------------
# Launch helpers.

def _grid(cfg: dict, block_key: str, max_seqlen: int, sh: int) -> tuple[int, int]:
    """(blocks of max_seqlen, S * H); pops MAX_PROGRAMS, a launch option that is no kernel argument."""
    n = triton.cdiv(max(max_seqlen, 1), cfg[block_key])
    cap = cfg.pop("MAX_PROGRAMS", None)
    return (min(n, cap) if cap else n, sh)


def interpreted() -> bool:
    """True when this process builds Triton kernels for the interpreter (TRITON_INTERPRET=1 at import)."""
    return _backend.INTERPRET


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def _align(*strides: int) -> int:
    """The largest power of two <= 16 dividing every row/head stride. The kernels take those strides divided by it
    and multiply by the constant, which proves rows aligned to the compiler (Triton's own specialisation only knows
    "divisible by 16", which a head dim of 24 is not, and then every load is a scalar 2-byte load)."""
    a = 16
    for st in strides:
        while a > 1 and st % a != 0:
            a //= 2
    return a


def _poly_switch(switch: int, block_n: int, dtype: torch.dtype) -> dict:
    """The forward's EXP2_POLY table switch (0: off, 1: half of each key block, 2: a quarter) as the kernel's
    constexprs: EXP2_POLY = the polynomial's degree (3 for 16-bit inputs, whose P is rounded to 16 bits anyway; 6 for
    fp32; 0 off) and POLY_PARTS. Every part must stay >= 16 keys wide, else the switch is off."""
    parts = {1: 2, 2: 4}.get(switch)
    if parts is None or block_n // parts < 16:
        return {"EXP2_POLY": 0, "POLY_PARTS": 2}
    return {"EXP2_POLY": 6 if dtype == torch.float32 else 3, "POLY_PARTS": parts}


def _dot_precision(dtype: torch.dtype) -> Optional[str]:
    # fp32 inputs get true fp32 products (TF32 would be less accurate than the plain definition in fp32); 16-bit:
    # the default.
    return "ieee" if dtype == torch.float32 else None


def _config(kernel: str, block_d: int, qkv: torch.Tensor, configs: Optional[dict]) -> dict:
    """The launch options of `kernel`: the caller's entry in `configs` if it has one, else flash_tuning's. A copy,
    since the launch pops launch-only keys from it."""
    if configs and kernel in configs:
        return dict(configs[kernel])
    return flash_tuning.config(kernel, block_d, qkv.dtype, qkv.device)


def _forward(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, softmax_scale: float,
             configs: Optional[dict] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Output [T, H, Dh] and row logsumexp [H, T]. `configs` maps kernel names ("fwd" here) to launch options that
    replace the tuned ones (benchmarks/tune_attention.py times its candidates this way)."""
    T, _, H, Dh = qkv.shape
    Dh = int(Dh)  # a compile-time constant of the kernels (specialised, also when traced with symbolic shapes)
    S = cu_seqlens.shape[0] - 1
    out = torch.empty((T, H, Dh), dtype=qkv.dtype, device=qkv.device)
    lse = torch.empty((H, T), dtype=torch.float32, device=qkv.device)
    if T == 0 or S == 0 or H == 0:
        return out, lse
    bd = _block_d(Dh)
    cfg = _config("fwd", bd, qkv, configs)
    cfg.update(_poly_switch(cfg.get("EXP2_POLY", 0), cfg["BLOCK_N"], qkv.dtype))
    grid = _grid(cfg, "BLOCK_M", max_seqlen, S * H)
    a = _align(*qkv.stride()[:3], *out.stride()[:2])
    _launch(_fwd_kernel, grid, qkv, out, lse, cu_seqlens, T, H, softmax_scale * LOG2E,
            qkv.stride(0) // a, qkv.stride(1) // a, qkv.stride(2) // a, qkv.stride(3),
            out.stride(0) // a, out.stride(1) // a, out.stride(2),
            HEAD_DIM=Dh, BLOCK_D=bd, DOT_PREC=_dot_precision(qkv.dtype), ALIGN=a, **cfg)
    return out, lse


# How the backward gets dQ. "split": a separate dQ kernel (one program per query block, no atomics, bitwise
# repeatable). "atomic": the dK/dV kernel also adds each block's dQ into an fp32 buffer with atomics (fewer kernels,
# more matmul work per program, not repeatable). Split measured faster on every ViT shape on an H200
# (benchmarks/results/), so it is the default; backends.attention_backward=atomic (or VJEPA_FAST_FLASH_BWD=atomic)
# selects the other, and deterministic=True always splits.
def backward_mode(deterministic: bool = False) -> str:
    return "split" if deterministic else _backend.attention_backward


def _backward(dout: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
              cu_seqlens: torch.Tensor, max_seqlen: int, softmax_scale: float,
              deterministic: bool, configs: Optional[dict] = None) -> torch.Tensor:
    """dQKV [T, 3, H, Dh]; `configs` as in _forward, for "delta", "dkdv" and "dq"."""
    T, _, H, Dh = qkv.shape
    Dh = int(Dh)
    S = cu_seqlens.shape[0] - 1
    dqkv = torch.empty((T, 3, H, Dh), dtype=qkv.dtype, device=qkv.device)
    if T == 0 or S == 0 or H == 0:
        return dqkv
    bd = _block_d(Dh)
    prec = _dot_precision(qkv.dtype)
    qk_scale = softmax_scale * LOG2E
    a = _align(*qkv.stride()[:3], *dout.stride()[:2], *dqkv.stride()[:3])
    q_strides = (qkv.stride(0) // a, qkv.stride(1) // a, qkv.stride(2) // a, qkv.stride(3))
    do_strides = (dout.stride(0) // a, dout.stride(1) // a, dout.stride(2))
    g_strides = (dqkv.stride(0) // a, dqkv.stride(1) // a, dqkv.stride(2) // a, dqkv.stride(3))

    delta = torch.empty((H, T), dtype=torch.float32, device=qkv.device)
    cfg = _config("delta", bd, qkv, configs)
    _launch(_bwd_delta_kernel, (triton.cdiv(T, cfg["BLOCK_M"]), H), out, dout, delta, T,
            *out.stride(), *dout.stride(), HEAD_DIM=Dh, BLOCK_D=bd, **cfg)

    # The atomic path accumulates dQ in fp32 (zeros are its identity, not a poison target) and copies it at the end.
    # The split path never touches DQ_ACC (ATOMIC_DQ is a constexpr): a one-element stand-in, never an alias
    # of another argument (under torch.compile, aliased kernel arguments are cloned separately when functionalised).
    split = backward_mode(deterministic) == "split"
    shape = (1,) if split else (T, H, Dh)
    dq_acc = torch.zeros(shape, dtype=torch.float32, device=qkv.device)
    cfg = _config("dkdv", bd, qkv, configs)
    grid = _grid(cfg, "BLOCK_N", max_seqlen, S * H)
    _launch(_bwd_dkdv_kernel, grid, qkv, dout, lse, delta, dqkv, dq_acc, cu_seqlens, T, H,
            softmax_scale, qk_scale, *q_strides, *do_strides, *g_strides,
            HEAD_DIM=Dh, BLOCK_D=bd, ATOMIC_DQ=not split, DOT_PREC=prec, ALIGN=a, **cfg)
    if split:
        cfg = _config("dq", bd, qkv, configs)
        grid = _grid(cfg, "BLOCK_M", max_seqlen, S * H)
        _launch(_bwd_dq_kernel, grid, qkv, dout, lse, delta, dqkv, cu_seqlens, T, H,
                softmax_scale, qk_scale, *q_strides, *do_strides, *g_strides,
                HEAD_DIM=Dh, BLOCK_D=bd, DOT_PREC=prec, ALIGN=a, **cfg)
    else:
        dqkv[:, 0].copy_(dq_acc)
    return dqkv


# ----------------------------------------------------------------------------------------------------------------
# Registration (ops/_triton.py: a triton_op when compiled, an opaque custom op with these fakes when interpreted);
# register_autograd connects forward and backward either way.


def _fwd_impl(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, softmax_scale: float,
              deterministic: bool) -> tuple[torch.Tensor, torch.Tensor]:
    # `deterministic` is unused here; it rides along so that the backward knows which dQ path to take.
    return _forward(qkv, cu_seqlens, max_seqlen, softmax_scale)


def _bwd_impl(dout: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, cu_seqlens: torch.Tensor,
              max_seqlen: int, softmax_scale: float, deterministic: bool) -> torch.Tensor:
    return _backward(dout, qkv, out, lse, cu_seqlens, max_seqlen, softmax_scale, deterministic)


def _fwd_fake(qkv, cu_seqlens, max_seqlen, softmax_scale, deterministic):
    T, _, H, Dh = qkv.shape
    return qkv.new_empty((T, H, Dh)), qkv.new_empty((H, T), dtype=torch.float32)


def _bwd_fake(dout, qkv, out, lse, cu_seqlens, max_seqlen, softmax_scale, deterministic):
    return qkv.new_empty(qkv.shape)


_flash_fwd_op = register("vjepa_fast::flash_varlen_attention", _fwd_impl, _fwd_fake)
register("vjepa_fast::flash_varlen_attention_backward", _bwd_impl, _bwd_fake)


def _setup_context(ctx, inputs, output) -> None:
    qkv, cu_seqlens, max_seqlen, softmax_scale, deterministic = inputs
    out, lse = output
    ctx.save_for_backward(qkv, cu_seqlens, out, lse)
    ctx.mark_non_differentiable(lse)
    ctx.args = (max_seqlen, softmax_scale, deterministic)


def _flash_backward(ctx, dout, _dlse):
    qkv, cu_seqlens, out, lse = ctx.saved_tensors
    max_seqlen, softmax_scale, deterministic = ctx.args
    dqkv = torch.ops.vjepa_fast.flash_varlen_attention_backward(dout, qkv, out, lse, cu_seqlens, max_seqlen,
                                                                 softmax_scale, deterministic)
    return dqkv, None, None, None, None


_flash_fwd_op.register_autograd(_flash_backward, setup_context=_setup_context)


def flash_varlen_attention(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                           softmax_scale: Optional[float] = None, deterministic: bool = False) -> torch.Tensor:
    """qkv [T, 3, H, Dh] -> [T, H, Dh]; no input validation here (see attention.varlen_attention)."""
    scale = qkv.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    out, _ = torch.ops.vjepa_fast.flash_varlen_attention(qkv, cu_seqlens, int(max_seqlen), float(scale),
                                                         bool(deterministic))
    return out


__all__ = ["flash_varlen_attention", "backward_mode", "interpreted", "LOG2E"]
