"""The V-JEPA video encoder: tubelet patch embedding, fixed 3D sin-cos positions, pre-norm blocks on packed tokens.

Blocks always see a flat [T, D] token buffer holding S sequences back to back (offsets `cu_seqlens`), so the same
module runs the dense target encoder (S = B sequences of N tokens, `uniform_len=N`) and the packed context encoder
(one variable-length sequence per (mask, sample)). Parameter names follow the reference checkpoints.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn

from vjepa_fast.models.pos_embed import POS_EMBEDS, Grid, interpolate_pos, position_table
from vjepa_fast.models.rope import rope_dtype, rope_tables
from vjepa_fast.ops import apply_rope_qkv, indexed_gather_add, varlen_attention
from vjepa_fast.ops.rope import RopeTables

# small ... giant are the original V-JEPA code's ViT-S/B/L/H/g (docs/recipe.md, "Model sizes and initialisation");
# tiny is this project's CPU quick-start size, not the original's ViT-Ti (192 wide, 12 deep, 3 heads).
VIT_SIZES: dict[str, dict] = {
    "tiny": dict(embed_dim=96, depth=4, num_heads=4, mlp_ratio=4.0),
    "small": dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0),
    "base": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
    "large": dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16, mlp_ratio=4.0),
    "giant": dict(embed_dim=1408, depth=40, num_heads=16, mlp_ratio=48 / 11),  # head dim 88
}

# How fresh weights are drawn (init_model): "reference" is what the original training starts from.
INIT_SCHEMES = ("reference", "depth_scaled")

INIT_STD = 0.02
# The reference truncates at +-2 in absolute value (100 standard deviations at std 0.02): in effect a plain normal
# with std 0.02. Kept that way so that initial weights have the reference's statistics.
INIT_TRUNC = 100.0  # truncate the normal at +-INIT_TRUNC standard deviations
LN_EPS = 1e-6


def init_weights(module: nn.Module) -> None:
    """Truncated-normal Linear / Conv3d weights, zero biases, LayerNorm (1, 0); everything below `module`."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv3d)):
            nn.init.trunc_normal_(m.weight, std=INIT_STD, a=-INIT_TRUNC * INIT_STD, b=INIT_TRUNC * INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@torch.no_grad()
def rescale_blocks(blocks: Sequence["Block"]) -> None:
    """Divide block i's (from 1) residual-branch output weights by sqrt(2 i), so deep stacks start near identity."""
    for i, block in enumerate(blocks, start=1):
        block.attn.proj.weight.div_(math.sqrt(2.0 * i))
        block.mlp.fc2.weight.div_(math.sqrt(2.0 * i))


def init_model(module: nn.Module, blocks: Sequence["Block"], scheme: str) -> None:
    """Initialise `module` by one of INIT_SCHEMES; `blocks` are the ones "depth_scaled" down-scales.

    "reference": every Linear / Conv3d weight at std 0.02, what the original V-JEPA training starts from (its script
    re-draws every Linear after building the models, which undoes the constructors' down-scaling; the Conv3d patch
    embedding keeps the constructor's std 0.02 draw). "depth_scaled": the constructors' own init, block i's (from 1)
    attn.proj / mlp.fc2 divided by sqrt(2 i)."""
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; choose one of {INIT_SCHEMES}")
    init_weights(module)
    if scheme == "depth_scaled":
        rescale_blocks(blocks)


class PatchEmbed3D(nn.Module):
    """Non-overlapping (tubelet, patch, patch) tubes -> tokens, as one strided Conv3d."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 1024, patch_size: int = 16, tubelet_size: int = 2):
        super().__init__()
        self.in_chans, self.patch_size, self.tubelet_size = in_chans, patch_size, tubelet_size
        k = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=k, stride=k)

    def grid_for(self, clips: torch.Tensor) -> Grid:
        """The token grid of a [B, C, T, H, W] clip batch; a clear error for shapes the tubes do not tile."""
        if clips.dim() != 5 or clips.shape[1] != self.in_chans:
            raise ValueError(f"clips must be [B, {self.in_chans}, T, H, W], got {tuple(clips.shape)}")
        T, H, W = clips.shape[2:]
        if T % self.tubelet_size or H % self.patch_size or W % self.patch_size or min(T, H, W) == 0:
            raise ValueError(f"clip of {T} frames x {H} x {W} is not tiled by tubelets of {self.tubelet_size} frames "
                             f"and {self.patch_size} x {self.patch_size} patches")
        return (T // self.tubelet_size, H // self.patch_size, W // self.patch_size)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        self.grid_for(clips)
        return self.proj(clips).flatten(2).transpose(1, 2)  # [B, D, T', H', W'] -> [B, N, D], n = t*H'W' + h*W' + w


class Attention(nn.Module):
    """Multi-head self-attention within each packed sequence, q/k/v read straight out of the fused projection."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                uniform_len: Optional[int] = None, rope: Optional[RopeTables] = None) -> torch.Tensor:
        T, D = x.shape
        qkv = self.qkv(x).reshape(T, 3, self.num_heads, self.head_dim)  # q, k, v outermost, as the reference
        if rope is not None:  # rotary positions (ops/rope.py): q and k rotated in one op
            qkv = apply_rope_qkv(qkv, rope)
        out = varlen_attention(qkv, cu_seqlens, max_seqlen, uniform_len)  # scale head_dim^-0.5
        return self.proj(out.reshape(T, D))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block on a flat [T, D] buffer of packed sequences."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = MLP(dim, int(round(dim * mlp_ratio)))  # round: 1408 * 48/11 must give 6144, not 6143

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                uniform_len: Optional[int] = None, rope: Optional[RopeTables] = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cu_seqlens, max_seqlen, uniform_len, rope)
        return x + self.mlp(self.norm2(x))


def stack_dims(blocks: Sequence[Block]) -> tuple[int, int, int]:
    """(width, depth, MLP hidden width) of a stack of blocks, from the modules' sizes: indexing a sharded weight
    would be a collective each step."""
    fc1 = blocks[0].mlp.fc1
    return fc1.in_features, len(blocks), fc1.out_features


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class VisionTransformer(nn.Module):
    """Video ViT. `forward(clips)` is the dense path; `forward(clips, rows, cu_seqlens, max_seqlen)` the packed one."""

    def __init__(self, size: str = "large", img_size=224, num_frames: int = 16, patch_size: int = 16,
                 tubelet_size: int = 2, in_chans: int = 3, pos_embed: str = "sincos", init: str = "reference",
                 **overrides):
        super().__init__()
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f"unknown position embedding {pos_embed!r}; choose one of {POS_EMBEDS}")
        if size not in VIT_SIZES:
            raise ValueError(f"unknown ViT size {size!r}; choose one of {sorted(VIT_SIZES)}")
        cfg = dict(VIT_SIZES[size])
        unknown = set(overrides) - set(cfg)
        if unknown:
            raise ValueError(f"unknown VisionTransformer overrides {sorted(unknown)}; allowed: {sorted(cfg)}")
        cfg.update(overrides)
        H, W = _pair(img_size)
        if num_frames % tubelet_size or H % patch_size or W % patch_size:
            raise ValueError(f"{num_frames} frames x {H} x {W} is not tiled by tubelets of {tubelet_size} frames and "
                             f"{patch_size} x {patch_size} patches")
        self.embed_dim, self.num_heads, self.depth = cfg["embed_dim"], cfg["num_heads"], cfg["depth"]
        self.head_dim = self.embed_dim // self.num_heads
        self.grid: Grid = (num_frames // tubelet_size, H // patch_size, W // patch_size)
        self.num_tokens = math.prod(self.grid)

        self.patch_embed = PatchEmbed3D(in_chans, self.embed_dim, patch_size, tubelet_size)
        self.pos_kind = pos_embed
        table = position_table(pos_embed, self.grid, self.embed_dim)  # POS_EMBEDS
        if table is not None:  # fixed, persistent (the reference checkpoints carry it), never trained
            self.register_buffer("pos_embed", table[None], persistent=True)
        else:  # rotary positions inside attention; no table (V-JEPA 2 checkpoints have none)
            self.pos_embed = None
        self.blocks = nn.ModuleList(Block(self.embed_dim, self.num_heads, cfg["mlp_ratio"]) for _ in range(self.depth))
        self.norm = nn.LayerNorm(self.embed_dim, eps=LN_EPS)
        init_model(self, self.blocks, init)
        self._pos_cache: dict = {}

    @property
    def patch_values(self) -> int:
        """Pixel values in one token's tube (channels x frames x patch height x width)."""
        pe = self.patch_embed
        return pe.in_chans * pe.tubelet_size * pe.patch_size ** 2

    def repeated_blocks(self) -> nn.ModuleList:
        return self.blocks

    def patchify(self, clips: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] -> patch tokens [B, N, D] (no position embedding)."""
        return self.patch_embed(clips)

    def pos_table(self, grid: Grid) -> torch.Tensor:
        """The [N, D] position table for a token grid, resized from the built one (cached) when it differs."""
        table = self.pos_embed[0]
        if tuple(grid) == self.grid:
            return table
        # Keyed on the buffer's identity and version so a load_state_dict / .to() never serves a stale table.
        key = (tuple(grid), table.device, table.dtype, table.data_ptr(), table._version)
        cached = self._pos_cache.get(key)
        if cached is None:
            with torch.no_grad():
                if self.pos_kind == "sincos_1d":  # a table over the token index: rebuilt, not resized
                    cached = position_table("sincos_1d", tuple(grid), table.shape[1]).to(table)
                else:
                    cached = interpolate_pos(table, self.grid, tuple(grid))
            self._pos_cache = {k: v for k, v in self._pos_cache.items() if k[3:] == key[3:]}
            self._pos_cache[key] = cached
        return cached

    def run_blocks(self, x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                   uniform_len: Optional[int] = None, rope: Optional[RopeTables] = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, cu_seqlens, max_seqlen, uniform_len, rope)
        return self.norm(x)

    def forward(self, clips: torch.Tensor, rows: Optional[torch.Tensor] = None,
                cu_seqlens: Optional[torch.Tensor] = None, max_seqlen: Optional[int] = None) -> torch.Tensor:
        grid = self.patch_embed.grid_for(clips)
        tokens = self.patchify(clips)
        pos = self.pos_table(grid) if self.pos_embed is not None else None
        B, N, D = tokens.shape
        if rows is None:
            if cu_seqlens is not None or max_seqlen is not None:
                raise ValueError("cu_seqlens / max_seqlen given without rows: the dense path takes neither")
            x = (tokens if pos is None else tokens + pos.to(tokens.dtype)).reshape(B * N, D)
            cu = torch.arange(B + 1, device=x.device, dtype=torch.int32) * N
            rope = self.rope_for(torch.arange(N, device=x.device), grid)  # one table for every clip
            return self.run_blocks(x, cu, N, uniform_len=N, rope=rope).reshape(B, N, D)
        if cu_seqlens is None or max_seqlen is None:
            raise ValueError("the packed path needs rows, cu_seqlens and max_seqlen together")
        # The context tokens: one gather-add of token rows b * N + n and position rows n.
        x = indexed_gather_add(tokens.reshape(B * N, D), rows, pos, rows % N, unique_rows=True)
        return self.run_blocks(x, cu_seqlens, int(max_seqlen), rope=self.rope_for(rows % N, grid))

    def rope_for(self, index: torch.Tensor, grid: Grid) -> Optional[RopeTables]:
        """Rotary tables for rows with token indices `index` on the clip's grid (None with a sin-cos table)."""
        if self.pos_kind != "rope":
            return None
        return rope_tables(index, grid, self.head_dim, rope_dtype(self.patch_embed.proj.weight))
