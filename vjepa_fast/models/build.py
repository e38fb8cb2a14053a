"""Build the model a config describes (V-JEPA or the VideoMAE baseline) and the masker that feeds it."""
from __future__ import annotations

import torch.nn as nn

from vjepa_fast.config import Config
from vjepa_fast.masks import BlockSpec, MultiBlockMasker, TubeMasker


def build_encoder(cfg: Config) -> nn.Module:
    from vjepa_fast.models.vit import VisionTransformer

    m, d = cfg.model, cfg.data
    heads = {} if m.num_heads is None else {"num_heads": m.num_heads}
    return VisionTransformer(size=m.size, img_size=d.crop_size, num_frames=d.num_frames, patch_size=m.patch_size,
                             tubelet_size=m.tubelet_size, init=m.init, **heads)


def build_model(cfg: Config) -> nn.Module:
    encoder = build_encoder(cfg)
    if cfg.method == "videomae":
        from vjepa_fast.models.videomae import build_videomae

        return build_videomae(cfg, encoder)
    from vjepa_fast.models.jepa import VJEPA
    from vjepa_fast.models.predictor import PREDICTOR_DEFAULTS, Predictor

    defaults = PREDICTOR_DEFAULTS[cfg.model.size]
    predictor = Predictor(
        embed_dim=encoder.embed_dim,
        pred_dim=cfg.model.pred_width or defaults["pred_dim"],
        depth=cfg.model.pred_depth or defaults["depth"],
        num_heads=cfg.model.pred_heads or encoder.num_heads,
        grid=encoder.grid,
        num_mask_tokens=2,
        init=cfg.model.init,
    )
    return VJEPA(encoder, predictor)


def build_masker(cfg: Config, grid: tuple[int, int, int]):
    k = cfg.masks
    if cfg.method == "videomae":
        return TubeMasker(grid, mask_ratio=k.tube_ratio, seed=cfg.train.seed)
    aspect = (k.aspect_min, k.aspect_max)
    specs = (BlockSpec(k.short_blocks, k.short_scale, aspect), BlockSpec(k.long_blocks, k.long_scale, aspect))
    return MultiBlockMasker(grid, specs=specs, seed=cfg.train.seed)
