"""Write weights: this project's safetensors (the model config in the metadata), the reference layout, a Hugging Face
VJEPA2Model directory. Each write goes to a temporary name first, so an interrupted export leaves no half file."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch

from vjepa_fast.weights import hf, hf_videomae
from vjepa_fast.weights.arch import CheckpointFormatError, ModelArch
from vjepa_fast.weights.formats import SAFETENSORS_FORMAT
from vjepa_fast.weights.reference import write_reference


def _plain(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, unshared tensors (safetensors refuses views of one storage)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def write_safetensors(parts: dict[str, dict[str, torch.Tensor]], arch: ModelArch, path: str | Path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    flat = {f"{part}.{k}": v for part, state in parts.items() for k, v in _plain(state).items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(flat, str(tmp), metadata={"format": SAFETENSORS_FORMAT, "model_config": json.dumps(arch.to_dict())})
    os.replace(tmp, path)
    return path


def write_hf(encoder: dict[str, torch.Tensor], predictor: Optional[dict[str, torch.Tensor]], arch: ModelArch,
             out_dir: str | Path) -> Path:
    """A directory transformers loads: config.json + model.safetensors of a VJEPA2Model (V-JEPA models with rotary
    positions) or a VideoMAEModel (the VideoMAE baseline's encoder)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    videomae = arch.method == "videomae"
    # refuses an architecture the target class cannot hold before anything is written
    config = hf_videomae.config_from_arch(arch) if videomae else hf.config_from_arch(arch)
    state = hf_videomae.to_theirs(encoder) if videomae else hf.to_theirs(encoder, predictor)
    ours = {"config.json", "model.safetensors"}
    if out.exists() and (not out.is_dir() or set(os.listdir(out)) - ours):
        raise CheckpointFormatError(f"{out}: exists and is not an exported model directory; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "model.safetensors.tmp"
    save_file(_plain(state), str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / "model.safetensors")
    (out / "config.json.tmp").write_text(json.dumps(config, indent=2) + "\n")
    os.replace(out / "config.json.tmp", out / "config.json")
    return out


__all__ = ["write_safetensors", "write_reference", "write_hf"]
