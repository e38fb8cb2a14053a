"""Masks for V-JEPA (multi-block 3D) and VideoMAE (tube), packed into flat row indices + cu_seqlens.

Packing convention (used by the models, the ops and the loss):
- a batch of B clips of N tokens and M mask configurations gives S = M * B sequences, ordered s = m * B + b;
- a "row" is a flat token index b * N + n into the [B, N, D] token tensor; each sequence's rows are sorted by n;
- `ctx_*` are the context (visible) sequences, `tgt_*` the target (predicted) ones, with int32 offsets `*_cu` [S + 1];
- the predictor lays out each sequence as [its context rows ; its target rows]: `pred_cu = ctx_cu + tgt_cu`, and
  `pred_ctx_slots` / `pred_tgt_slots` give each context / target row's position in that packed buffer;
- `pred_src_rows` / `pred_pos_rows` describe that buffer slot by slot for one gather (ops.gather.indexed_gather_add):
  slot r holds src[pred_src_rows[r]] + pos[pred_pos_rows[r]] with src = [context rows (Rc) ; mask tokens (M)], so
  a context slot's source is its context row index j and a target slot's is Rc + m; its position is the token n.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Optional, Sequence

import numpy as np
import torch


@dataclass
class PackedMasks:
    num_tokens: int  # N tokens per clip
    batch_size: int  # B clips (local to this process)
    num_masks: int  # M mask configurations
    ctx_rows: torch.Tensor  # int64 [Rc]
    ctx_cu: torch.Tensor  # int32 [S + 1]
    ctx_max: int
    tgt_rows: torch.Tensor  # int64 [Rt]
    tgt_cu: torch.Tensor  # int32 [S + 1]
    tgt_max: int
    tgt_mask_id: torch.Tensor  # int64 [Rt]: the mask configuration m of each target row
    tgt_counts: torch.Tensor  # int64 [M]: target rows per mask configuration in this batch
    pred_cu: torch.Tensor  # int32 [S + 1]
    pred_max: int
    pred_ctx_slots: torch.Tensor  # int64 [Rc]
    pred_tgt_slots: torch.Tensor  # int64 [Rt]
    pred_src_rows: torch.Tensor  # int64 [Rc + Rt], per predictor slot (module docstring)
    pred_pos_rows: torch.Tensor  # int64 [Rc + Rt]

    def _map(self, fn) -> "PackedMasks":
        vals = {}
        for f in fields(self):
            v = getattr(self, f.name)
            vals[f.name] = fn(v) if isinstance(v, torch.Tensor) else v
        return PackedMasks(**vals)

    def to(self, device, non_blocking: bool = False) -> "PackedMasks":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "PackedMasks":
        return self._map(lambda t: t.pin_memory())

    def check_decoder_input(self, who: str, ctx: torch.Tensor, embed_dim: int, grid, num_tokens: int,
                            mask_tokens: Optional[int] = None) -> None:
        """The input checks of a decoder that lays ctx out by these masks (the predictor, the VideoMAE decoder):
        ctx [Rc, embed_dim] on the masks' device, masks for `num_tokens` tokens per clip (the decoder's `grid`),
        and the packed sizes in agreement. `mask_tokens` (the predictor's count, one per mask configuration) adds
        the checks of what only it reads: the configuration count, tgt_mask_id and the slot-by-slot gather rows.
        `who` starts each error message."""
        if ctx.dim() != 2 or ctx.shape[1] != embed_dim:
            raise ValueError(f"{who}: ctx must be [Rc, {embed_dim}], got {tuple(ctx.shape)}")
        if self.num_tokens != num_tokens:
            raise ValueError(f"{who}: masks are for {self.num_tokens} tokens per clip but it was built for grid "
                             f"{grid} = {num_tokens} tokens")
        if mask_tokens is not None and self.num_masks > mask_tokens:
            raise ValueError(f"{who}: {self.num_masks} mask configurations but only {mask_tokens} mask tokens")
        Rc, Rt = self.ctx_rows.numel(), self.tgt_rows.numel()
        if ctx.shape[0] != Rc or self.pred_ctx_slots.numel() != Rc:
            raise ValueError(f"{who}: ctx has {ctx.shape[0]} rows, ctx_rows {Rc}, pred_ctx_slots "
                             f"{self.pred_ctx_slots.numel()}: they must agree")
        per_target = ("pred_tgt_slots", "tgt_mask_id") if mask_tokens is not None else ("pred_tgt_slots",)
        for name in per_target:
            if getattr(self, name).numel() != Rt:
                counts = ", ".join(f"{n} {getattr(self, n).numel()}" for n in per_target)
                raise ValueError(f"{who}: tgt_rows {Rt}, {counts}: they must agree")
        names = ["ctx_rows", "tgt_rows", "pred_cu", "pred_ctx_slots", "pred_tgt_slots"]
        if mask_tokens is not None:
            for name in ("pred_src_rows", "pred_pos_rows"):
                t = getattr(self, name)
                if t.numel() != Rc + Rt:
                    raise ValueError(f"{who}: masks.{name} has {t.numel()} entries but the buffer has Rc + Rt = "
                                     f"{Rc + Rt} rows")
            names += ["tgt_mask_id", "pred_src_rows", "pred_pos_rows"]
        for name in names:
            t = getattr(self, name)
            if t.device != ctx.device:
                raise ValueError(f"{who}: masks.{name} on {t.device} but ctx on {ctx.device}")


# masks[m][i] = (ctx_idx, tgt_idx): sorted int64 token indices of mask configuration m for sample i.
MaskList = list[list[tuple[np.ndarray, np.ndarray]]]

# Domain tags in the RNG seeds, so the per-batch size stream and the per-sample position streams of the same
# (seed, step, ...) never coincide (numpy's SeedSequence pads short entropy with zeros, so (a, b, c) == (a, b, c, 0)).
_TAG_SIZE, _TAG_BLOCKS, _TAG_TUBE = 1, 2, 3
_U64_MAX = 2**64 - 1


def _rng(*words: int) -> np.random.Generator:
    # A uint64 array is fed to SeedSequence as two 32-bit words per value: a fixed-width, injective encoding.
    return np.random.default_rng(np.array(words, dtype=np.uint64))


def _check_uint(name: str, v) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or not 0 <= int(v) <= _U64_MAX:
        raise ValueError(f"{name} must be an integer in [0, 2**64), got {v!r}")
    return int(v)


def _check_grid(grid) -> tuple[int, int, int]:
    try:
        g = tuple(grid)
    except TypeError:
        raise ValueError(f"grid must be (T', H', W'), got {grid!r}") from None
    if len(g) != 3 or any(isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 1 for x in g):
        raise ValueError(f"grid must be three positive integers (T', H', W'), got {grid!r}")
    return int(g[0]), int(g[1]), int(g[2])


def _check_ids(sample_ids) -> np.ndarray:
    ids = np.asarray(sample_ids)
    if ids.size == 0:
        return np.zeros(0, dtype=np.uint64)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ValueError(f"sample_ids must be a 1-D sequence of integers, got {ids.dtype} with shape {ids.shape}")
    if ids.min() < 0:
        raise ValueError(f"sample_ids must be non-negative, got {int(ids.min())}")
    return ids.astype(np.uint64)


def _split_indices(keep: np.ndarray) -> list[np.ndarray]:
    """keep: bool [B, N] -> per row b, the sorted int64 indices n where keep[b, n] (views into one array)."""
    if keep.shape[0] == 0:
        return []
    _, n = np.nonzero(keep)  # row-major: grouped by b, sorted by n inside each group
    return np.split(n.astype(np.int64, copy=False), np.cumsum(keep.sum(1))[:-1])


@dataclass(frozen=True)  # frozen: SHORT_RANGE / LONG_RANGE are shared module-level constants
class BlockSpec:
    """One mask configuration of the multi-block generator (docs/recipe.md, "Masking")."""
    num_blocks: int
    spatial_scale: float  # fraction of the H' x W' spatial grid covered by ONE block (0.15 short, 0.7 long)
    aspect_ratio: tuple[float, float] = (0.75, 1.5)  # block h / w drawn uniformly in this range
    temporal_scale: float = 1.0  # fraction of the T' time steps a block spans (1.0 = all, as in the recipe)

    def validate(self) -> None:
        if isinstance(self.num_blocks, bool) or not isinstance(self.num_blocks, (int, np.integer)) \
                or self.num_blocks < 1:
            raise ValueError(f"BlockSpec.num_blocks must be a positive integer, got {self.num_blocks!r}")
        for name in ("spatial_scale", "temporal_scale"):
            v = getattr(self, name)
            if not isinstance(v, (int, float, np.floating)) or not 0.0 < v <= 1.0:
                raise ValueError(f"BlockSpec.{name} must be in (0, 1], got {v!r}")
        ar = tuple(self.aspect_ratio)
        if len(ar) != 2 or not all(isinstance(x, (int, float, np.floating)) and math.isfinite(x) for x in ar) \
                or not 0.0 < ar[0] <= ar[1]:
            raise ValueError(f"BlockSpec.aspect_ratio must be (lo, hi) with 0 < lo <= hi, got {self.aspect_ratio!r}")


SHORT_RANGE = BlockSpec(8, 0.15)
LONG_RANGE = BlockSpec(2, 0.7)
DEFAULT_SPECS = (SHORT_RANGE, LONG_RANGE)


def _floor(x: float) -> int:
    # int() of a product, tolerant of float noise such as 0.29 * 100 = 28.999999999999996.
    return int(math.floor(x + 1e-9))


class MultiBlockMasker:
    """V-JEPA multi-block 3D masks. Targets = union of `num_blocks` boxes; context = the complement.

    Reproducibility across processes: the block size of configuration m is drawn once per batch from an RNG seeded by
    (seed, step, m), and each sample's block positions from one seeded by (seed, step, sample_id, m), so a sample's
    masks never depend on which other samples share its batch or process.
    """

    def __init__(self, grid: tuple[int, int, int], specs: Sequence[BlockSpec] = DEFAULT_SPECS, seed: int = 0,
                 max_tries: int = 20):
        self.grid = _check_grid(grid)
        self.specs = tuple(specs)
        if not self.specs:
            raise ValueError("MultiBlockMasker needs at least one BlockSpec")
        for spec in self.specs:
            if not isinstance(spec, BlockSpec):
                raise ValueError(f"specs must be BlockSpec instances, got {type(spec).__name__}")
            spec.validate()
        self.seed = _check_uint("seed", seed)
        if isinstance(max_tries, bool) or not isinstance(max_tries, (int, np.integer)) or max_tries < 1:
            raise ValueError(f"max_tries must be a positive integer, got {max_tries!r}")
        self.max_tries = int(max_tries)

    @property
    def num_tokens(self) -> int:
        T, H, W = self.grid
        return T * H * W

    @property
    def num_masks(self) -> int:
        return len(self.specs)

    def block_size(self, step: int, m: int) -> tuple[int, int, int]:
        """(t, h, w) of every block of configuration m at this step (shared by the whole batch)."""
        T, H, W = self.grid
        spec = self.specs[m]
        lo, hi = spec.aspect_ratio
        ar = lo + _rng(self.seed, _check_uint("step", step), m, _TAG_SIZE).random() * (hi - lo)
        area = _floor(H * W * spec.spatial_scale)
        # At least one cell per side so a tiny grid still gets a real block; at most the grid.
        h = min(max(int(round(math.sqrt(area * ar))), 1), H)
        w = min(max(int(round(math.sqrt(area / ar))), 1), W)
        t = min(max(_floor(T * spec.temporal_scale), 1), T)
        return t, h, w

    def sample(self, step: int, sample_ids: Sequence[int]) -> MaskList:
        """masks[m][i] = (ctx_idx, tgt_idx) for configuration m and sample_ids[i]; sorted int64 in [0, N)."""
        step = _check_uint("step", step)
        ids = _check_ids(sample_ids)
        return [self._sample_config(step, m, ids) for m in range(len(self.specs))]

    def _sample_config(self, step: int, m: int, ids: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        T, H, W = self.grid
        t, h, w = self.block_size(step, m)
        nb = self.specs[m].num_blocks
        if len(ids) == 0:
            return []
        rngs = [_rng(self.seed, step, int(i), m, _TAG_BLOCKS) for i in ids]
        covered = np.empty((len(ids), T, H, W), dtype=bool)
        todo = np.arange(len(ids))
        for _ in range(self.max_tries):
            # Draw block corners for the samples still to do, each from its own stream: a retry continues that
            # sample's stream only, so it stays independent of the rest of the batch.
            starts, tops, lefts = (np.stack([rngs[i].integers(0, size - ext + 1, nb) for i in todo])
                                   for size, ext in ((T, t), (H, h), (W, w)))
            covered[todo] = self._cover(starts, tops, lefts, (t, h, w))
            empty_ctx = covered[todo].reshape(len(todo), -1).all(1)
            todo = todo[empty_ctx]
            if len(todo) == 0:
                break
        else:
            raise ValueError(f"MultiBlockMasker: configuration {m} ({self.specs[m]}) left an empty context after "
                             f"{self.max_tries} tries for sample_ids {ids[todo].tolist()} at step {step} "
                             f"(block size {(t, h, w)} on grid {self.grid}); use smaller or fewer blocks")
        flat = covered.reshape(len(ids), -1)
        return list(zip(_split_indices(~flat), _split_indices(flat)))

    def _cover(self, starts, tops, lefts, size) -> np.ndarray:
        """Union of boxes: starts/tops/lefts [B, nb] -> bool [B, T, H, W]."""
        T, H, W = self.grid
        t, h, w = size
        def span(lo, n, ext):  # [B, nb, n]: which of the n cells each block covers along this axis
            ar = np.arange(n)
            return (ar >= lo[..., None]) & (ar < lo[..., None] + ext)
        rows, cols = span(tops, H, h), span(lefts, W, w)
        if t == T:  # the recipe's case: a spatial union repeated over time, nb * H * W work instead of nb * N
            spatial = (rows[:, :, :, None] & cols[:, :, None, :]).any(1)
            return np.broadcast_to(spatial[:, None], (len(starts), T, H, W))
        times = span(starts, T, t)
        return (times[:, :, :, None, None] & rows[:, :, None, :, None] & cols[:, :, None, None, :]).any(1)


class TubeMasker:
    """VideoMAE tube masks: round(mask_ratio * H' * W') spatial positions masked, the same ones at every time step.

    One configuration (M = 1); ctx = visible tokens, tgt = masked tokens. Each sample's positions come from an RNG
    seeded by (seed, step, sample_id), so like MultiBlockMasker it does not depend on the batch split.
    """

    def __init__(self, grid: tuple[int, int, int], mask_ratio: float = 0.9, seed: int = 0):
        self.grid = _check_grid(grid)
        if not isinstance(mask_ratio, (int, float, np.floating)) or not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio!r}")
        _, H, W = self.grid
        self.num_masked = int(round(mask_ratio * H * W))
        if not 0 < self.num_masked < H * W:
            raise ValueError(f"mask_ratio {mask_ratio} masks {self.num_masked} of the {H * W} positions of grid "
                             f"{self.grid}; both the visible and the masked sets must be non-empty")
        self.mask_ratio = float(mask_ratio)
        self.seed = _check_uint("seed", seed)

    @property
    def num_tokens(self) -> int:
        T, H, W = self.grid
        return T * H * W

    num_masks = 1

    def sample(self, step: int, sample_ids: Sequence[int]) -> MaskList:
        step = _check_uint("step", step)
        ids = _check_ids(sample_ids)
        T, H, W = self.grid
        masked = np.zeros((len(ids), H * W), dtype=bool)
        for b, i in enumerate(ids):
            masked[b, _rng(self.seed, step, int(i), 0, _TAG_TUBE).permutation(H * W)[:self.num_masked]] = True
        flat = np.broadcast_to(masked[:, None], (len(ids), T, H * W)).reshape(len(ids), T * H * W)
        return [list(zip(_split_indices(~flat), _split_indices(flat)))]


def _as_index_array(a, what: str) -> np.ndarray:
    a = a.cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
        raise ValueError(f"pack_masks: {what} must be a 1-D integer array, got {a.dtype} with shape {a.shape}")
    return a


def _pack_role(arrays: list[np.ndarray], lens: np.ndarray, N: int, B: int, role: str):
    """Concatenate S index lists into flat rows b * N + n, validating range and strict sortedness vectorised."""
    idx = np.concatenate(arrays).astype(np.int64, copy=False) if arrays else np.zeros(0, np.int64)
    cu = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=cu[1:])
    if idx.size:
        if idx.min() < 0 or idx.max() >= N:
            bad = int(np.flatnonzero((idx < 0) | (idx >= N))[0])
            s = int(np.searchsorted(cu, bad, side="right") - 1)
            raise IndexError(f"pack_masks: {role} index {int(idx[bad])} of mask {s // B}, sample {s % B} is outside "
                             f"[0, num_tokens={N})")
        # Every step inside a sequence must increase; steps across a sequence boundary are exempt.
        inside = np.ones(idx.size - 1, dtype=bool)
        inside[cu[1:-1][(cu[1:-1] > 0) & (cu[1:-1] < idx.size)] - 1] = False
        bad = np.flatnonzero((np.diff(idx) <= 0) & inside)
        if bad.size:
            s = int(np.searchsorted(cu, int(bad[0]), side="right") - 1)
            raise ValueError(f"pack_masks: {role} indices of mask {s // B}, sample {s % B} are not strictly "
                             f"increasing (sorted, no duplicates)")
    if cu[-1] >= 2**31:
        raise ValueError(f"pack_masks: {int(cu[-1])} {role} rows overflow the int32 offsets")
    seq = np.arange(len(lens))
    rows = idx + np.repeat((seq % B) * N if B else seq, lens)
    return rows, cu


def pack_masks(masks: MaskList, num_tokens: int, truncate_to_batch_min: bool = False) -> PackedMasks:
    """Pack masks[m][b] = (ctx_idx, tgt_idx) into a PackedMasks (convention in the module docstring).

    truncate_to_batch_min reproduces the original code: per configuration, every context (target) list is cut to the
    batch's smallest context (target) count, keeping the lowest token indices.
    """
    N = num_tokens
    if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or N < 1:
        raise ValueError(f"pack_masks: num_tokens must be a positive integer, got {num_tokens!r}")
    N = int(N)
    if not isinstance(masks, (list, tuple)) or len(masks) == 0:
        raise ValueError("pack_masks: masks must be a non-empty list (one entry per mask configuration)")
    M, B = len(masks), len(masks[0])
    ctx, tgt = [], []
    for m, per_sample in enumerate(masks):
        if len(per_sample) != B:
            raise ValueError(f"pack_masks: mask configuration {m} has {len(per_sample)} samples, configuration 0 "
                             f"has {B}")
        for b, pair in enumerate(per_sample):
            if len(pair) != 2:
                raise ValueError(f"pack_masks: masks[{m}][{b}] must be a (ctx_idx, tgt_idx) pair")
            ctx.append(_as_index_array(pair[0], f"masks[{m}][{b}] ctx"))
            tgt.append(_as_index_array(pair[1], f"masks[{m}][{b}] tgt"))
    ctx_lens = np.array([a.size for a in ctx], dtype=np.int64)
    tgt_lens = np.array([a.size for a in tgt], dtype=np.int64)
    if truncate_to_batch_min and B:
        # Sorted lists, so the first k entries are the k lowest indices.
        ctx_lens = np.repeat(ctx_lens.reshape(M, B).min(1), B)
        tgt_lens = np.repeat(tgt_lens.reshape(M, B).min(1), B)
        ctx = [a[:k] for a, k in zip(ctx, ctx_lens)]
        tgt = [a[:k] for a, k in zip(tgt, tgt_lens)]
    ctx_rows, ctx_cu = _pack_role(ctx, ctx_lens, N, B, "ctx")
    tgt_rows, tgt_cu = _pack_role(tgt, tgt_lens, N, B, "tgt")
    pred_cu = ctx_cu + tgt_cu
    if pred_cu[-1] >= 2**31:
        raise ValueError(f"pack_masks: {int(pred_cu[-1])} predictor rows overflow the int32 offsets")
    # Sequence s occupies [pred_cu[s], pred_cu[s+1]): context row j of s lands at pred_cu[s] + (j - ctx_cu[s])
    # = j + tgt_cu[s]; target row j at pred_cu[s] + ctx_len[s] + (j - tgt_cu[s]) = j + ctx_cu[s + 1].
    pred_ctx_slots = np.arange(ctx_cu[-1], dtype=np.int64) + np.repeat(tgt_cu[:-1], ctx_lens)
    pred_tgt_slots = np.arange(tgt_cu[-1], dtype=np.int64) + np.repeat(ctx_cu[1:], tgt_lens)
    mask_of_seq = np.arange(M * B, dtype=np.int64) // max(B, 1)
    tgt_mask_id = np.repeat(mask_of_seq, tgt_lens)
    # The predictor's layout gather, slot by slot: context slot -> context row j, target slot -> mask token Rc + m;
    # every slot's position is its token n. Every slot is one of the two kinds, so both arrays are fully written.
    Rc = int(ctx_cu[-1])
    pred_src_rows = np.empty(int(pred_cu[-1]), dtype=np.int64)
    pred_src_rows[pred_ctx_slots] = np.arange(Rc, dtype=np.int64)
    pred_src_rows[pred_tgt_slots] = Rc + tgt_mask_id
    pred_pos_rows = np.empty(int(pred_cu[-1]), dtype=np.int64)
    pred_pos_rows[pred_ctx_slots] = ctx_rows % N
    pred_pos_rows[pred_tgt_slots] = tgt_rows % N

    def lmax(lens):
        return int(lens.max()) if lens.size else 0

    t = torch.from_numpy
    return PackedMasks(
        num_tokens=N, batch_size=B, num_masks=M,
        ctx_rows=t(ctx_rows), ctx_cu=t(ctx_cu.astype(np.int32)), ctx_max=lmax(ctx_lens),
        tgt_rows=t(tgt_rows), tgt_cu=t(tgt_cu.astype(np.int32)), tgt_max=lmax(tgt_lens),
        tgt_mask_id=t(tgt_mask_id),
        tgt_counts=t(tgt_lens.reshape(M, B).sum(1) if B else np.zeros(M, dtype=np.int64)),
        pred_cu=t(pred_cu.astype(np.int32)), pred_max=lmax(ctx_lens + tgt_lens),
        pred_ctx_slots=t(pred_ctx_slots), pred_tgt_slots=t(pred_tgt_slots),
        pred_src_rows=t(pred_src_rows), pred_pos_rows=t(pred_pos_rows),
    )
