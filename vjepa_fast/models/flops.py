"""Model FLOPs per step (docs/architecture.md, "Performance model") and peak rates of known GPUs, for MFU.

Matmuls count 2*m*n*k; attention 4 * len^2 * width per layer per sequence forward; backward = 2 x forward. Only
useful work is counted: no recompute, no padding.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

# Dense bf16 tensor-core peaks (FLOP/s) by device-name fragment; a config key can override.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


def block_flops(tokens: int, width: int, mlp_hidden: int, seq_sq_sum: int) -> float:
    """Forward FLOPs of one transformer block over `tokens` rows whose sequences' squared lengths sum to seq_sq_sum."""
    linear = 2 * tokens * width * (3 * width + width + 2 * mlp_hidden)
    return float(linear + 4 * seq_sq_sum * width)


def encoder_flops(lens: Sequence[int], width: int, depth: int, mlp_hidden: int) -> float:
    tokens = int(sum(lens))
    return depth * block_flops(tokens, width, mlp_hidden, int(sum(n * n for n in lens)))


def vjepa_step_flops(num_clips: int, num_tokens: int, patch_dim: int, enc: tuple[int, int, int],
                     pred: tuple[int, int, int], ctx_lens: Sequence[int], pred_lens: Sequence[int],
                     num_targets: int) -> float:
    """FLOPs of one V-JEPA training step.

    enc / pred = (width, depth, mlp_hidden); ctx_lens are the context sequences' lengths, pred_lens the predictor's
    (context + target) lengths. Target encoder: forward only; context encoder and predictor: forward + backward.
    """
    ew, ed, eh = enc
    pw, pd, ph = pred
    patch = 2 * num_clips * num_tokens * patch_dim * ew
    target = patch + encoder_flops([num_tokens] * num_clips, ew, ed, eh)
    ctx = patch + encoder_flops(ctx_lens, ew, ed, eh)
    ctx_rows = int(sum(ctx_lens))
    predictor = 2 * ctx_rows * ew * pw + encoder_flops(pred_lens, pw, pd, ph) + 2 * num_targets * pw * ew
    return target + 3 * (ctx + predictor)


def videomae_step_flops(patch_dim: int, enc: tuple[int, int, int], dec: tuple[int, int, int],
                        ctx_lens: Sequence[int], dec_lens: Sequence[int], num_targets: int) -> float:
    """FLOPs of one VideoMAE training step (forward + backward = 3 x forward, no target network).

    enc / dec = (width, depth, mlp_hidden); ctx_lens are the visible sequences' lengths, dec_lens the decoder's
    (visible + masked) lengths, num_targets the masked rows the head predicts. patch_dim = C * tubelet * patch^2 is
    both the patch embedding's input and the head's output width. Only visible tubes are embedded usefully (the
    masked 90% of the patch embedding is wasted work), so only they are counted.
    """
    ew, ed, eh = enc
    dw, dd, dh = dec
    ctx_rows = int(sum(ctx_lens))
    encoder = 2 * ctx_rows * patch_dim * ew + encoder_flops(ctx_lens, ew, ed, eh)
    decoder = 2 * ctx_rows * ew * dw + encoder_flops(dec_lens, dw, dd, dh) + 2 * num_targets * dw * patch_dim
    return 3 * (encoder + decoder)


def device_peak_flops(device: torch.device, override_tflops: Optional[float] = None) -> Optional[float]:
    """Peak FLOP/s for MFU, or None where unknown (CPU, unlisted GPU)."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16.items():
        if key in name:
            return peak
    return None
