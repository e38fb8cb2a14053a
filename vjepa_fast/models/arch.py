"""The resolved architecture of a model (`ModelArch`): the rule deriving it from a Config, and the modules it builds.

A training checkpoint stores `model_config(cfg)` (a plain dict); an importer reads the same dict back from a file
(or detects it from tensor shapes, weights/detect.py), so an encoder can be rebuilt without the run's YAML file.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import torch.nn as nn

from vjepa_fast.models.predictor import PREDICTOR_DEFAULTS, Predictor
from vjepa_fast.models.videomae import DECODER_DEFAULTS, VideoMAEDecoder
from vjepa_fast.models.vit import VIT_SIZES, VisionTransformer


class CheckpointFormatError(ValueError):
    """A weights file that cannot be read or does not fit the model; the message is one line."""


@dataclass
class ModelArch:
    method: str = "vjepa"  # vjepa / videomae
    embed_dim: int = 96
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    patch_size: int = 16
    tubelet_size: int = 2
    in_chans: int = 3
    num_frames: int = 16  # the clip the model was built for (sin-cos table size; rotary models take any)
    crop_size: int = 224
    pos_embed: str = "sincos"  # sincos / rope
    pred_dim: Optional[int] = None  # predictor (V-JEPA) or decoder (VideoMAE) width; None: no predictor
    pred_depth: Optional[int] = None
    pred_num_heads: Optional[int] = None
    pred_mask_tokens: int = 2
    pred_mlp_ratio: float = 4.0
    init: str = "reference"  # how fresh weights are drawn (models/vit.py INIT_SCHEMES); no effect on loaded ones

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any], where: str = "model config") -> "ModelArch":
        names = {f.name for f in dataclasses.fields(ModelArch)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise CheckpointFormatError(f"{where}: unknown model config keys {unknown}")
        return ModelArch(**d)

    @property
    def grid(self) -> tuple[int, int, int]:
        return (self.num_frames // self.tubelet_size, self.crop_size // self.patch_size,
                self.crop_size // self.patch_size)


def model_config(cfg) -> dict[str, Any]:
    """The resolved model config of a training Config, as a plain dict (what training checkpoints store)."""
    return arch_from_config(cfg).to_dict()


def arch_from_config(cfg) -> ModelArch:
    m, d = cfg.model, cfg.data
    size = VIT_SIZES[m.size]
    arch = ModelArch(method=cfg.method, embed_dim=size["embed_dim"], depth=size["depth"],
                     num_heads=m.num_heads or size["num_heads"], mlp_ratio=float(size["mlp_ratio"]),
                     patch_size=m.patch_size, tubelet_size=m.tubelet_size, num_frames=d.num_frames,
                     crop_size=d.crop_size, pos_embed=m.pos_embed, pred_mask_tokens=m.pred_mask_tokens,
                     init=m.init)
    if cfg.method == "videomae":
        dd = DECODER_DEFAULTS[m.size]
        arch.pred_dim, arch.pred_depth = m.pred_width or dd["dim"], m.pred_depth or dd["depth"]
        arch.pred_num_heads, arch.pred_mask_tokens = m.pred_num_heads or dd["num_heads"], 1
    else:
        pd = PREDICTOR_DEFAULTS[m.size]
        arch.pred_dim, arch.pred_depth = m.pred_width or pd["pred_dim"], m.pred_depth or pd["depth"]
        arch.pred_num_heads = m.pred_num_heads or arch.num_heads  # the encoder's heads, as the original
    return arch


def build_encoder_from(arch: ModelArch) -> nn.Module:
    return VisionTransformer(img_size=arch.crop_size, num_frames=arch.num_frames, patch_size=arch.patch_size,
                             tubelet_size=arch.tubelet_size, in_chans=arch.in_chans, pos_embed=arch.pos_embed,
                             embed_dim=arch.embed_dim, depth=arch.depth, num_heads=arch.num_heads,
                             mlp_ratio=arch.mlp_ratio, init=arch.init)


def build_predictor_from(arch: ModelArch) -> nn.Module:
    if arch.pred_dim is None:
        raise CheckpointFormatError("the model config has no predictor")
    return Predictor(arch.embed_dim, pred_dim=arch.pred_dim, depth=arch.pred_depth, num_heads=arch.pred_num_heads,
                     grid=arch.grid, num_mask_tokens=arch.pred_mask_tokens, mlp_ratio=arch.pred_mlp_ratio,
                     pos_embed=arch.pos_embed, init=arch.init)


def build_decoder_from(arch: ModelArch) -> nn.Module:
    """The VideoMAE baseline's decoder (pred_* fields: its width, depth, heads)."""
    if arch.pred_dim is None:
        raise CheckpointFormatError("the model config has no decoder")
    return VideoMAEDecoder(arch.embed_dim, arch.pred_dim, arch.pred_depth, arch.pred_num_heads, arch.grid,
                           out_dim=arch.in_chans * arch.tubelet_size * arch.patch_size ** 2,
                           mlp_ratio=arch.pred_mlp_ratio, pos_embed=arch.pos_embed)
