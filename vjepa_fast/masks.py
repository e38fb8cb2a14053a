"""Masks for V-JEPA (multi-block 3D) and VideoMAE (tube), packed into flat row indices + cu_seqlens.

Packing convention (used by the models, the ops and the loss):
- a batch of B clips of N tokens and M mask configurations gives S = M * B sequences, ordered s = m * B + b;
- a "row" is a flat token index b * N + n into the [B, N, D] token tensor; each sequence's rows are sorted by n;
- `ctx_*` are the context (visible) sequences, `tgt_*` the target (predicted) ones, with int32 offsets `*_cu` [S + 1];
- the predictor lays out each sequence as [its context rows ; its target rows]: `pred_cu = ctx_cu + tgt_cu`, and
  `pred_ctx_slots` / `pred_tgt_slots` give each context / target row's position in that packed buffer.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class PackedMasks:
    num_tokens: int  # N tokens per clip
    batch_size: int  # B clips (local to this process)
    num_masks: int  # M mask configurations
    ctx_rows: torch.Tensor  # int64 [Rc]
    ctx_cu: torch.Tensor  # int32 [S + 1]
    ctx_max: int
    tgt_rows: torch.Tensor  # int64 [Rt]
    tgt_cu: torch.Tensor  # int32 [S + 1]
    tgt_max: int
    tgt_mask_id: torch.Tensor  # int64 [Rt]: the mask configuration m of each target row
    tgt_counts: torch.Tensor  # int64 [M]: target rows per mask configuration in this batch
    pred_cu: torch.Tensor  # int32 [S + 1]
    pred_max: int
    pred_ctx_slots: torch.Tensor  # int64 [Rc]
    pred_tgt_slots: torch.Tensor  # int64 [Rt]

    def _map(self, fn) -> "PackedMasks":
        vals = {}
        for f in fields(self):
            v = getattr(self, f.name)
            vals[f.name] = fn(v) if isinstance(v, torch.Tensor) else v
        return PackedMasks(**vals)

    def to(self, device, non_blocking: bool = False) -> "PackedMasks":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "PackedMasks":
        return self._map(lambda t: t.pin_memory())
