"""Checkpoints: atomic full-state saves every K steps, resume from the newest readable one, pruning old ones.

The file holds the full (unsharded) model and optimizer state, so a run can resume on a different number of
processes. Files are written to a temporary name and renamed, so a run killed mid-save leaves the previous
checkpoint intact; an unreadable newest file is logged and the one before it is used.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step_(\d{8})\.pt$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), d / n) for n in os.listdir(d) if (m := _NAME.match(n))]
    return sorted(found)


def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    extra: dict[str, Any], keep: int, is_main: bool) -> Optional[Path]:
    """Collective under FSDP2 (every rank must call it); rank 0 writes."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optim_state = get_state_dict(model, optimizer, options=opts)
    path = None
    if is_main:
        d = checkpoint_dir(run_dir)
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"step_{step:08d}.pt"
        tmp = path.with_suffix(".pt.tmp")
        torch.save({"model": model_state, "optim": optim_state, "step": step, **extra}, tmp)
        os.replace(tmp, path)
        for _, old in list_checkpoints(run_dir)[:-keep]:
            old.unlink(missing_ok=True)
    if dist.is_initialized():
        dist.barrier()
    return path


def load_file(path: Path) -> dict[str, Any]:
    """Load a checkpoint file safely (weights_only: no code runs from the file)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def resume_latest(run_dir: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Optional[dict]:
    """Restore the newest readable checkpoint into model/optimizer; returns its payload or None."""
    for step, path in reversed(list_checkpoints(run_dir)):
        try:
            payload = load_file(path)
            model_state, optim_state = payload["model"], payload["optim"]
        except Exception as e:  # a torn or corrupt file: say so and fall back to the previous one
            log.warning("checkpoint %s is unreadable (%s: %s); trying an older one", path, type(e).__name__, e)
            continue
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                       options=StateDictOptions(full_state_dict=True))
        log.info("resumed from %s (step %d)", path, step)
        return payload
    return None
