"""Weights into modules: `load_encoder` (a file or run -> a frozen encoder), `load_into` (train.init_from), and the
strict per-part loading both share."""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from vjepa_fast.models.pos_embed import Grid, interpolate_pos
from vjepa_fast.models.arch import CheckpointFormatError, ModelArch, arch_from_config, build_encoder_from
from vjepa_fast.weights.detect import detect_arch, grid_error, position_kind, published_grids, table_grid
from vjepa_fast.weights.formats import Weights, read_weights
from vjepa_fast.weights.reference import load_module

log = logging.getLogger("vjepa_fast.weights")

# Fixed (never trained) position tables of each part: rebuilt for the model's clip size, never loaded across kinds.
POS_TABLES = {"encoder": "pos_embed", "target_encoder": "pos_embed", "predictor": "predictor_pos_embed"}


def pick_encoder(w: Weights, online: bool) -> tuple[str, dict[str, torch.Tensor]]:
    """(which: "target" / "online", state) of the encoder to use; the other one when the file has only that."""
    want, other = ("encoder", "target_encoder") if online else ("target_encoder", "encoder")
    if want in w.parts:
        return ("online" if online else "target"), w.parts[want]
    if other in w.parts:
        if not online:
            log.info("%s has no target encoder; using its encoder", w.source)
        else:
            log.warning("%s has no online encoder; using the target encoder", w.source)
        return ("online" if other == "encoder" else "target"), w.parts[other]
    raise CheckpointFormatError(f"{w.format} {w.source}: no encoder weights (parts: {sorted(w.parts)})")


def resolve_arch(w: Weights, encoder: dict, config=None,
                 overrides: Optional[dict[str, Any]] = None) -> tuple[ModelArch, Optional[Grid]]:
    """(the architecture to build, the token grid the file's position tables are laid out on). The architecture: a
    given Config's, else what the file states, else what its shapes show; then `overrides` (ModelArch field names).
    A clip size other than the file's is the caller's request: load_part resizes the file's tables to it."""
    over = {k: v for k, v in (overrides or {}).items() if v is not None}
    names = {f.name for f in dataclasses.fields(ModelArch)}
    unknown = sorted(set(over) - names)
    if unknown:
        raise CheckpointFormatError(f"unknown model overrides {unknown}; allowed: {sorted(names)}")
    if config is not None:
        arch = dataclasses.replace(arch_from_config(config), **over)
        return arch, file_grid(w, encoder, arch.grid)
    own = w.arch if w.arch is not None else \
        detect_arch(encoder, w.parts.get("predictor"), f"{w.format} {w.source}", over)
    return dataclasses.replace(own, **over), own.grid


def file_grid(w: Weights, encoder: dict[str, torch.Tensor], wanted: Optional[Grid] = None) -> Optional[Grid]:
    """The token grid of the file's fixed position tables: what the file states, else what its encoder's table
    shows (arch.table_grid; `wanted` and the published sizes are the candidates when the values cannot tell)."""
    if w.arch is not None:
        return w.arch.grid
    table, proj = encoder.get("pos_embed"), encoder.get("patch_embed.proj.weight")
    if table is None or proj is None or proj.dim() != 5:
        return None
    kind = position_kind(encoder, None)[0]
    return table_grid(table, kind, [wanted, *published_grids(int(proj.shape[2]), int(proj.shape[3]))])


def load_part(module: nn.Module, part: str, state: dict[str, torch.Tensor], where: str,
              stated_kind: Optional[str] = None, grid: Optional[Grid] = None) -> None:
    """Strict load of one part. Its fixed position table: laid out on the file's token grid (`grid`, else what the
    table shows), resized to the model's when the model was built for another clip size (a warning); ignored when the
    model uses rotary positions (formats.py warns when it finds a stray one); the model's own when the file states
    the same kind of fixed table without storing it (`stated_kind`, e.g. Hugging Face VideoMAE)."""
    table = POS_TABLES.get(part)
    own = module.state_dict()
    if table is not None:
        if table in own and table not in state and stated_kind == getattr(module, "pos_kind", None):
            state = {**state, table: own[table]}
        if table in state and table not in own:
            log.info("%s: %s ignored (the model uses rotary positions)", where, table)
            state = {k: v for k, v in state.items() if k != table}
        elif table in own and table not in state and any(k.startswith(("blocks.", "predictor_blocks.")) for k in state):
            raise CheckpointFormatError(f"{where}: the file has no {table} (rotary positions, V-JEPA 2) but the model "
                                        f"has a sin-cos table: set model.pos_embed=rope")
        elif table in own and state[table].dim() == 3 and state[table].shape[-1] == own[table].shape[-1]:
            state = {**state, table: _fit_table(module, table, state[table], where, grid)}
    load_module(module, state, where)


def _fit_table(module: nn.Module, name: str, table: torch.Tensor, where: str, grid: Optional[Grid]) -> torch.Tensor:
    """A file's [1, N, D] position table on the module's token grid."""
    n = int(table.shape[1])
    if grid is None or math.prod(grid) != n:
        grid = table_grid(table, module.pos_kind, [module.grid])
    if grid is None:
        raise grid_error(where, name, n)
    if tuple(grid) == tuple(module.grid):
        return table
    how = "rebuilt" if module.pos_kind == "sincos_1d" else "interpolated (trilinear)"
    log.warning("%s: %s is laid out on a %s token grid and the model was built for %s (another clip size than the "
                "file's): %s", where, name, tuple(grid), tuple(module.grid), how)
    if module.pos_kind == "sincos_1d":  # a table over the token index: the model's own for its grid
        return module.state_dict()[name]
    return interpolate_pos(table[0], tuple(grid), tuple(module.grid))[None]


def stated_kind(w: Weights) -> Optional[str]:
    return w.arch.pos_embed if w.arch is not None else None


def open_encoder(path: str | Path, *, online: bool = False, config=None,
                 **overrides) -> tuple[nn.Module, str, Weights, ModelArch]:
    """load_encoder's work: (frozen encoder, which one ("target" / "online"), the weights read, the architecture)."""
    w = read_weights(path)
    which, state = pick_encoder(w, online)
    arch, grid = resolve_arch(w, state, config, overrides)
    encoder = build_encoder_from(arch)
    load_part(encoder, "encoder", state, f"{w.format} {w.source} [{which} encoder]", stated_kind(w), grid)
    log.info("%s: %s; the %s encoder (%d wide, %d blocks, %d heads, %s positions)", path, w.format, which,
             arch.embed_dim, arch.depth, arch.num_heads, arch.pos_embed)
    encoder.requires_grad_(False)
    encoder.eval()
    return encoder, which, w, arch


def load_encoder(path: str | Path, *, online: bool = False, config=None, device: Optional[str] = None,
                 **overrides) -> nn.Module:
    """Any supported weights file, Hugging Face directory or run directory -> the encoder, frozen, in eval mode.

    `forward(clips)` takes [B, 3, T, H, W] clips (normalised as in training) and returns token features [B, N, D].
    The target (EMA) encoder by default, the online one with online=True. The architecture is the file's (stated
    or detected) unless `config` (a Config) is given; `overrides` set ModelArch fields (num_frames, crop_size,
    num_heads, pos_embed, ...)."""
    encoder = open_encoder(path, online=online, config=config, **overrides)[0]
    return encoder.to(device) if device is not None else encoder


def load_into(model, path: str | Path) -> list[str]:
    """Initialise the parts of a pretraining model (its parts(), models/protocol.py) from a weights
    file, Hugging Face directory or run directory: train.init_from. A file with one encoder initialises both the
    online and the target encoder from it. Returns the parts loaded."""
    w = read_weights(path)
    parts = dict(w.parts)
    for have, fill in (("encoder", "target_encoder"), ("target_encoder", "encoder")):
        if fill not in parts and have in parts:
            parts[fill] = parts[have]
    grid = file_grid(w, parts.get("encoder", {}), model.grid)
    loaded = []
    for name, module in model.parts().items():
        if name not in parts:
            continue
        load_part(module, name, parts[name], f"{w.format} {w.source} [{name}]", stated_kind(w), grid)
        loaded.append(name)
    if not loaded:
        raise CheckpointFormatError(f"{w.format} {w.source}: nothing to load into this model (file parts: "
                                    f"{sorted(w.parts)})")
    log.info("%s: %s; loaded %s", path, w.format, ", ".join(loaded))
    return loaded
