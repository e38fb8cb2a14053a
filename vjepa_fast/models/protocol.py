"""What the training loop may ask of a pretraining model: the one seam between vjepa_fast/train.py and the models.

The objective lives in the model: the trainer all-reduces the batch's target counts, asks the model for the per-row
loss weights they imply, runs forward / backward / optimizer and the EMA of the pairs the model names, and moves
numbers. It never looks inside a model (no attribute probing): what it, the float8 conversion, parallel.py, the run
log and `weights.load_into` need (parts by role, repeated blocks, the last step's statistics, FLOPs) the model says. `VJEPA`, `VideoMAE` and the benchmarks'
reference-style step implement this protocol (checked by tests/test_models.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, runtime_checkable

import torch
import torch.nn as nn

from vjepa_fast.masks import PackedMasks


@dataclass(frozen=True)
class StepStats:
    """Device tensors of the last forward, read by the trainer on logged steps only (collapse.py), so they add no
    host sync to the other steps; None where the model has no such number."""
    feature_stats: Optional[torch.Tensor] = None  # [target std, prediction std]
    loss_terms: Optional[torch.Tensor] = None  # [prediction loss, sigreg] when the loss has both
    rank_rows: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (target, context) token subsamples


@runtime_checkable
class PretrainModel(Protocol):
    grid: tuple[int, int, int]
    """The token grid (T', H', W') of a clip: the masks are drawn over it."""

    def parts(self) -> dict[str, nn.Module]:
        """Its parts by role ("encoder", "predictor" or "decoder", "target_encoder"), in the order FSDP2 shards
        them: the names its checkpoints, `train.init_from`, the float8 conversion and the run log use."""
        ...

    def top_modules(self) -> list[nn.Module]:
        """The parts FSDP2 shards one by one (after their blocks): the values of parts()."""
        ...

    def repeated_blocks(self) -> dict[str, nn.ModuleList]:
        """Each part's transformer blocks, by the part's role: what activation checkpointing, per-block compile and
        FSDP2's per-block sharding apply to."""
        ...

    def step_stats(self) -> StepStats:
        """The last forward's statistics (still on the device)."""
        ...

    def trainable_modules(self) -> list[nn.Module]:
        """The parts the optimizer updates."""
        ...

    def ema_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(targets, sources) in matching order for the EMA update; two empty lists when there is no EMA."""
        ...

    def step_flops(self, masks: PackedMasks) -> float:
        """Useful FLOPs of one step of this process on these masks (docs/architecture.md, performance model)."""
        ...

    def row_weights(self, masks: PackedMasks, target_counts: torch.Tensor, world_size: int) -> torch.Tensor:
        """fp32 weight per target row of `masks`, given the target rows per mask configuration summed over all
        `world_size` processes, such that the weighted loss summed per process and averaged over processes (FSDP's
        gradient averaging) is the global batch's objective."""
        ...

    def __call__(self, video: torch.Tensor, masks: PackedMasks, row_weight: torch.Tensor,
                 step: int = 0) -> torch.Tensor:
        """The weighted loss of this process's batch (an fp32 scalar) at optimizer step `step` (a term with random
        draws, such as SIGReg's directions, takes them as a function of the step)."""
        ...


def per_mask_mean_weights(masks: PackedMasks, target_counts: torch.Tensor, world_size: int,
                          width: int) -> torch.Tensor:
    """Row weights that make sum_r w[r] * sum_d err[r, d] the mean over each mask configuration's target values of
    the whole global batch, averaged over the configurations: w = world / (M * rows of its mask over all processes *
    width). Computed in the counts' dtype (fp64 from the trainer), then rounded once to fp32."""
    per_mask = world_size / (masks.num_masks * target_counts.clamp(min=1) * width)
    return per_mask.to(torch.float32).to(masks.tgt_mask_id.device)[masks.tgt_mask_id]
