"""The reference code's checkpoint layout (V-JEPA and V-JEPA 2 files): read, load into modules, write.

The reference saves a dict with `encoder`, `predictor`, `target_encoder` (and optimizer state) whose parameter names
carry wrapper prefixes (`module.backbone.`). Reading (formats.py) strips any such prefix, so no prefix surgery is
needed by hand; files are always loaded with `weights_only=True`, so no code from a downloaded file runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vjepa_fast.models.arch import CheckpointFormatError

PREFIXES = ("module.backbone.", "module.", "backbone.", "_orig_mod.")
PARTS = ("encoder", "predictor", "target_encoder")
EXPORT_PREFIX = "module.backbone."


def strip_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in state.items():
        changed = True
        while changed:
            changed = False
            for p in PREFIXES:
                if name.startswith(p):
                    name, changed = name[len(p):], True
        out[name] = value
    return out


def load_module(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Strict load with an error that lists what is missing, unexpected or mis-shaped."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise CheckpointFormatError(f"{what}: checkpoint does not match the model: missing {missing[:5]}, "
                                    f"unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}")
    module.load_state_dict(state, strict=True)


def write_reference(parts: dict[str, dict[str, torch.Tensor]], path: str | Path,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write {part: state dict} in the reference layout (prefixed names, CPU tensors), atomically."""
    payload: dict[str, Any] = dict(extra or {})
    for name, state in parts.items():
        payload[name] = {EXPORT_PREFIX + k: v.detach().cpu() for k, v in state.items()}
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def export_reference(model: nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """A training model's encoder / predictor / target_encoder in the reference layout."""
    return write_reference({name: part.state_dict() for name, part in model.parts().items() if name in PARTS},
                           path, extra)
