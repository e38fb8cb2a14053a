"""Read any supported weights file or directory into one form: `Weights` (format name, parts in our key names, the
architecture when the file states it).

Formats, told apart by what the file holds (docs/weights.md):
- a run directory (its newest checkpoint; the architecture from the checkpoint or the run's config.yaml);
- a training checkpoint of this project (`model` with encoder.* / target_encoder.* / predictor.* / decoder.*);
- a reference file of V-JEPA or V-JEPA 2 (`encoder` / `target_encoder` / `predictor` dicts, wrapper prefixes);
  V-JEPA 2 files have no `pos_embed` (rotary positions), or one their predictor shows to be stray
  (arch.position_kind);
- a Hugging Face VJEPA2Model directory (config.json + model.safetensors or pytorch_model.bin), or that weights file;
- a safetensors file written by this project (the model config in its metadata);
- a bare encoder state dict.
Every torch.load is weights_only=True: no code from a downloaded file runs.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from vjepa_fast.weights import hf, hf_videomae
from vjepa_fast.models.arch import CheckpointFormatError, ModelArch
from vjepa_fast.weights.detect import position_kind
from vjepa_fast.weights.reference import PARTS, strip_prefixes

log = logging.getLogger("vjepa_fast.weights")

SAFETENSORS_FORMAT = "vjepa-fast"  # metadata["format"] of our safetensors files
MODEL_PARTS = ("encoder", "target_encoder", "predictor", "decoder")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class Weights:
    format: str  # what was found, in words (the one line the loaders print)
    source: Path  # the file the tensors came from
    parts: dict[str, dict[str, torch.Tensor]]  # encoder / target_encoder / predictor / decoder, our key names
    arch: Optional[ModelArch] = None  # when the file states it
    metadata: dict[str, Any] = field(default_factory=dict)


def torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        from vjepa_fast.weights.training_checkpoint import why_failed

        raise CheckpointFormatError(f"{path}: cannot be loaded as a weights-only checkpoint ({why_failed(e)})") \
            from None


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:
        raise CheckpointFormatError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None


def read_weights(path: str | Path) -> Weights:
    """Whatever `path` is (module docstring), as Weights; FileNotFoundError / CheckpointFormatError otherwise."""
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "config.json").is_file():
            return _read_hf_dir(p)
        from vjepa_fast.weights import training_checkpoint as ckpt

        if ckpt.is_checkpoint(p):  # one sharded training checkpoint (checkpoints/step_XXXXXXXX)
            return _read_training_checkpoint(p)
        return _read_run_dir(p)
    if not p.is_file():
        raise FileNotFoundError(f"weights not found: {p}")
    if p.name in HF_WEIGHT_FILES and (p.parent / "config.json").is_file():
        return _read_hf_dir(p.parent, p)
    if p.suffix == ".safetensors":
        state, meta = read_safetensors(p)
        if meta.get("format") != SAFETENSORS_FORMAT:
            raise CheckpointFormatError(f"{p}: a safetensors file without this project's metadata (format="
                                        f"{meta.get('format')!r}); a Hugging Face file needs its config.json beside "
                                        f"it")
        arch = ModelArch.from_dict(json.loads(meta["model_config"]), f"{p} metadata") if "model_config" in meta \
            else None
        return Weights("vjepa-fast safetensors", p, _split_parts(state, p), arch, meta)
    return _read_torch_file(p, torch_load(p))


def _split_parts(state: dict[str, torch.Tensor], where: Path) -> dict[str, dict[str, torch.Tensor]]:
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        head, _, rest = k.partition(".")
        if head in MODEL_PARTS and rest:
            parts.setdefault(head, {})[rest] = v
    if not parts:
        raise CheckpointFormatError(f"{where}: no encoder.* / target_encoder.* / predictor.* weights "
                                    f"(keys: {sorted(state)[:6]})")
    return parts


def _read_torch_file(p: Path, payload: Any, run_cfg: Optional[Path] = None) -> Weights:
    if not isinstance(payload, dict):
        raise CheckpointFormatError(f"{p}: expected a dict checkpoint, got {type(payload).__name__}")
    if isinstance(payload.get("model"), dict):  # our training checkpoint
        arch = None
        if isinstance(payload.get("model_config"), dict):
            arch = ModelArch.from_dict(payload["model_config"], f"{p} model_config")
        elif run_cfg is not None or (p.parent.name == "checkpoints" and (p.parent.parent / "config.yaml").is_file()):
            arch = _arch_of_run_config(run_cfg or p.parent.parent / "config.yaml")
        return Weights("vjepa-fast training checkpoint", p, _split_parts(payload["model"], p), arch)
    found = {k: strip_prefixes(payload[k]) for k in PARTS if isinstance(payload.get(k), dict) and payload[k]}
    if found:
        enc = found.get("encoder") or found.get("target_encoder")
        if enc is None:
            raise CheckpointFormatError(f"{p}: a reference file without encoder weights (parts: {sorted(found)})")
        rotary, why = position_kind(enc, found.get("predictor"))
        if rotary != "rope":
            return Weights("V-JEPA reference file (sin-cos positions)", p, found)
        stray = [t for t, part in (("pos_embed", enc), ("predictor_pos_embed", found.get("predictor") or {}))
                 if t in part]
        if stray:  # rotary models have no table: load_part and export leave these out
            log.warning("%s: read as V-JEPA 2, rotary positions (%s): its %s ignored, as V-JEPA 2's own loader does "
                        "(pass pos_embed=sincos if it is a V-JEPA file)", p, why, " and ".join(stray))
        return Weights("V-JEPA 2 reference file (rotary positions)", p, found)
    state = strip_prefixes(payload) if all(isinstance(v, torch.Tensor) for v in payload.values()) else {}
    if "patch_embed.proj.weight" in state:
        return Weights("bare encoder state dict", p, {"encoder": state})
    raise CheckpointFormatError(f"{p}: not a known weights layout: none of model / {' / '.join(PARTS)} and no "
                                f"patch_embed.proj.weight (keys: {sorted(payload)[:8]})")


def _arch_of_run_config(path: Path) -> ModelArch:
    from vjepa_fast.config import ConfigError, load_config
    from vjepa_fast.models.arch import arch_from_config

    try:
        return arch_from_config(load_config(str(path)))
    except ConfigError as e:
        raise CheckpointFormatError(f"{path}: {e}") from None


def _read_run_dir(p: Path) -> Weights:
    """The newest checkpoint of a run directory (or of its checkpoints/ folder): the one place here that knows how a
    run stores its checkpoints."""
    from vjepa_fast.weights import training_checkpoint as ckpt

    run = p.parent if p.name == "checkpoints" and not (p / "checkpoints").is_dir() else p
    found = ckpt.list_checkpoints(run)
    if not found:
        raise FileNotFoundError(f"no checkpoints in {ckpt.checkpoint_dir(run)} and no config.json in {p} (is it a "
                                f"run directory or a Hugging Face model directory?)")
    return _read_training_checkpoint(found[-1][1])


def _read_training_checkpoint(path: Path) -> Weights:
    """A checkpoint written by training (a sharded directory or a single file): its model state only."""
    from vjepa_fast.weights import training_checkpoint as ckpt

    try:
        payload = ckpt.load_payload(path, keys={"model"})
    except ckpt.CheckpointError as e:  # one line already: damaged, unreadable, or refused (nothing from it ran)
        raise CheckpointFormatError(str(e)) from None
    except Exception as e:
        raise CheckpointFormatError(f"{path}: not a readable training checkpoint ({ckpt.why_failed(e)})") from None
    run_cfg = path.parent.parent / "config.yaml"
    return _read_torch_file(path, payload, run_cfg if path.parent.name == "checkpoints" and run_cfg.is_file()
                            else None)


def _read_hf_dir(d: Path, weights_file: Optional[Path] = None) -> Weights:
    try:
        config = json.loads((d / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointFormatError(f"{d / 'config.json'}: not readable JSON ({e})") from None
    model_type = config.get("model_type")
    if model_type not in (hf.MODEL_TYPE, hf_videomae.MODEL_TYPE):
        raise CheckpointFormatError(f"{d}: a Hugging Face model of type {model_type!r}; supported: "
                                    f"{hf.MODEL_TYPE!r} (VJEPA2Model), {hf_videomae.MODEL_TYPE!r} (VideoMAE)")
    if weights_file is None:
        weights_file = next((d / n for n in HF_WEIGHT_FILES if (d / n).is_file()), None)
        if weights_file is None:
            raise CheckpointFormatError(f"{d}: config.json but none of {HF_WEIGHT_FILES} (sharded Hugging Face "
                                        f"checkpoints are not supported)")
    state = read_safetensors(weights_file)[0] if weights_file.suffix == ".safetensors" else torch_load(weights_file)
    if not isinstance(state, dict):
        raise CheckpointFormatError(f"{weights_file}: expected a state dict")
    where = str(d / "config.json")
    if model_type == hf_videomae.MODEL_TYPE:
        kind = "Hugging Face VideoMAEForPreTraining" if "encoder_to_decoder.weight" in state \
            else "Hugging Face VideoMAEModel"
        return Weights(kind, weights_file, hf_videomae.to_ours(state), hf_videomae.arch_from_config(config, where),
                       {"config": config})
    # VJEPA2ForVideoClassification nests the model under vjepa2.; its pooler and classifier are not ours to load
    state = {k[len("vjepa2."):] if k.startswith("vjepa2.") else k: v for k, v in state.items()
             if not k.startswith(("pooler.", "classifier."))}
    return Weights("Hugging Face VJEPA2Model", weights_file, hf.to_ours(state),
                   hf.arch_from_config(config, where), {"config": config})
