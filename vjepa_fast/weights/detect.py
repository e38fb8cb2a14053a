"""The architecture of a weights file (a models/arch.py `ModelArch`) detected from its tensor shapes: the position
kind, the clip a fixed position table was built for, the head counts of the published models."""
from __future__ import annotations

import math
import re
from typing import Any, Optional, Sequence

import torch

from vjepa_fast.models.arch import CheckpointFormatError, ModelArch
from vjepa_fast.models.pos_embed import Grid, sincos_3d
from vjepa_fast.models.vit import VIT_SIZES


# ---- detection from tensor shapes --------------------------------------------------------------------------------
# Head counts a state dict cannot show. (width, depth, position kind) of the published encoders -> heads; the
# V-JEPA giant uses 16 heads, the V-JEPA 2 giant 22 (head dim 64). V-JEPA 2 predictors all have 12 heads.
PUBLISHED_HEADS = {(1024, 24): 16, (1280, 32): 16, (1408, 40, "sincos"): 16, (1408, 40, "rope"): 22}
VJEPA2_PREDICTOR_HEADS = 12


def _count(state: dict, prefix: str) -> int:
    """1 + the largest N of keys `<prefix>N.<name>` (blocks) or `<prefix>N` (a ParameterList: mask_tokens.0)."""
    pat = re.compile(re.escape(prefix) + r"(\d+)(?:\.|$)")
    found = {int(m.group(1)) for k in state if (m := pat.match(k))}
    return max(found) + 1 if found else 0


# ---- the clip a fixed position table was built for ---------------------------------------------------------------
# V-JEPA's published clips (frames, crop): vitl16 / vith16 at 16 x 224, vith16-384 at 16 x 384.
PUBLISHED_CLIPS = ((16, 224), (16, 384))
# V-JEPA 2's published predictor (width, depth, mask tokens); V-JEPA's predictors have 2 mask tokens.
VJEPA2_PREDICTOR = (384, 12, 10)


def clip_grid(num_frames: int, crop_size: int, tubelet: int, patch: int) -> Optional[Grid]:
    """The token grid of a clip, None when the tubelets do not tile it."""
    if num_frames % tubelet or crop_size % patch:
        return None
    return (num_frames // tubelet, crop_size // patch, crop_size // patch)


def published_grids(tubelet: int, patch: int) -> list[Grid]:
    return [g for f, c in PUBLISHED_CLIPS if (g := clip_grid(f, c, tubelet, patch)) is not None]


def table_grid(table: torch.Tensor, kind: str, candidates: Sequence[Optional[Grid]] = ()) -> Optional[Grid]:
    """The (T, H, W) token grid a fixed position table [1, N, D] is laid out on, or None when nothing tells.

    A 3D sin-cos table shows its grid in its values: of the square grids with N tokens exactly one rebuilds it. A
    table that is not one (a 1D table, another layout, trained values) takes the first of `candidates` (what the file
    or the user states, the published sizes) with N tokens."""
    n, dim = int(table.shape[-2]), int(table.shape[-1])
    if kind == "sincos":
        flat = table.reshape(n, dim).double()
        tol = max(1e-4, 8 * torch.finfo(table.dtype).eps) if table.is_floating_point() else 1e-4
        squares = [(n // (s * s), s, s) for s in range(1, math.isqrt(n) + 1) if n % (s * s) == 0]
        # a cheap first look: the first channel of each axis's block (c = 2 ceil(dim / 6) wide) is sin(position)
        c, idx = 2 * math.ceil(dim / 6), torch.arange(n, dtype=torch.float64)
        first = [a * c for a in range(3) if a * c < dim]

        def plausible(g: Grid) -> bool:
            pos = torch.stack([idx // (g[1] * g[2]), (idx // g[2]) % g[1], idx % g[2]])[:len(first)]
            return (flat[:, first] - torch.sin(pos.T)).abs().max().item() <= tol

        found = [g for g in squares if plausible(g) and (flat - sincos_3d(g, dim).double()).abs().max().item() <= tol]
        if len(found) == 1:
            return found[0]
    return next((g for g in candidates if g is not None and math.prod(g) == n), None)


def grid_error(where: str, table: str, n: int) -> CheckpointFormatError:
    return CheckpointFormatError(f"{where}: its {table} has {n} tokens, which does not tell the clip size it was "
                                 f"built for (frames / tubelet x (crop / patch)^2 tokens): pass that clip size "
                                 f"(num_frames=... crop_size=...; data.num_frames / data.crop_size in a config)")


def position_kind(encoder: dict[str, torch.Tensor], predictor: Optional[dict[str, torch.Tensor]]) -> tuple[str, str]:
    """(kind, why) of a file's positions: rope, sincos (V-JEPA's 3D table) or sincos_1d (VideoMAE's).

    No `pos_embed`: rotary (V-JEPA 2). A table in the file is still read as rotary when the predictor says so: a
    sin-cos predictor always carries its predictor_pos_embed, and V-JEPA 2's published predictor (384 wide, 12 blocks,
    10 mask tokens) is rotary; such a stray table is ignored (formats.py warns), as V-JEPA 2's own loader does."""
    table = encoder.get("pos_embed")
    if table is None:
        return "rope", "no pos_embed"
    if predictor and any(k.startswith("predictor_blocks.") for k in predictor):
        if "predictor_pos_embed" not in predictor:
            return "rope", "its predictor has no predictor_pos_embed"
        pw = predictor.get("predictor_embed.weight")
        shape = (int(pw.shape[0]) if pw is not None else None, _count(predictor, "predictor_blocks."),
                 _count(predictor, "mask_tokens."))
        if shape == VJEPA2_PREDICTOR:
            return "rope", "its predictor is V-JEPA 2's (384 wide, 12 blocks, 10 mask tokens)"
    # the 1D table (VideoMAE) has cos(0) = 1 in channel 1 of token 0, the 3D one sin(0) = 0
    return ("sincos_1d" if table.reshape(-1, table.shape[-1])[0, 1].item() > 0.5 else "sincos"), "a pos_embed table"


def detect_arch(encoder: dict[str, torch.Tensor], predictor: Optional[dict[str, torch.Tensor]], where: str,
                overrides: Optional[dict[str, Any]] = None) -> ModelArch:
    """The architecture of our-named encoder (and predictor) state dicts, at the clip size the file was built for.

    `overrides` (ModelArch field names) supply what shapes cannot show: `num_heads` / `pred_num_heads` (else the
    published models' table, else the error names the key to set) and `pos_embed`; `num_frames` with `crop_size`
    name the clip the caller wants, taken as the file's own when its position table cannot tell (table_grid). The
    caller applies the overrides to the result (resolve_arch), so a wanted size that differs is its to make."""
    over = {k: v for k, v in (overrides or {}).items() if v is not None}
    w = encoder.get("patch_embed.proj.weight")
    if w is None or w.dim() != 5:
        raise CheckpointFormatError(f"{where}: no patch_embed.proj.weight [D, C, t, p, p] in the encoder weights "
                                    f"(keys: {sorted(encoder)[:6]})")
    D, C, t, p, _ = w.shape
    depth = _count(encoder, "blocks.")
    if depth == 0 or "blocks.0.mlp.fc1.weight" not in encoder:
        raise CheckpointFormatError(f"{where}: no encoder blocks (blocks.N.*) in the weights")
    kind = over.get("pos_embed") or position_kind(encoder, predictor)[0]
    arch = ModelArch(embed_dim=int(D), depth=depth, in_chans=int(C), tubelet_size=int(t), patch_size=int(p),
                     mlp_ratio=encoder["blocks.0.mlp.fc1.weight"].shape[0] / D, pos_embed=kind)
    table = encoder.get("pos_embed")
    if kind == "rope":  # V-JEPA 2's published clip size; rotary positions take any
        arch.num_frames, arch.crop_size = 64, 256
    elif table is not None:
        wanted = clip_grid(over["num_frames"], over["crop_size"], arch.tubelet_size, arch.patch_size) \
            if "num_frames" in over and "crop_size" in over else None
        grid = table_grid(table, kind, [wanted, *published_grids(arch.tubelet_size, arch.patch_size)])
        if grid is None:
            raise grid_error(where, "pos_embed", int(table.shape[-2]))
        arch.num_frames, arch.crop_size = grid[0] * arch.tubelet_size, grid[1] * arch.patch_size
    heads = over.get("num_heads") or PUBLISHED_HEADS.get((arch.embed_dim, depth, kind)) \
        or PUBLISHED_HEADS.get((arch.embed_dim, depth))
    if heads is None:
        heads = next((s["num_heads"] for s in VIT_SIZES.values()
                      if (s["embed_dim"], s["depth"]) == (arch.embed_dim, depth)), None)
    if heads is None:
        raise CheckpointFormatError(f"{where}: a {arch.embed_dim}-wide, {depth}-block encoder is not a known size "
                                    f"and the file does not say its number of heads: set model.num_heads")
    arch.num_heads = heads
    if predictor:
        pw = predictor.get("predictor_embed.weight")
        if pw is None:
            raise CheckpointFormatError(f"{where}: no predictor_embed.weight in the predictor weights")
        arch.pred_dim, arch.pred_depth = int(pw.shape[0]), _count(predictor, "predictor_blocks.")
        arch.pred_mask_tokens = max(1, _count(predictor, "mask_tokens."))
        if "predictor_blocks.0.mlp.fc1.weight" in predictor:
            arch.pred_mlp_ratio = predictor["predictor_blocks.0.mlp.fc1.weight"].shape[0] / arch.pred_dim
        pred_heads = over.get("pred_num_heads")
        if pred_heads is None:
            pred_heads = VJEPA2_PREDICTOR_HEADS if kind == "rope" else _default_pred_heads(arch)
        if pred_heads is None:
            raise CheckpointFormatError(f"{where}: the file does not say the predictor's number of heads: set "
                                        f"model.pred_num_heads")
        arch.pred_num_heads = pred_heads
    return arch


def _default_pred_heads(arch: ModelArch) -> Optional[int]:
    """V-JEPA's rule (PREDICTOR_DEFAULTS): the encoder's heads when they divide the predictor width."""
    if arch.pred_dim % arch.num_heads == 0:
        return arch.num_heads
    return None
