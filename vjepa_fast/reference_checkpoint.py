"""Import and export of the original code's checkpoint format (docs/recipe.md, "Checkpoints of the original code").

The reference saves a dict with `encoder`, `predictor`, `target_encoder` (and optimizer state) whose parameter names
carry wrapper prefixes (`module.backbone.`). Importing strips any such prefix, so no prefix surgery is needed by
hand; files are always loaded with `weights_only=True`, so no code from a downloaded file runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

PREFIXES = ("module.backbone.", "module.", "backbone.", "_orig_mod.")
PARTS = ("encoder", "predictor", "target_encoder")
EXPORT_PREFIX = "module.backbone."


class CheckpointFormatError(ValueError):
    pass


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


def read_reference(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """{part: state_dict with clean names} for each of encoder / predictor / target_encoder present in the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointFormatError(f"{path}: cannot be loaded as a weights-only checkpoint "
                                    f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(payload, dict):
        raise CheckpointFormatError(f"{path}: expected a dict checkpoint, got {type(payload).__name__}")
    parts = {k: strip_prefixes(payload[k]) for k in PARTS if isinstance(payload.get(k), dict)}
    if not parts:
        raise CheckpointFormatError(f"{path}: none of the keys {PARTS} found (keys: {sorted(payload)[:10]})")
    return parts


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


def load_reference_into(model: nn.Module, path: str | Path) -> list[str]:
    """Load every part the file has into the V-JEPA model's matching sub-module; returns the parts loaded."""
    parts = read_reference(path)
    loaded = []
    for name, state in parts.items():
        module = getattr(model, name, None)
        if module is None:
            continue
        load_module(module, state, f"{path}[{name}]")
        loaded.append(name)
    return loaded


def export_reference(model: nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write encoder / predictor / target_encoder in the reference layout (prefixed names, CPU tensors)."""
    payload: dict[str, Any] = dict(extra or {})
    for name in PARTS:
        module = getattr(model, name, None)
        if module is not None:
            payload[name] = {EXPORT_PREFIX + k: v.detach().cpu() for k, v in module.state_dict().items()}
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path
