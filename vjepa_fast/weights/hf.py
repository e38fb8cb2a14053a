"""Hugging Face `VJEPA2Model` layout <-> ours: key names, the split q / k / v projections, the config.json fields.

Their encoder is `encoder.embeddings.patch_embeddings.proj`, `encoder.layer.N.{norm1, attention.{query, key, value,
proj}, norm2, mlp.fc1, mlp.fc2}`, `encoder.layernorm`; the predictor `predictor.embeddings.{predictor_embeddings,
mask_tokens [M, 1, 1, D]}`, `predictor.layer.N.*`, `predictor.layernorm`, `predictor.proj`. Ours fuses q, k, v into
one `attn.qkv` ([q; k; v] stacked on the output dim, the original code's layout) and keeps mask tokens as a list.
"""
from __future__ import annotations

import re
from typing import Any, Optional

import torch

from vjepa_fast.models.vit import LN_EPS
from vjepa_fast.models.arch import CheckpointFormatError, ModelArch

MODEL_TYPE = "vjepa2"
_QKV = ("query", "key", "value")

# (our name, their name) per block and outside the blocks, without the part prefix.
_BLOCK = (("norm1", "norm1"), ("attn.proj", "attention.proj"), ("norm2", "norm2"), ("mlp.fc1", "mlp.fc1"),
          ("mlp.fc2", "mlp.fc2"))
_ENCODER = (("patch_embed.proj", "embeddings.patch_embeddings.proj"), ("norm", "layernorm"))
_PREDICTOR = (("predictor_embed", "embeddings.predictor_embeddings"), ("predictor_norm", "layernorm"),
              ("predictor_proj", "proj"))


def rename_keys(state: dict[str, torch.Tensor], blocks_from: str, blocks_to: str, block_names: dict[str, str],
            outside: dict[str, str], what: str) -> dict[str, torch.Tensor]:
    """Rename `<blocks_from>.N.<name>.<weight|bias>` and `<name>.<weight|bias>` keys by the two tables."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        name, kind = k.rsplit(".", 1) if "." in k else (k, "")
        m = re.match(re.escape(blocks_from) + r"\.(\d+)\.(.+)$", name)
        if m and m.group(2) in block_names:
            out[f"{blocks_to}.{m.group(1)}.{block_names[m.group(2)]}.{kind}"] = v
        elif not m and name in outside:
            out[f"{outside[name]}.{kind}"] = v
        else:
            raise CheckpointFormatError(f"{what}: unexpected key {k!r}")
    return out


def _part_to_ours(theirs: dict[str, torch.Tensor], blocks: str, outside) -> dict[str, torch.Tensor]:
    fused: dict[str, list] = {}
    rest = {}
    for k, v in theirs.items():
        m = re.match(r"layer\.(\d+)\.attention\.(query|key|value)\.(weight|bias)$", k)
        if m:
            fused.setdefault(f"{blocks}.{m.group(1)}.attn.qkv.{m.group(3)}", [None] * 3)[_QKV.index(m.group(2))] = v
        else:
            rest[k] = v
    out = rename_keys(rest, "layer", blocks, {t: o for o, t in _BLOCK}, {t: o for o, t in outside},
                  "Hugging Face VJEPA2 weights")
    for k, parts in fused.items():
        if any(p is None for p in parts):
            raise CheckpointFormatError(f"Hugging Face VJEPA2 weights: {k} lacks one of query / key / value")
        out[k] = torch.cat(parts, dim=0)  # [q; k; v] on the output dim
    return out


def _part_to_theirs(ours: dict[str, torch.Tensor], blocks: str, outside) -> dict[str, torch.Tensor]:
    split, rest = {}, {}
    for k, v in ours.items():
        m = re.match(re.escape(blocks) + r"\.(\d+)\.attn\.qkv\.(weight|bias)$", k)
        if m:
            for n, chunk in zip(_QKV, v.chunk(3, dim=0)):
                split[f"layer.{m.group(1)}.attention.{n}.{m.group(2)}"] = chunk.contiguous()
        else:
            rest[k] = v
    out = rename_keys(rest, blocks, "layer", dict(_BLOCK), dict(outside), "export to Hugging Face VJEPA2")
    out.update(split)
    return out


def to_ours(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """A VJEPA2Model state dict -> {"encoder": ..., "predictor": ...} in our names."""
    enc = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    pred = {k[len("predictor."):]: v for k, v in state.items() if k.startswith("predictor.")}
    other = sorted(k for k in state if not k.startswith(("encoder.", "predictor.")))
    if other:
        raise CheckpointFormatError(f"Hugging Face VJEPA2 weights: unexpected keys {other[:5]} (a VJEPA2Model has "
                                    f"encoder.* and predictor.* only)")
    if not enc:
        raise CheckpointFormatError("Hugging Face VJEPA2 weights: no encoder.* keys")
    parts = {"encoder": _part_to_ours(enc, "blocks", _ENCODER)}
    if pred:
        tokens = pred.pop("embeddings.mask_tokens", None)
        p = _part_to_ours(pred, "predictor_blocks", _PREDICTOR)
        if tokens is not None:
            for i in range(tokens.shape[0]):
                p[f"mask_tokens.{i}"] = tokens[i]  # [1, 1, D], as ours
        parts["predictor"] = p
    return parts


def to_theirs(encoder: dict[str, torch.Tensor], predictor: Optional[dict[str, torch.Tensor]]) -> dict:
    """Our encoder (and predictor) state dicts -> one VJEPA2Model state dict."""
    out = {"encoder." + k: v for k, v in _part_to_theirs(
        {k: v for k, v in encoder.items() if k != "pos_embed"}, "blocks", _ENCODER).items()}
    if predictor is not None:
        tokens = [predictor[f"mask_tokens.{i}"] for i in range(len(predictor))
                  if f"mask_tokens.{i}" in predictor]
        rest = {k: v for k, v in predictor.items() if not k.startswith("mask_tokens.") and k != "predictor_pos_embed"}
        out.update({"predictor." + k: v for k, v in _part_to_theirs(rest, "predictor_blocks", _PREDICTOR).items()})
        if tokens:
            out["predictor.embeddings.mask_tokens"] = torch.stack([t.reshape(1, 1, -1) for t in tokens])
    return out


def arch_from_config(c: dict[str, Any], where: str) -> ModelArch:
    """A VJEPA2Config (config.json) -> ModelArch; the options our model does not have are refused by name."""
    def get(key, default):
        return c.get(key, default)

    for key, want in (("qkv_bias", True), ("hidden_act", "gelu"), ("layer_norm_eps", LN_EPS)):
        if get(key, want) != want:
            raise CheckpointFormatError(f"{where}: config.json has {key}={c[key]!r}; this model supports {want!r} "
                                        f"only")
    patch = get("patch_size", 16)
    if isinstance(patch, (list, tuple)):
        if len(set(patch)) != 1:
            raise CheckpointFormatError(f"{where}: non-square patch_size {patch} is not supported")
        patch = patch[0]
    return ModelArch(method="vjepa", embed_dim=get("hidden_size", 1024), depth=get("num_hidden_layers", 24),
                     num_heads=get("num_attention_heads", 16), mlp_ratio=float(get("mlp_ratio", 4.0)),
                     patch_size=int(patch), tubelet_size=get("tubelet_size", 2), in_chans=get("in_chans", 3),
                     num_frames=get("frames_per_clip", 64), crop_size=get("crop_size", 256), pos_embed="rope",
                     pred_dim=get("pred_hidden_size", 384), pred_depth=get("pred_num_hidden_layers", 12),
                     pred_num_heads=get("pred_num_attention_heads", 12),
                     pred_mask_tokens=get("pred_num_mask_tokens", 10), pred_mlp_ratio=float(get("pred_mlp_ratio", 4.0)))


def config_from_arch(arch: ModelArch) -> dict[str, Any]:
    """The config.json of an exported VJEPA2Model directory."""
    if arch.pos_embed != "rope":
        raise CheckpointFormatError("the Hugging Face VJEPA2Model has rotary positions only and this model has a "
                                    "sin-cos position table (export it with --format safetensors or reference, or "
                                    "export a model trained with model.pos_embed=rope)")
    return {"model_type": MODEL_TYPE, "architectures": ["VJEPA2Model"], "hidden_size": arch.embed_dim,
            "num_hidden_layers": arch.depth, "num_attention_heads": arch.num_heads, "mlp_ratio": arch.mlp_ratio,
            "patch_size": arch.patch_size, "tubelet_size": arch.tubelet_size, "in_chans": arch.in_chans,
            "frames_per_clip": arch.num_frames, "crop_size": arch.crop_size, "layer_norm_eps": LN_EPS,
            "qkv_bias": True, "hidden_act": "gelu", "pred_hidden_size": arch.pred_dim or 384,
            "pred_num_hidden_layers": arch.pred_depth or 12, "pred_num_attention_heads": arch.pred_num_heads or 12,
            "pred_num_mask_tokens": arch.pred_mask_tokens, "pred_mlp_ratio": arch.pred_mlp_ratio,
            "torch_dtype": "float32"}
