"""Build the model a config describes (V-JEPA or the VideoMAE baseline) and the masker that feeds it."""
from __future__ import annotations

import torch.nn as nn

from vjepa_fast.config.schema import Config
from vjepa_fast.masks import BlockSpec, MultiBlockMasker, TubeMasker
from vjepa_fast.models.arch import arch_from_config, build_encoder_from, build_predictor_from


def build_encoder(cfg: Config) -> nn.Module:
    return build_encoder_from(arch_from_config(cfg))


def build_model(cfg: Config) -> nn.Module:
    arch = arch_from_config(cfg)
    encoder = build_encoder_from(arch)
    if cfg.method == "videomae":
        from vjepa_fast.models.videomae import build_videomae

        return build_videomae(cfg, encoder)
    from vjepa_fast.models.jepa import VJEPA
    from vjepa_fast.models.sigreg import SIGReg

    lc = cfg.loss
    sigreg = SIGReg(lc.sigreg_directions, lc.sigreg_t_max, lc.sigreg_t_points, cfg.train.seed) if lc.sigreg else None
    return VJEPA(encoder, build_predictor_from(arch), sigreg, lc.sigreg)


def build_masker(cfg: Config, grid: tuple[int, int, int]):
    k = cfg.masks
    if cfg.method == "videomae":
        return TubeMasker(grid, mask_ratio=k.tube_ratio, seed=cfg.train.seed)
    return MultiBlockMasker(grid, specs=tuple(mask_specs(cfg).values()), seed=cfg.train.seed)


def mask_specs(cfg: Config) -> dict[str, BlockSpec]:
    """V-JEPA's multi-block mask configurations by range: short (many small blocks), long (a few large ones)."""
    k = cfg.masks
    aspect = (k.aspect_min, k.aspect_max)
    return {"short": BlockSpec(k.short_blocks, k.short_scale, aspect),
            "long": BlockSpec(k.long_blocks, k.long_scale, aspect)}
