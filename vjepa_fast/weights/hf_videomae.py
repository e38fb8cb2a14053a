"""Hugging Face VideoMAE layout <-> our VideoMAE baseline (encoder, decoder).

`VideoMAEForPreTraining`: `videomae.embeddings.patch_embeddings.projection`, `videomae.encoder.layer.N.{
layernorm_before, attention.attention.{query, key, value}, attention.output.dense, layernorm_after,
intermediate.dense, output.dense}`, `videomae.layernorm` (present with use_mean_pooling=false, as pretraining
checkpoints have it), `encoder_to_decoder`, `mask_token`, `decoder.decoder_layers.N.*`, `decoder.norm`,
`decoder.head`. `VideoMAEModel` is the same encoder without the `videomae.` prefix. Their key projection has no
bias (q and v do): a key bias adds the same q.b to every score of a query, which the softmax cancels, so importing
sets ours to zero and exporting drops it without changing any output. Their position table is VideoMAE's 1D
sinusoid table, ours `model.pos_embed=sincos_1d`.
"""
from __future__ import annotations

import logging
import re
from typing import Any

import torch

from vjepa_fast.models.vit import LN_EPS
from vjepa_fast.models.arch import CheckpointFormatError, ModelArch
from vjepa_fast.weights.hf import rename_keys

log = logging.getLogger("vjepa_fast.weights")

MODEL_TYPE = "videomae"
_QKV = ("query", "key", "value")
# the names VideoMAE files use on disk for the query / value biases (transformers renames them when loading)
_BIAS_ON_DISK = {"q_bias": "query.bias", "v_bias": "value.bias"}
_BLOCK = (("norm1", "layernorm_before"), ("attn.proj", "attention.output.dense"), ("norm2", "layernorm_after"),
          ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense"))
_ENCODER = (("patch_embed.proj", "embeddings.patch_embeddings.projection"), ("norm", "layernorm"))
_DECODER = (("norm", "norm"), ("head", "head"))


def _blocks_to_ours(theirs: dict[str, torch.Tensor], blocks_from: str, outside, what: str) -> dict:
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    rest = {}
    for k, v in theirs.items():
        m = re.match(re.escape(blocks_from) + r"\.(\d+)\.attention\.attention\.(query\.weight|key\.weight|"
                     r"value\.weight|query\.bias|key\.bias|value\.bias|q_bias|v_bias)$", k)
        if m:
            qkv.setdefault(m.group(1), {})[_BIAS_ON_DISK.get(m.group(2), m.group(2))] = v
        else:
            rest[k] = v
    out = rename_keys(rest, blocks_from, "blocks", {t: o for o, t in _BLOCK}, {t: o for o, t in outside}, what)
    for i, parts in qkv.items():
        if any(f"{n}.weight" not in parts for n in _QKV):
            raise CheckpointFormatError(f"{what}: layer {i} lacks a query / key / value weight")
        w = torch.cat([parts[f"{n}.weight"] for n in _QKV])
        zeros = torch.zeros(w.shape[1], dtype=w.dtype)
        out[f"blocks.{i}.attn.qkv.weight"] = w
        out[f"blocks.{i}.attn.qkv.bias"] = torch.cat([parts.get(f"{n}.bias", zeros) for n in _QKV])
    return out


def _blocks_to_theirs(ours: dict[str, torch.Tensor], blocks_to: str, outside, what: str) -> dict:
    split, rest = {}, {}
    for k, v in ours.items():
        m = re.match(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", k)
        if m:
            for n, chunk in zip(_QKV, v.chunk(3, dim=0)):
                name = f"{n}.{m.group(2)}"
                if name == "key.bias":  # no key bias: cancelled by the softmax
                    continue
                name = {v: k for k, v in _BIAS_ON_DISK.items()}.get(name, name)
                split[f"{blocks_to}.{m.group(1)}.attention.attention.{name}"] = chunk.contiguous()
        else:
            rest[k] = v
    out = rename_keys(rest, "blocks", blocks_to, dict(_BLOCK), dict(outside), what)
    out.update(split)
    return out


def to_ours(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """A VideoMAEForPreTraining (or VideoMAEModel) state dict -> {"encoder": ..., "decoder": ...} in our names."""
    what = "Hugging Face VideoMAE weights"
    if not any(k.startswith("videomae.") for k in state):
        state = {"videomae." + k: v for k, v in state.items()}  # a VideoMAEModel
    enc = {k[len("videomae."):]: v for k, v in state.items() if k.startswith("videomae.")}
    enc = {k[len("encoder."):] if k.startswith("encoder.layer.") else k: v for k, v in enc.items()}
    parts = {"encoder": _blocks_to_ours(enc, "layer", _ENCODER, what)}
    if "norm.weight" not in parts["encoder"]:
        raise CheckpointFormatError(f"{what}: no videomae.layernorm (a model built with use_mean_pooling=true has "
                                    f"no final encoder norm, which ours always has)")
    if "encoder_to_decoder.weight" in state:
        dec = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
        d = _blocks_to_ours(dec, "decoder_layers", _DECODER, what)
        d["encoder_to_decoder.weight"] = state["encoder_to_decoder.weight"]
        d["mask_token"] = state["mask_token"].reshape(1, -1)
        parts["decoder"] = d
    return parts


def to_theirs(encoder: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our encoder state dict -> a VideoMAEModel state dict."""
    ours = {k: v for k, v in encoder.items() if k != "pos_embed"}
    out = _blocks_to_theirs(ours, "layer", _ENCODER, "export to Hugging Face VideoMAE")
    return {("encoder." + k if k.startswith("layer.") else k): v for k, v in out.items()}


def arch_from_config(c: dict[str, Any], where: str) -> ModelArch:
    if c.get("hidden_act", "gelu") != "gelu":
        raise CheckpointFormatError(f"{where}: config.json has hidden_act={c['hidden_act']!r}; gelu only")
    if c.get("layer_norm_eps", 1e-12) != LN_EPS:
        log.info("%s: LayerNorm eps %g; this model uses %g (outputs differ by about that, relatively)", where,
                 c.get("layer_norm_eps", 1e-12), LN_EPS)
    hidden, dec = c.get("hidden_size", 768), c.get("decoder_hidden_size", 384)
    return ModelArch(method="videomae", embed_dim=hidden, depth=c.get("num_hidden_layers", 12),
                     num_heads=c.get("num_attention_heads", 12),
                     mlp_ratio=c.get("intermediate_size", 3072) / hidden, patch_size=c.get("patch_size", 16),
                     tubelet_size=c.get("tubelet_size", 2), in_chans=c.get("num_channels", 3),
                     num_frames=c.get("num_frames", 16), crop_size=c.get("image_size", 224), pos_embed="sincos_1d",
                     pred_dim=dec, pred_depth=c.get("decoder_num_hidden_layers", 4),
                     pred_num_heads=c.get("decoder_num_attention_heads", 6), pred_mask_tokens=1,
                     pred_mlp_ratio=c.get("decoder_intermediate_size", 1536) / dec)


def config_from_arch(arch: ModelArch) -> dict[str, Any]:
    """The config.json of an exported VideoMAEModel directory (the encoder)."""
    if arch.pos_embed != "sincos_1d":
        raise CheckpointFormatError(f"the Hugging Face VideoMAEModel uses VideoMAE's 1D sinusoid table; this model "
                                    f"uses {arch.pos_embed!r} positions (train with model.pos_embed=sincos_1d to "
                                    f"export it as hf)")
    return {"model_type": MODEL_TYPE, "architectures": ["VideoMAEModel"], "hidden_size": arch.embed_dim,
            "num_hidden_layers": arch.depth, "num_attention_heads": arch.num_heads,
            "intermediate_size": round(arch.embed_dim * arch.mlp_ratio), "patch_size": arch.patch_size,
            "tubelet_size": arch.tubelet_size, "num_channels": arch.in_chans, "num_frames": arch.num_frames,
            "image_size": arch.crop_size, "qv_bias": True, "use_mean_pooling": False, "layer_norm_eps": LN_EPS,
            "hidden_act": "gelu", "torch_dtype": "float32"}
