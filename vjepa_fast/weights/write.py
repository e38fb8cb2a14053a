"""Write weights: this project's safetensors (the model config in the metadata), the reference layout, a Hugging Face
VJEPA2Model directory. Each write goes to a temporary name first, so an interrupted export leaves no half file."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch

from vjepa_fast.weights import hf, hf_videomae
from vjepa_fast.models.arch import CheckpointFormatError, ModelArch
from vjepa_fast.weights.formats import SAFETENSORS_FORMAT
from vjepa_fast.weights.reference import write_reference


def _plain(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, unshared tensors (safetensors refuses views of one storage)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def _save_safetensors(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """save_file through a temporary name, then the mode any new file gets (0666 less the umask): safetensors
    creates its file 0600."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def write_safetensors(parts: dict[str, dict[str, torch.Tensor]], arch: ModelArch, path: str | Path) -> Path:
    path = Path(path)
    flat = {f"{part}.{k}": v for part, state in parts.items() for k, v in _plain(state).items()}
    _save_safetensors(flat, path, {"format": SAFETENSORS_FORMAT, "model_config": json.dumps(arch.to_dict())})
    return path


def write_hf(encoder: dict[str, torch.Tensor], predictor: Optional[dict[str, torch.Tensor]], arch: ModelArch,
             out_dir: str | Path) -> Path:
    """A directory transformers loads: config.json + model.safetensors of a VJEPA2Model (V-JEPA models with rotary
    positions) or a VideoMAEModel (the VideoMAE baseline's encoder)."""
    out = Path(out_dir)
    videomae = arch.method == "videomae"
    # refuses an architecture the target class cannot hold before anything is written
    config = hf_videomae.config_from_arch(arch) if videomae else hf.config_from_arch(arch)
    state = hf_videomae.to_theirs(encoder) if videomae else hf.to_theirs(encoder, predictor)
    ours = {"config.json", "model.safetensors"}
    if out.exists() and (not out.is_dir() or set(os.listdir(out)) - ours):
        raise CheckpointFormatError(f"{out}: exists and is not an exported model directory; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    _save_safetensors(_plain(state), out / "model.safetensors", {"format": "pt"})
    (out / "config.json.tmp").write_text(json.dumps(config, indent=2) + "\n")
    os.replace(out / "config.json.tmp", out / "config.json")
    return out


__all__ = ["write_safetensors", "write_reference", "write_hf"]
