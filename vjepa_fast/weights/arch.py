"""The resolved architecture of a model (`ModelArch`): from a Config, from a weights file, into modules.

A training checkpoint stores `model_config(cfg)` (a plain dict); an importer reads the same dict back from the file
(or detects it from tensor shapes), so an encoder can be rebuilt without the run's YAML file.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn


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
    from vjepa_fast.models.predictor import PREDICTOR_DEFAULTS
    from vjepa_fast.models.videomae import DECODER_DEFAULTS
    from vjepa_fast.models.vit import VIT_SIZES

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
    from vjepa_fast.models.vit import VisionTransformer

    return VisionTransformer(img_size=arch.crop_size, num_frames=arch.num_frames, patch_size=arch.patch_size,
                             tubelet_size=arch.tubelet_size, in_chans=arch.in_chans, pos_embed=arch.pos_embed,
                             embed_dim=arch.embed_dim, depth=arch.depth, num_heads=arch.num_heads,
                             mlp_ratio=arch.mlp_ratio, init=arch.init)


def build_predictor_from(arch: ModelArch) -> nn.Module:
    from vjepa_fast.models.predictor import Predictor

    if arch.pred_dim is None:
        raise CheckpointFormatError("the model config has no predictor")
    return Predictor(arch.embed_dim, pred_dim=arch.pred_dim, depth=arch.pred_depth, num_heads=arch.pred_num_heads,
                     grid=arch.grid, num_mask_tokens=arch.pred_mask_tokens, mlp_ratio=arch.pred_mlp_ratio,
                     pos_embed=arch.pos_embed, init=arch.init)


def build_decoder_from(arch: ModelArch) -> nn.Module:
    """The VideoMAE baseline's decoder (pred_* fields: its width, depth, heads)."""
    from vjepa_fast.models.videomae import VideoMAEDecoder

    if arch.pred_dim is None:
        raise CheckpointFormatError("the model config has no decoder")
    return VideoMAEDecoder(arch.embed_dim, arch.pred_dim, arch.pred_depth, arch.pred_num_heads, arch.grid,
                           out_dim=arch.in_chans * arch.tubelet_size * arch.patch_size ** 2,
                           mlp_ratio=arch.pred_mlp_ratio, pos_embed=arch.pos_embed)


# ---- detection from tensor shapes --------------------------------------------------------------------------------
# Head counts a state dict cannot show. (width, depth, position kind) of the published encoders -> heads; the
# V-JEPA giant uses 16 heads, the V-JEPA 2 giant 22 (head dim 64). V-JEPA 2 predictors all have 12 heads.
PUBLISHED_HEADS = {(1024, 24): 16, (1280, 32): 16, (1408, 40, "sincos"): 16, (1408, 40, "rope"): 22}
VJEPA2_PREDICTOR_HEADS = 12


def _count(state: dict, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pat.match(k))}
    return max(found) + 1 if found else 0


def detect_arch(encoder: dict[str, torch.Tensor], predictor: Optional[dict[str, torch.Tensor]], where: str,
                overrides: Optional[dict[str, Any]] = None) -> ModelArch:
    """The architecture of our-named encoder (and predictor) state dicts; `overrides` (ModelArch field names) win.

    Heads do not show in any tensor shape: they come from `overrides`, else from the published models' table, else
    the error names the config key to set."""
    from vjepa_fast.models.vit import VIT_SIZES

    over = dict(overrides or {})
    w = encoder.get("patch_embed.proj.weight")
    if w is None or w.dim() != 5:
        raise CheckpointFormatError(f"{where}: no patch_embed.proj.weight [D, C, t, p, p] in the encoder weights "
                                    f"(keys: {sorted(encoder)[:6]})")
    D, C, t, p, _ = w.shape
    depth = _count(encoder, "blocks.")
    if depth == 0 or "blocks.0.mlp.fc1.weight" not in encoder:
        raise CheckpointFormatError(f"{where}: no encoder blocks (blocks.N.*) in the weights")
    kind = over.pop("pos_embed", None) or _table_kind(encoder.get("pos_embed"))
    arch = ModelArch(embed_dim=int(D), depth=depth, in_chans=int(C), tubelet_size=int(t), patch_size=int(p),
                     mlp_ratio=encoder["blocks.0.mlp.fc1.weight"].shape[0] / D, pos_embed=kind)
    if kind == "rope":  # V-JEPA 2's published clip size
        arch.num_frames, arch.crop_size = 64, 256
    heads = over.pop("num_heads", None) or PUBLISHED_HEADS.get((arch.embed_dim, depth, kind)) \
        or PUBLISHED_HEADS.get((arch.embed_dim, depth))
    if heads is None:
        heads = next((s["num_heads"] for s in VIT_SIZES.values()
                      if (s["embed_dim"], s["depth"]) == (arch.embed_dim, depth)), None)
    if heads is None:
        raise CheckpointFormatError(f"{where}: a {arch.embed_dim}-wide, {depth}-block encoder is not a known size "
                                    f"and the file does not say its number of heads: set model.num_heads")
    arch.num_heads = heads
    if predictor:
        pw = predictor.get("predictor_embed.weight")
        if pw is None:
            raise CheckpointFormatError(f"{where}: no predictor_embed.weight in the predictor weights")
        arch.pred_dim, arch.pred_depth = int(pw.shape[0]), _count(predictor, "predictor_blocks.")
        arch.pred_mask_tokens = max(1, _count(predictor, "mask_tokens."))
        if "predictor_blocks.0.mlp.fc1.weight" in predictor:
            arch.pred_mlp_ratio = predictor["predictor_blocks.0.mlp.fc1.weight"].shape[0] / arch.pred_dim
        pred_heads = over.pop("pred_num_heads", None)
        if pred_heads is None:
            pred_heads = VJEPA2_PREDICTOR_HEADS if kind == "rope" else _default_pred_heads(arch)
        if pred_heads is None:
            raise CheckpointFormatError(f"{where}: the file does not say the predictor's number of heads: set "
                                        f"model.pred_num_heads")
        arch.pred_num_heads = pred_heads
    else:
        over.pop("pred_num_heads", None)
    for k, v in over.items():
        if v is not None:
            setattr(arch, k, v)
    return arch


def _table_kind(table: Optional[torch.Tensor]) -> str:
    """rope without a table; the 1D table (VideoMAE) has cos(0) = 1 in channel 1 of token 0, the 3D one sin(0) = 0."""
    if table is None:
        return "rope"
    return "sincos_1d" if table.reshape(-1, table.shape[-1])[0, 1].item() > 0.5 else "sincos"


def _default_pred_heads(arch: ModelArch) -> Optional[int]:
    """V-JEPA's rule (PREDICTOR_DEFAULTS): the encoder's heads when they divide the predictor width."""
    if arch.pred_dim % arch.num_heads == 0:
        return arch.num_heads
    return None
