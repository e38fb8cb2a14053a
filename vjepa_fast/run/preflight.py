"""Checks a run makes before it touches its run directory; what they find is a one-line RunError (user_errors.py).

Order in `Trainer.run`: data source, optional decoder, forced backends, `train.init_from`, the stored run's config
(on resume), a writable run dir; only then the resume itself, and only after it the resolved config is written. So a
start that fails leaves an existing run directory as it was.
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Optional

import torch

from vjepa_fast.config import Config, ConfigError, load_config, to_dict
from vjepa_fast.user_errors import RunError, one_line


# ---- data ----------------------------------------------------------------------------------------------------------
def open_dataset(cfg: Config):
    """Build the training dataset (index files parsed, folders scanned, the decoder resolved) or say what is wrong."""
    from vjepa_fast.data.loader import build_dataset

    if cfg.data.path != "synthetic":
        from vjepa_fast.data.decode import resolve_decoder

        try:
            resolve_decoder(cfg.data.decoder)
        except ValueError as e:
            raise RunError(f"{one_line(e)} (install it, or set data.decoder=pyav)") from None
    try:
        return build_dataset(cfg.data, cfg.train.seed)
    except (ValueError, OSError) as e:
        raise RunError(f"{one_line(e)} (data.path takes 'synthetic', a folder of videos, an index file of "
                       f"'path label' lines, or several of those comma-separated)") from None


# ---- backends ------------------------------------------------------------------------------------------------------
def check_backends(cfg: Config, device: torch.device, dtype: torch.dtype) -> None:
    """Run each forced op backend once on tiny inputs (the probe each op registers with its backends), so one that
    cannot run here fails now, not inside step 0."""
    from vjepa_fast.models.vit import VIT_SIZES
    from vjepa_fast.ops import _backend  # importing vjepa_fast.ops registers every op

    size = VIT_SIZES[cfg.model.size]
    dh = size["embed_dim"] // (cfg.model.num_heads or size["num_heads"])  # the encoder's head dim: kernels accept some head dims only
    for op in _backend.op_names():
        name = _backend.forced_backend(op)  # the config's choice, or under `auto` the environment's (ops.configure)
        if name is None:
            continue
        env = _backend.env_backend_var(op)
        by_env = getattr(cfg.backends, op) == "auto"
        what = f"{env}={name} (what backends.{op}=auto means here)" if by_env else f"backends.{op}={name}"
        fix = f"unset {env}" if by_env else f"use backends.{op}=auto"
        try:
            _backend.run_probe(op, device, dtype, dh)
        except (RuntimeError, ValueError, ImportError) as e:
            raise RunError(f"{what} cannot run here ({one_line(e)}); {fix} or name another backend in "
                           f"backends.{op} (python -m vjepa_fast.train --help lists them)") from None


# ---- weights to start from -----------------------------------------------------------------------------------------
def check_init_from(path: Optional[str]) -> None:
    if path is None:
        return
    p = Path(path).expanduser()
    if p.is_dir():  # a run dir, a sharded checkpoint or a Hugging Face model dir: the weights reader checks it
        return
    if not p.is_file():
        raise RunError(f"train.init_from: no such file or directory {path} (point it at weights of a format in "
                       f"docs/weights.md, or leave it unset)")
    if p.stat().st_size == 0:
        raise RunError(f"train.init_from: {path} is an empty file (0 bytes); the copy or download is incomplete")
    if not os.access(p, os.R_OK):
        raise RunError(f"train.init_from: {path} is not readable (check its permissions)")


# ---- the stored run ------------------------------------------------------------------------------------------------
# Keys whose change makes the stored checkpoint or data stream mean something else: a resume with any of them changed
# is refused. Everything else that changed is logged as a deliberate change.
INCOMPATIBLE_PREFIXES = ("method", "model.", "data.num_frames", "data.crop_size")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "backends":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume_compatible(stored: Config, cfg: Config, stored_world: Optional[int], world: int) -> list[str]:
    """Compare the stored run's config with this start's. Raises RunError naming the changes that cannot be resumed
    (model, method, clip shape, global batch); returns one line per other change, for the log."""
    old, new = _flat(to_dict(stored)), _flat(to_dict(cfg))
    changed = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    changed.pop("run_dir", None)  # the same run found under another path (moved, or a relative path)
    refused = [f"{k} {a} -> {b}" for k, (a, b) in changed.items() if k.startswith(INCOMPATIBLE_PREFIXES)]
    old_world = stored_world or world
    old_global, new_global = stored.train.batch_size * old_world, cfg.train.batch_size * world
    if old_global != new_global:
        refused.append(f"global batch {old_global} -> {new_global} (train.batch_size x processes: "
                       f"{stored.train.batch_size} x {old_world} -> {cfg.train.batch_size} x {world})")
    if refused:
        raise RunError(f"{cfg.run_dir} holds a run with other settings: {'; '.join(refused)}; resume it with its "
                       f"own settings (its config.yaml), or start a new run with another run_dir")
    notes = [f"{k} {a} -> {b}" for k, (a, b) in changed.items() if k != "train.batch_size"]
    if world != old_world:
        notes.append(f"processes {old_world} -> {world} (same global batch {new_global})")
    return notes


def stored_run(run_dir: Path) -> tuple[Optional[Config], Optional[int]]:
    """(config.yaml of an existing run, the process count of its last start) or (None, None) for a new run dir."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None, None
    try:
        stored = load_config(str(path))
    except ConfigError as e:
        raise RunError(f"{path} cannot be read back ({e}); fix or move it, or start a new run with another "
                       f"run_dir") from None
    world = None
    starts = run_dir / "starts.jsonl"
    if starts.is_file():
        for line in starts.read_text().splitlines():
            try:
                world = int(json.loads(line)["world_size"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn line
    return stored, world


# ---- the run dir ---------------------------------------------------------------------------------------------------
def check_writable(run_dir: Path) -> None:
    """Create the run dir and prove a file can be written there."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write_test"):
            pass
    except OSError as e:
        raise RunError(f"run_dir {run_dir} is not writable ({e.strerror or e}); choose another run_dir or fix "
                       f"its permissions") from None


def save_error(path: Path, e: OSError | RuntimeError) -> Optional[RunError]:
    """A RunError for a checkpoint save that failed for a reason the user can fix (disk full, permissions)."""
    text = str(e)
    full = getattr(e, "errno", None) == errno.ENOSPC or "No space left" in text or "file write failed" in text
    if full:
        return RunError(f"saving {path} failed: no space left on the device of {path.parent}; free space or point "
                        f"run_dir elsewhere (the previous checkpoint, if any, is intact)")
    if isinstance(e, OSError):
        return RunError(f"saving {path} failed ({e.strerror or one_line(e)}); check run_dir (the previous "
                        f"checkpoint, if any, is intact)")
    return None
