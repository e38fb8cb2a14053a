"""Which weights the evaluation reads: a run dir, a training checkpoint or any weights file, and its encoder loaded."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch.nn as nn

from vjepa_fast.weights import training_checkpoint as ckpt
from vjepa_fast.weights import CheckpointFormatError, read_weights
from vjepa_fast.weights.load import load_part, pick_encoder, stated_kind

log = logging.getLogger("vjepa_fast.eval")


def resolve_checkpoint(path: str) -> tuple[Path, Optional[Path]]:
    """(checkpoint file, the run's config.yaml or None). A run dir gives its newest checkpoint."""
    p = Path(path).expanduser()
    if p.is_dir() and (p / "config.json").is_file():  # a Hugging Face model directory
        return p, None
    if p.is_dir() and not ckpt.is_checkpoint(p):  # a run dir (a sharded checkpoint is a dir too)
        found = ckpt.list_checkpoints(p)
        if not found and p.name == "checkpoints" and ckpt.list_checkpoints(p.parent):
            return resolve_checkpoint(str(p.parent))  # the run's checkpoints/ folder itself
        if not found:
            raise FileNotFoundError(f"checkpoint: no step_* checkpoints in {ckpt.checkpoint_dir(p)} (a run dir?)")
        run_cfg = p / "config.yaml"
        return found[-1][1], (run_cfg if run_cfg.is_file() else None)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    run_cfg = p.parent.parent / "config.yaml" if p.parent.name == "checkpoints" else None
    return p, (run_cfg if run_cfg is not None and run_cfg.is_file() else None)


def load_encoder_weights(encoder: nn.Module, path: Path, use_online: bool) -> str:
    """Load the chosen encoder of any supported weights file (vjepa_fast/weights, weights_only) into the encoder
    built from the config; returns which one ("target" / "online")."""
    w = read_weights(path)
    which, state = pick_encoder(w, use_online)
    try:
        load_part(encoder, "encoder", state, f"{w.format} {w.source} [{which} encoder]", stated_kind(w))
    except CheckpointFormatError as e:
        raise CheckpointFormatError(f"{e} (the model/data config must match the weights: pass --config "
                                    f"RUN_DIR/config.yaml or set model.size)") from None
    log.info("%s: %s", path, w.format)
    return which
