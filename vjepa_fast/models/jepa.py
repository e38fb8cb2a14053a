"""V-JEPA: context encoder + predictor, EMA target encoder, L1 loss on normalised target features.

A plain nn.Module: distribution, compilation and backends are applied from outside (parallel.py). It implements the
trainer's protocol (models/protocol.py).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from vjepa_fast.models.collapse_stats import rank_rows, token_std
from vjepa_fast.models.flops import vjepa_step_flops
from vjepa_fast.masks import PackedMasks
from vjepa_fast.models.protocol import StepStats, per_mask_mean_weights
from vjepa_fast.models.sigreg import SIGReg
from vjepa_fast.models.vit import stack_dims
from vjepa_fast.ops import l1_target_loss
from vjepa_fast.profiling import nvtx_range


class VJEPA(nn.Module):
    """`sigreg_weight` w > 0 (loss.sigreg) trains (1 - w) x the prediction loss + w x `sigreg` on the context
    encoder's output tokens (models/sigreg.py); w = 0 is the original objective, computed exactly as without it."""

    def __init__(self, encoder: nn.Module, predictor: nn.Module, sigreg: SIGReg | None = None,
                 sigreg_weight: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor
        self.target_encoder = copy.deepcopy(encoder)
        for p in self.target_encoder.parameters():
            p.requires_grad_(False)
        self.sigreg = sigreg if sigreg_weight > 0 else None
        self.sigreg_weight = sigreg_weight
        # Device tensors of the last step, read by the trainer on logged steps only (collapse.py):
        self.feature_stats: torch.Tensor | None = None  # [target std, prediction std]
        self.loss_terms: torch.Tensor | None = None  # [prediction loss, sigreg] when the SIGReg term is on
        self.rank_rows: tuple[torch.Tensor, torch.Tensor] | None = None  # (target, context) token subsamples

    @property
    def grid(self) -> tuple[int, int, int]:
        return self.encoder.grid

    def parts(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "predictor": self.predictor, "target_encoder": self.target_encoder}

    def top_modules(self) -> list[nn.Module]:
        return list(self.parts().values())

    def repeated_blocks(self) -> dict[str, nn.ModuleList]:
        return {role: part.repeated_blocks() for role, part in self.parts().items()}

    def step_stats(self) -> StepStats:
        return StepStats(self.feature_stats, self.loss_terms, self.rank_rows)

    def row_weights(self, masks: PackedMasks, target_counts: torch.Tensor, world_size: int) -> torch.Tensor:
        """The objective's averaging: the mean |z - h| over each mask's target values, averaged over the masks."""
        return per_mask_mean_weights(masks, target_counts, world_size, self.encoder.embed_dim)

    def step_flops(self, masks: PackedMasks) -> float:
        """Useful FLOPs of one step on this batch (docs/architecture.md, performance model)."""
        ctx_lens = (masks.ctx_cu[1:] - masks.ctx_cu[:-1]).tolist()
        pred_lens = (masks.pred_cu[1:] - masks.pred_cu[:-1]).tolist()
        return vjepa_step_flops(masks.batch_size, masks.num_tokens, self.encoder.patch_values,
                                stack_dims(self.encoder.repeated_blocks()),
                                stack_dims(self.predictor.repeated_blocks()), ctx_lens, pred_lens,
                                int(masks.tgt_rows.numel()))

    def trainable_modules(self) -> list[nn.Module]:
        return [self.encoder, self.predictor]

    def ema_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(target, online) parameters in matching order, for the EMA update."""
        return list(self.target_encoder.parameters()), list(self.encoder.parameters())

    def forward(self, video: torch.Tensor, masks: PackedMasks, row_weight: torch.Tensor,
                step: int = 0) -> torch.Tensor:
        """Returns the weighted L1 loss (a scalar; with SIGReg on, mixed with it); `row_weight` [Rt] carries the
        per-mask averaging, `step` seeds SIGReg's directions."""
        with torch.no_grad(), nvtx_range("target"):
            h = self.target_encoder(video)  # [B, N, D], after the final norm
            target_std = token_std(h)  # within each clip (collapse.py)
            h = h.reshape(-1, h.shape[-1])
        with nvtx_range("context"):
            ctx = self.encoder(video, rows=masks.ctx_rows, cu_seqlens=masks.ctx_cu, max_seqlen=masks.ctx_max)
        with nvtx_range("predictor"):
            z = self.predictor(ctx, masks)  # [Rt, D]
        self.feature_stats = torch.stack([target_std, token_std(z.detach())])  # stays on the device
        self.rank_rows = (rank_rows(h), rank_rows(ctx))
        with nvtx_range("loss"):
            loss = l1_target_loss(z, h, masks.tgt_rows, row_weight)
        if self.sigreg is None:
            return loss
        with nvtx_range("sigreg"):
            reg = self.sigreg(ctx, step)
        self.loss_terms = torch.stack([loss.detach().float(), reg.detach()])
        w = self.sigreg_weight
        return (1 - w) * loss + w * reg
