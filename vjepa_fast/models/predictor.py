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

    def forward(self, ctx: torch.Tensor, masks: PackedMasks) -> torch.Tensor:
        """ctx [Rc, D] (context encoder output, packed as masks.ctx_*) -> predictions [Rt, D] for masks.tgt_rows."""
        masks.check_decoder_input("predictor", ctx, self.embed_dim, self.grid, self.num_tokens,
                                  len(self.mask_tokens))
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
