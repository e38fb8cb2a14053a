"""The V-JEPA step as the original code runs it: the train-step benchmark's baseline and a parity check
(tests/test_reference_style.py). Benchmark code, not part of the package.

Same parameters as VJEPA (it wraps a VJEPA instance), different execution:
- masks truncated to the batch minimum (pack_masks(truncate_to_batch_min=True)), so every clip of a mask
  configuration keeps the same number of tokens and batches are dense [B, L, D];
- one full encoder pass (patch embedding included) and one predictor pass per mask configuration, as the
  original code's multi-mask wrappers loop over masks;
- plain SDPA through `uniform_len` (no varlen kernel), torch.gather for the masked tokens (no gather kernel);
- the target: LayerNorm over every token of the target encoder's output, then gather, subtract, abs, mean (no fused
  loss), averaged over the mask configurations;
- EMA by a Python loop over parameters (`ema_step`, or the `ema` op forced to its `reference` backend), eager.

On the same truncated masks its loss equals VJEPA's (with the trainer's row weights) up to float rounding.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vjepa_fast.masks import PackedMasks
from vjepa_fast.models.protocol import StepStats
from vjepa_fast.ops.ema import ema_update_reference
from vjepa_fast.profiling import nvtx_range


def per_mask_indices(masks: PackedMasks) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(ctx [B, Lc_m], tgt [B, Lt_m]) token indices n per mask configuration m] from truncated packed masks."""
    B, N, M = masks.batch_size, masks.num_tokens, masks.num_masks
    out = []
    for m in range(M):
        pair = []
        for role, rows, cu in (("context", masks.ctx_rows, masks.ctx_cu), ("target", masks.tgt_rows, masks.tgt_cu)):
            cu_m = cu[m * B:(m + 1) * B + 1].cpu().long()
            lens = cu_m[1:] - cu_m[:-1]
            if B == 0 or bool((lens != lens[0]).any()) or int(lens[0]) == 0:
                raise ValueError(f"reference-style step: mask configuration {m} has {role} lengths "
                                 f"{lens.tolist()}; it needs equal, non-zero lengths per configuration (masks "
                                 f"truncated to the batch minimum: pack_masks(truncate_to_batch_min=True))")
            L = int(lens[0])
            pair.append((rows[int(cu_m[0]):int(cu_m[-1])] % N).reshape(B, L))
        out.append((pair[0], pair[1]))
    return out


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, N, D], idx [B, L] -> [B, L, D] (the original code's apply_masks)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _dense_blocks(blocks, x: torch.Tensor) -> torch.Tensor:
    """Run blocks on a dense [B, L, D] batch: every sequence L long, so attention is one plain SDPA call."""
    B, L, D = x.shape
    cu = torch.arange(B + 1, device=x.device, dtype=torch.int32) * L
    flat = x.reshape(B * L, D)
    for block in blocks:
        flat = block(flat, cu, L, uniform_len=L)
    return flat.reshape(B, L, D)


class ReferenceStyleVJEPA(nn.Module):
    """forward(video, masks, row_weight) -> the original objective; the trainer's protocol, VJEPA's parameters."""

    def __init__(self, vjepa: nn.Module):
        super().__init__()
        for name in ("encoder", "predictor", "target_encoder"):
            if not isinstance(getattr(vjepa, name, None), nn.Module):
                raise ValueError(f"ReferenceStyleVJEPA wraps a VJEPA model; {type(vjepa).__name__} has no {name}")
        self.vjepa = vjepa

    # The wrapped model's parts, not registered twice.
    @property
    def encoder(self) -> nn.Module:
        return self.vjepa.encoder

    @property
    def predictor(self) -> nn.Module:
        return self.vjepa.predictor

    @property
    def target_encoder(self) -> nn.Module:
        return self.vjepa.target_encoder

    @property
    def grid(self) -> tuple[int, int, int]:
        return self.vjepa.grid

    def parts(self) -> dict[str, nn.Module]:
        return self.vjepa.parts()

    def top_modules(self) -> list[nn.Module]:
        return self.vjepa.top_modules()

    def repeated_blocks(self) -> dict[str, nn.ModuleList]:
        return self.vjepa.repeated_blocks()

    def step_stats(self) -> StepStats:
        return StepStats()  # its forward keeps no statistics

    def row_weights(self, masks: PackedMasks, target_counts: torch.Tensor, world_size: int) -> torch.Tensor:
        # The trainer's interface; forward does not use them (the original code averages per process).
        return self.vjepa.row_weights(masks, target_counts, world_size)

    def step_flops(self, masks: PackedMasks) -> float:
        """Useful FLOPs on the (truncated) tokens it keeps, by the same model as VJEPA's."""
        return self.vjepa.step_flops(masks)

    def trainable_modules(self) -> list[nn.Module]:
        return self.vjepa.trainable_modules()

    def ema_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.vjepa.ema_pairs()

    @torch.no_grad()
    def ema_step(self, momentum: float) -> None:
        """The original code's EMA: a Python loop over parameter pairs."""
        targets, sources = self.ema_pairs()
        ema_update_reference(targets, sources, momentum)

    def encode(self, video: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Context encoder on tokens idx [B, L] of each clip: a full patch embedding, gather, dense blocks."""
        enc = self.encoder
        tokens = enc.patchify(video)
        x = tokens + enc.pos_table(enc.patch_embed.grid_for(video)).to(tokens.dtype)
        return enc.norm(_dense_blocks(enc.blocks, _take(x, idx)))

    def predict(self, z: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor, m: int) -> torch.Tensor:
        """Predictor on [context ; mask token m + position per target] -> [B, Lt, D] predictions."""
        pr = self.predictor
        pos = pr.predictor_pos_embed[0]
        x = pr.predictor_embed(z)
        x = x + pos[ctx_idx].to(x.dtype)
        t = pr.mask_tokens[m].reshape(1, 1, -1) + pos[tgt_idx]
        x = torch.cat([x, t.to(x.dtype)], dim=1)
        x = pr.predictor_norm(_dense_blocks(pr.predictor_blocks, x))  # the original normalises every token
        return pr.predictor_proj(x[:, ctx_idx.shape[1]:])

    def forward(self, video: torch.Tensor, masks: PackedMasks, row_weight=None, step: int = 0) -> torch.Tensor:
        """The original objective: mean |z - LN(h)| per mask configuration, averaged over configurations.

        `row_weight` and `step` are accepted for the trainer's protocol and not used: the original code averages per
        process.
        """
        if masks.batch_size != video.shape[0]:
            raise ValueError(f"reference-style step: masks are for {masks.batch_size} clips but video has "
                             f"{video.shape[0]}")
        per_mask = per_mask_indices(masks)
        idx = [(c.to(video.device), t.to(video.device)) for c, t in per_mask]
        with nvtx_range("target"), torch.no_grad():
            h = self.target_encoder(video)
            h = F.layer_norm(h, (h.shape[-1],))  # over all N tokens, before any gather
        loss = video.new_zeros((), dtype=torch.float32)
        for m, (ctx_idx, tgt_idx) in enumerate(idx):
            with nvtx_range("context"):
                z = self.encode(video, ctx_idx)
            with nvtx_range("predictor"):
                p = self.predict(z, ctx_idx, tgt_idx, m)
            with nvtx_range("loss"):
                loss = loss + (p - _take(h, tgt_idx)).abs().mean()
        return loss / len(idx)
