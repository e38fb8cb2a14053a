"""V-JEPA models: the video encoder, the predictor and their fixed position tables."""
from vjepa_fast.models.pos_embed import interpolate_pos, sincos_3d
from vjepa_fast.models.predictor import PREDICTOR_DEFAULTS, Predictor
from vjepa_fast.models.vit import VIT_SIZES, MLP, Attention, Block, PatchEmbed3D, VisionTransformer

__all__ = ["sincos_3d", "interpolate_pos", "VIT_SIZES", "PatchEmbed3D", "Attention", "MLP", "Block",
           "VisionTransformer", "PREDICTOR_DEFAULTS", "Predictor"]
