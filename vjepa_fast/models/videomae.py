"""The VideoMAE pixel-reconstruction baseline (docs/recipe.md), trained by the same loop.

Masks come from TubeMasker through the same collate as V-JEPA's (M = 1: ctx = visible rows, tgt = masked rows), so
the data flow is V-JEPA's with a pixel head instead of a feature target:
1. the encoder runs on the visible tokens only (packed, varlen attention);
2. the decoder projects them to its width, lays out each clip as [visible ; one mask token + position per masked
   token] with the predictor's packed layout (masks.pred_*), runs its blocks, and predicts tubelet x patch x patch x 3
   pixel values for every masked token;
3. the target is each masked tube's pixels normalised per tube and per channel (VideoMAE's norm-pix target), and the
   loss is sum_r row_weight[r] * sum_d (pred - target)^2: with the trainer's row weights, the MSE over masked values.

The clips arrive ImageNet-normalised; VideoMAE undoes that before normalising each patch, but a per-channel affine map
with positive scale changes a per-patch, per-channel standardisation only through its eps, so it is skipped here.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from vjepa_fast.models.flops import videomae_step_flops
from vjepa_fast.masks import PackedMasks
from vjepa_fast.models.pos_embed import Grid, position_table
from vjepa_fast.models.predictor import layout_buffer
from vjepa_fast.models.protocol import StepStats, per_mask_mean_weights
from vjepa_fast.models.vit import INIT_STD, LN_EPS, Block, init_weights, stack_dims
from vjepa_fast.profiling import nvtx_range

PIX_EPS = 1e-6  # VideoMAE's eps on the per-patch standard deviation

# Decoder width / depth / heads per encoder size (docs/recipe.md: 384 for ViT-B and smaller, 512 for ViT-L and larger,
# depth 4; head dim 64 as VideoMAE's decoders). The tiny CPU model gets a tiny decoder, like its predictor.
DECODER_DEFAULTS: dict[str, dict] = {
    "tiny": dict(dim=48, depth=2, num_heads=4),
    "small": dict(dim=384, depth=4, num_heads=6),
    "base": dict(dim=384, depth=4, num_heads=6),
    "large": dict(dim=512, depth=4, num_heads=8),
    "huge": dict(dim=512, depth=4, num_heads=8),
    "giant": dict(dim=512, depth=4, num_heads=8),
}


def clip_patches(video: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B * N, tubelet * patch * patch, C]: each token's tube of pixels, token order as the encoder.

    Token n = t * H' * W' + h * W' + w (the Conv3d patch embedding's order); inside a tube the pixels run
    (frame, row, column), channels last, the layout VideoMAE flattens its targets to.
    """
    if video.dim() != 5:
        raise ValueError(f"clip_patches: video must be [B, C, T, H, W], got {tuple(video.shape)}")
    B, C, T, H, W = video.shape
    if T % tubelet or H % patch or W % patch or min(T, H, W) == 0:
        raise ValueError(f"clip_patches: clip of {T} x {H} x {W} is not tiled by {tubelet} x {patch} x {patch} tubes")
    x = video.reshape(B, C, T // tubelet, tubelet, H // patch, patch, W // patch, patch)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # [B, T', H', W', tubelet, patch, patch, C]
    return x.reshape(B * (T // tubelet) * (H // patch) * (W // patch), tubelet * patch * patch, C)


def patch_targets(video: torch.Tensor, rows: torch.Tensor, tubelet: int, patch: int,
                  eps: float = PIX_EPS) -> torch.Tensor:
    """Normalised pixel targets [R, tubelet * patch * patch * C] (fp32) of the tokens `rows` (flat b * N + n).

    Each tube is standardised per channel over its pixels: (x - mean) / (std + eps) with the unbiased variance, as
    VideoMAE. Only the requested rows are normalised.
    """
    if tubelet * patch * patch < 2:
        raise ValueError("patch_targets: a tube of one pixel has no variance; use tubelet * patch * patch >= 2")
    tubes = clip_patches(video, tubelet, patch)
    if rows.dim() != 1 or rows.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"patch_targets: rows must be a 1-D int32/int64 tensor, got {rows.dtype} {tuple(rows.shape)}")
    if rows.device != video.device:
        raise ValueError(f"patch_targets: rows on {rows.device} but video on {video.device}")
    if rows.numel() and video.device.type == "cpu":  # a host sync on GPU; index_select checks there anyway
        lo, hi = int(rows.min()), int(rows.max())
        if lo < 0 or hi >= tubes.shape[0]:
            raise IndexError(f"patch_targets: row indices must be in [0, {tubes.shape[0]}), got min {lo}, max {hi}")
    x = tubes.index_select(0, rows.long()).float()  # [R, P, C]
    if x.shape[0] == 0:
        return x.reshape(0, x.shape[1] * x.shape[2])
    mean = x.mean(dim=1, keepdim=True)
    std = x.var(dim=1, unbiased=True, keepdim=True).sqrt()
    return ((x - mean) / (std + eps)).reshape(x.shape[0], x.shape[1] * x.shape[2])


def pixel_mse_loss(pred: torch.Tensor, target: torch.Tensor, row_weight: torch.Tensor) -> torch.Tensor:
    """sum_r row_weight[r] * sum_d (pred[r, d] - target[r, d])^2 in fp32 (an fp32 scalar)."""
    if pred.shape != target.shape or pred.dim() != 2:
        raise ValueError(f"pixel_mse_loss: pred and target must be equal [R, D], got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    if row_weight.shape != (pred.shape[0],):
        raise ValueError(f"pixel_mse_loss: row_weight must be [R={pred.shape[0]}], got {tuple(row_weight.shape)}")
    sq = (pred.float() - target.float()).square().sum(dim=1)
    return (row_weight.float() * sq).sum()


class VideoMAEDecoder(nn.Module):
    """Everything after the encoder: encoder -> decoder projection, mask token, blocks, norm, pixel head.

    Kept in one module (not split across the model) so that FSDP2 shards all of it with the decoder's blocks.
    """

    def __init__(self, embed_dim: int, dim: int, depth: int, num_heads: int, grid: Grid, out_dim: int,
                 mlp_ratio: float = 4.0, pos_embed: str = "sincos"):
        super().__init__()
        if pos_embed == "rope":
            raise ValueError("VideoMAEDecoder: rotary positions are not supported; use sincos or sincos_1d")
        for name, v in (("embed_dim", embed_dim), ("dim", dim), ("depth", depth), ("num_heads", num_heads),
                        ("out_dim", out_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"VideoMAEDecoder: {name} must be a positive integer, got {v!r}")
        if dim % num_heads:
            raise ValueError(f"VideoMAEDecoder: width {dim} is not divisible by {num_heads} heads")
        self.embed_dim, self.dim, self.out_dim = embed_dim, dim, out_dim
        self.grid: Grid = tuple(int(g) for g in grid)  # type: ignore[assignment]
        self.num_tokens = math.prod(self.grid)
        self.encoder_to_decoder = nn.Linear(embed_dim, dim, bias=False)
        self.mask_token = nn.Parameter(torch.empty(1, dim))
        # Fixed table, rebuilt from the grid: not saved in checkpoints.
        self.register_buffer("pos_embed", position_table(pos_embed, self.grid, dim), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.head = nn.Linear(dim, out_dim)
        init_weights(self)
        nn.init.trunc_normal_(self.mask_token, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)  # as VideoMAE

    def repeated_blocks(self) -> nn.ModuleList:
        return self.blocks

    def forward(self, ctx: torch.Tensor, masks: PackedMasks) -> torch.Tensor:
        """ctx [Rc, D] (encoder output on the visible rows) -> pixel predictions [Rt, out_dim] for masks.tgt_rows."""
        masks.check_decoder_input("VideoMAEDecoder", ctx, self.embed_dim, self.grid, self.num_tokens)
        x = self.encoder_to_decoder(ctx)
        # [visible + pos ; mask token + pos] per clip in one packed buffer (M = 1: every masked row uses the token)
        buf = layout_buffer(x, self.mask_token, self.pos_embed, masks)
        for block in self.blocks:
            buf = block(buf, masks.pred_cu, masks.pred_max)
        z = buf.index_select(0, masks.pred_tgt_slots)  # norm and head are per token: only the masked rows
        return self.head(self.norm(z))


class VideoMAE(nn.Module):
    """Encoder on visible tokens + pixel decoder; forward(video, masks, row_weight) -> the weighted MSE (a scalar)."""

    def __init__(self, encoder: nn.Module, decoder: VideoMAEDecoder, pix_eps: float = PIX_EPS):
        super().__init__()
        pe = encoder.patch_embed
        if decoder.out_dim != pe.in_chans * pe.tubelet_size * pe.patch_size ** 2:
            raise ValueError(f"VideoMAE: the decoder predicts {decoder.out_dim} values per token but a tube holds "
                             f"{pe.in_chans} x {pe.tubelet_size} x {pe.patch_size}^2 pixels")
        if decoder.embed_dim != encoder.embed_dim or decoder.grid != tuple(encoder.grid):
            raise ValueError(f"VideoMAE: decoder built for width {decoder.embed_dim}, grid {decoder.grid} but the "
                             f"encoder has width {encoder.embed_dim}, grid {tuple(encoder.grid)}")
        self.encoder = encoder
        self.decoder = decoder
        self.pix_eps = pix_eps

    @property
    def grid(self) -> tuple[int, int, int]:
        return self.encoder.grid

    def parts(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "decoder": self.decoder}

    def top_modules(self) -> list[nn.Module]:
        return list(self.parts().values())

    def repeated_blocks(self) -> dict[str, nn.ModuleList]:
        return {role: part.repeated_blocks() for role, part in self.parts().items()}

    def step_stats(self) -> StepStats:
        return StepStats()  # no feature statistics: the collapse watch is V-JEPA's

    def trainable_modules(self) -> list[nn.Module]:
        return [self.encoder, self.decoder]

    def ema_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return [], []  # no target encoder

    def row_weights(self, masks: PackedMasks, target_counts: torch.Tensor, world_size: int) -> torch.Tensor:
        """The MSE over the masked pixel values of the global batch (M = 1; a row holds the tube's out_dim values)."""
        return per_mask_mean_weights(masks, target_counts, world_size, self.decoder.out_dim)

    def step_flops(self, masks: PackedMasks) -> float:
        """Useful FLOPs of one step on this batch (docs/architecture.md, performance model)."""
        ctx_lens = (masks.ctx_cu[1:] - masks.ctx_cu[:-1]).tolist()
        dec_lens = (masks.pred_cu[1:] - masks.pred_cu[:-1]).tolist()
        return videomae_step_flops(self.decoder.out_dim, stack_dims(self.encoder.repeated_blocks()),
                                   stack_dims(self.decoder.repeated_blocks()), ctx_lens, dec_lens,
                                   int(masks.tgt_rows.numel()))

    def forward(self, video: torch.Tensor, masks: PackedMasks, row_weight: torch.Tensor,
                step: int = 0) -> torch.Tensor:  # step: the protocol's; nothing here depends on it
        pe = self.encoder.patch_embed
        if masks.batch_size != video.shape[0]:
            raise ValueError(f"VideoMAE: masks are for {masks.batch_size} clips but video has {video.shape[0]}")
        with nvtx_range("target"), torch.no_grad():
            target = patch_targets(video, masks.tgt_rows, pe.tubelet_size, pe.patch_size, self.pix_eps)
        with nvtx_range("context"):
            ctx = self.encoder(video, rows=masks.ctx_rows, cu_seqlens=masks.ctx_cu, max_seqlen=masks.ctx_max)
        with nvtx_range("predictor"):
            pred = self.decoder(ctx, masks)
        with nvtx_range("loss"):
            return pixel_mse_loss(pred, target, row_weight)


def build_videomae(cfg, encoder: nn.Module) -> VideoMAE:
    """The baseline for `cfg.model.size`; model.pred_width / model.pred_depth override the decoder's width / depth."""
    size = cfg.model.size
    if size not in DECODER_DEFAULTS:
        raise ValueError(f"unknown ViT size {size!r}; choose one of {sorted(DECODER_DEFAULTS)}")
    d = DECODER_DEFAULTS[size]
    pe = encoder.patch_embed
    decoder = VideoMAEDecoder(embed_dim=encoder.embed_dim, dim=cfg.model.pred_width or d["dim"],
                              depth=cfg.model.pred_depth or d["depth"],
                              num_heads=cfg.model.pred_num_heads or d["num_heads"], grid=encoder.grid,
                              out_dim=pe.in_chans * pe.tubelet_size * pe.patch_size ** 2,
                              pos_embed=cfg.model.pos_embed)
    return VideoMAE(encoder, decoder)
