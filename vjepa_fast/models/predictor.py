"""The V-JEPA predictor: a narrow ViT over [context tokens ; mask token + position per target], packed.

Every (mask, sample) sequence is laid out as its context rows followed by its target rows (masks.py convention);
all sequences sit back to back in one [Rc + Rt, Dp] buffer built by a single gather (ops.gather.indexed_gather_add:
slot r = [projected context ; mask tokens][pred_src_rows[r]] + pos[pred_pos_rows[r]]), so there is no per-sequence
Python loop and no padding. Only the target rows are normalised and projected back.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from vjepa_fast.masks import PackedMasks
from vjepa_fast.models.pos_embed import Grid, position_table
from vjepa_fast.models.rope import rope_dtype, rope_tables
from vjepa_fast.models.vit import LN_EPS, VIT_SIZES, Block, init_model
from vjepa_fast.ops.gather import indexed_gather_add

# Predictor width / depth per encoder size (the original's pretraining configs: 384 wide, 12 deep); its head count
# is the encoder's, as the original passes the encoder's num_heads (giant: 16 heads of 24).
PREDICTOR_DEFAULTS: dict[str, dict] = {
    size: dict(pred_dim=48 if size == "tiny" else 384, depth=2 if size == "tiny" else 12, num_heads=cfg["num_heads"])
    for size, cfg in VIT_SIZES.items()
}


class Predictor(nn.Module):
    def __init__(self, embed_dim: int, pred_dim: int = 384, depth: int = 12, num_heads: int = 16,
                 grid: Grid = (8, 14, 14), num_mask_tokens: int = 2, mlp_ratio: float = 4.0,
                 pos_embed: str = "sincos", init: str = "reference"):
        super().__init__()
        if num_mask_tokens < 1:
            raise ValueError(f"num_mask_tokens must be >= 1, got {num_mask_tokens}")
        self.embed_dim, self.pred_dim, self.num_heads = embed_dim, pred_dim, num_heads
        self.grid: Grid = tuple(int(g) for g in grid)  # type: ignore[assignment]
        self.num_tokens = math.prod(self.grid)
        self.predictor_embed = nn.Linear(embed_dim, pred_dim)
        self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, 1, pred_dim)) for _ in range(num_mask_tokens))
        self.pos_kind = pos_embed
        table = position_table(pos_embed, self.grid, pred_dim)
        if table is not None:
            self.register_buffer("predictor_pos_embed", table[None], persistent=True)
        else:  # rotary positions inside attention (V-JEPA 2): no table
            self.predictor_pos_embed = None
        self.predictor_blocks = nn.ModuleList(Block(pred_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.predictor_norm = nn.LayerNorm(pred_dim, eps=LN_EPS)
        self.predictor_proj = nn.Linear(pred_dim, embed_dim)
        init_model(self, self.predictor_blocks, init)  # Linear / LayerNorm only: the mask tokens stay zero

    def repeated_blocks(self) -> nn.ModuleList:
        return self.predictor_blocks

    def _validate(self, ctx: torch.Tensor, masks: PackedMasks) -> None:
        if ctx.dim() != 2 or ctx.shape[1] != self.embed_dim:
            raise ValueError(f"predictor: ctx must be [Rc, {self.embed_dim}], got {tuple(ctx.shape)}")
        if masks.num_tokens != self.num_tokens:
            raise ValueError(f"predictor: masks are for {masks.num_tokens} tokens per clip but the predictor was built "
                             f"for grid {self.grid} = {self.num_tokens} tokens")
        if masks.num_masks > len(self.mask_tokens):
            raise ValueError(f"predictor: {masks.num_masks} mask configurations but only {len(self.mask_tokens)} "
                             f"mask tokens")
        Rc, Rt = masks.ctx_rows.numel(), masks.tgt_rows.numel()
        if ctx.shape[0] != Rc or masks.pred_ctx_slots.numel() != Rc:
            raise ValueError(f"predictor: ctx has {ctx.shape[0]} rows, ctx_rows {Rc}, pred_ctx_slots "
                             f"{masks.pred_ctx_slots.numel()}: they must agree")
        if masks.pred_tgt_slots.numel() != Rt or masks.tgt_mask_id.numel() != Rt:
            raise ValueError(f"predictor: tgt_rows {Rt}, pred_tgt_slots {masks.pred_tgt_slots.numel()}, tgt_mask_id "
                             f"{masks.tgt_mask_id.numel()}: they must agree")
        for name in ("pred_src_rows", "pred_pos_rows"):
            t = getattr(masks, name)
            if t.numel() != Rc + Rt:
                raise ValueError(f"predictor: masks.{name} has {t.numel()} entries but the predictor buffer has "
                                 f"Rc + Rt = {Rc + Rt} rows")
        for name in ("ctx_rows", "tgt_rows", "tgt_mask_id", "pred_cu", "pred_ctx_slots", "pred_tgt_slots",
                     "pred_src_rows", "pred_pos_rows"):
            t = getattr(masks, name)
            if t.device != ctx.device:
                raise ValueError(f"predictor: masks.{name} on {t.device} but ctx on {ctx.device}")

    def forward(self, ctx: torch.Tensor, masks: PackedMasks) -> torch.Tensor:
        """ctx [Rc, D] (context encoder output, packed as masks.ctx_*) -> predictions [Rt, D] for masks.tgt_rows."""
        self._validate(ctx, masks)
        x = self.predictor_embed(ctx)
        tokens = torch.cat(list(self.mask_tokens), dim=0).reshape(-1, self.pred_dim)  # [num_mask_tokens, Dp]
        table = self.predictor_pos_embed[0] if self.predictor_pos_embed is not None else None
        buf = layout_buffer(x, tokens, table, masks)
        rope = None
        if self.pos_kind == "rope":  # each slot's token index is its pred_pos_rows entry
            rope = rope_tables(masks.pred_pos_rows, self.grid, self.pred_dim // self.num_heads,
                               rope_dtype(self.predictor_embed.weight))
        for block in self.predictor_blocks:
            buf = block(buf, masks.pred_cu, masks.pred_max, None, rope)
        z = buf.index_select(0, masks.pred_tgt_slots)  # norm is per token: normalise only what is returned
        return self.predictor_proj(self.predictor_norm(z))


def build_predictor(size: str, embed_dim: int, grid: Grid, num_mask_tokens: int = 2, **overrides) -> Predictor:
    """The predictor matching an encoder of VIT_SIZES[size] (PREDICTOR_DEFAULTS), with optional overrides."""
    if size not in PREDICTOR_DEFAULTS:
        raise ValueError(f"unknown ViT size {size!r}; choose one of {sorted(PREDICTOR_DEFAULTS)}")
    cfg = {**PREDICTOR_DEFAULTS[size], **overrides}
    return Predictor(embed_dim, grid=grid, num_mask_tokens=num_mask_tokens, **cfg)


def layout_buffer(x: torch.Tensor, tokens: torch.Tensor, pos: Optional[torch.Tensor],
                  masks: PackedMasks) -> torch.Tensor:
    """The packed [ctx + pos ; mask token + pos] buffer of every sequence, in one gather.

    x [Rc, W] projected context rows, tokens [M, W] mask tokens (one per mask configuration), pos [N, W] the fixed
    position table (None: rotary positions, applied in attention). src = [x ; tokens]; the op's backward sums every
    copy of a mask token into its gradient in fp32. Shared by the V-JEPA predictor and the VideoMAE decoder."""
    src = torch.cat([x, tokens.to(x.dtype)])
    if pos is not None and pos.dtype != x.dtype and (pos.dtype != torch.float32 or x.dtype == torch.float64):
        pos = pos.to(x.dtype)  # the op takes pos in src's dtype or fp32 (fp32 under bf16: one rounding, not two)
    return indexed_gather_add(src, masks.pred_src_rows, pos, masks.pred_pos_rows)
