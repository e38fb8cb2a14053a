"""Mask generators (multi-block 3D, tube) and their packing into flat rows + cu_seqlens."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vjepa_fast.masks import (DEFAULT_SPECS, BlockSpec, LONG_RANGE, MultiBlockMasker, PackedMasks, SHORT_RANGE,
                              TubeMasker, pack_masks)

GRID = (8, 14, 14)
N = 8 * 14 * 14


def _as_bool(idx, n):
    out = np.zeros(n, dtype=bool)
    out[idx] = True
    return out


def _check_partition(ctx, tgt, n):
    """ctx/tgt: sorted, unique, int64, disjoint and together covering range(n); context non-empty."""
    for a in (ctx, tgt):
        assert a.dtype == np.int64 and a.ndim == 1
        assert np.all(np.diff(a) > 0)
    assert ctx.size > 0
    assert np.array_equal(np.sort(np.concatenate([ctx, tgt])), np.arange(n))


# ---------------------------------------------------------------- multi-block generator


def test_multiblock_statistics_match_recipe():
    masker = MultiBlockMasker(GRID, seed=123)
    counts = [[], []]
    for step in range(50):
        masks = masker.sample(step, range(24))
        assert len(masks) == 2 and all(len(per) == 24 for per in masks)
        for m in range(2):
            for ctx, tgt in masks[m]:
                _check_partition(ctx, tgt, N)
                # Every block spans all 8 time steps: the same spatial pattern at every t.
                pattern = _as_bool(ctx, N).reshape(8, 196)
                assert (pattern == pattern[:1]).all()
                counts[m].append(ctx.size)
    assert len(counts[0]) >= 1000
    # docs/recipe.md: simulated context sizes about 584 (short range) and 294 (long range) of 1568 tokens.
    assert abs(np.mean(counts[0]) - 584) < 40, np.mean(counts[0])
    assert abs(np.mean(counts[1]) - 294) < 40, np.mean(counts[1])
    # Positions vary from sample to sample.
    assert np.std(counts[0]) > 10 and np.std(counts[1]) > 10


def test_block_size_shared_by_the_batch_positions_per_sample():
    # One block per mask: its target count t*h*w is the block size, which must be the same for the whole batch
    # at a given step but change between steps, while positions change between samples.
    masker = MultiBlockMasker((4, 11, 13), specs=(BlockSpec(1, 0.2, (0.4, 2.5)),), seed=7)
    sizes = set()
    for step in range(20):
        masks = masker.sample(step, range(9))[0]
        tgt_counts = {tgt.size for _, tgt in masks}
        assert len(tgt_counts) == 1
        sizes |= tgt_counts
        assert len({tuple(tgt.tolist()) for _, tgt in masks}) > 1
        t, h, w = masker.block_size(step, 0)
        assert t == 4 and tgt_counts == {t * h * w}
    assert len(sizes) > 1


def test_partial_temporal_extent_is_one_box():
    T, H, W = 7, 6, 5
    spec = BlockSpec(1, 0.3, temporal_scale=0.5)
    masker = MultiBlockMasker((T, H, W), specs=(spec,), seed=3)
    starts = set()
    for step in range(10):
        t, h, w = masker.block_size(step, 0)
        assert t == 3  # floor(7 * 0.5)
        for ctx, tgt in masker.sample(step, [0, 5, 11])[0]:
            _check_partition(ctx, tgt, T * H * W)
            ti, hi, wi = np.unravel_index(tgt, (T, H, W))
            assert np.ptp(ti) + 1 == t and np.ptp(hi) + 1 == h and np.ptp(wi) + 1 == w
            assert tgt.size == t * h * w  # a full box, nothing else
            starts.add(int(ti.min()))
    assert len(starts) > 1


def test_retries_keep_context_non_empty():
    # 4 blocks of 2x2 on a 3x3 grid cover everything ~9% of the time: the generator must redraw those samples.
    spec = BlockSpec(4, 0.5)
    masker = MultiBlockMasker((2, 3, 3), specs=(spec,), seed=1)
    full_cover = 0
    for step in range(30):
        masks = masker.sample(step, range(10))[0]
        for ctx, tgt in masks:
            _check_partition(ctx, tgt, 18)
        # Redraws depend only on the sample's own stream: the same with any batch split.
        alone = [masker.sample(step, [i])[0][0] for i in range(10)]
        for (c1, t1), (c2, t2) in zip(masks, alone):
            assert np.array_equal(c1, c2) and np.array_equal(t1, t2)
    # Sanity: the configuration does hit full cover if the first draw were kept (so the retry path ran).
    rng = np.random.default_rng(0)
    for _ in range(2000):
        cov = np.zeros((3, 3), bool)
        for top, left in rng.integers(0, 2, (4, 2)):
            cov[top:top + 2, left:left + 2] = True
        full_cover += cov.all()
    assert full_cover > 0


def test_impossible_configuration_raises():
    masker = MultiBlockMasker((2, 4, 4), specs=(BlockSpec(1, 1.0, (1.0, 1.0)),), max_tries=3)
    with pytest.raises(ValueError, match="empty context"):
        masker.sample(0, [0, 1])


def test_determinism_and_batch_split_independence():
    ids = [3, 17, 4, 250, 9, 0, 1000003]
    a = MultiBlockMasker(GRID, seed=5).sample(11, ids)
    b = MultiBlockMasker(GRID, seed=5).sample(11, ids)
    lo = MultiBlockMasker(GRID, seed=5).sample(11, ids[:3])
    hi = MultiBlockMasker(GRID, seed=5).sample(11, ids[3:][::-1])
    other_seed = MultiBlockMasker(GRID, seed=6).sample(11, ids)
    other_step = MultiBlockMasker(GRID, seed=5).sample(12, ids)
    for m in range(2):
        split = lo[m] + hi[m][::-1]
        for i in range(len(ids)):
            for k in range(2):
                assert np.array_equal(a[m][i][k], b[m][i][k])
                assert np.array_equal(a[m][i][k], split[i][k])
        assert any(not np.array_equal(a[m][i][1], other_seed[m][i][1]) for i in range(len(ids)))
        assert any(not np.array_equal(a[m][i][1], other_step[m][i][1]) for i in range(len(ids)))
        # Distinct samples get distinct masks.
        assert len({a[m][i][1].tobytes() for i in range(len(ids))}) > 1


def test_empty_batch():
    assert MultiBlockMasker(GRID).sample(0, []) == [[], []]
    assert TubeMasker(GRID).sample(0, []) == [[]]


@pytest.mark.parametrize("kwargs, match", [
    (dict(grid=(0, 14, 14)), "grid"),
    (dict(grid=(8, 14)), "grid"),
    (dict(grid=(8, 14, -1)), "grid"),
    (dict(grid=(8, 14, 14), specs=(BlockSpec(8, 0.0),)), "spatial_scale"),
    (dict(grid=(8, 14, 14), specs=(BlockSpec(8, 1.5),)), "spatial_scale"),
    (dict(grid=(8, 14, 14), specs=(BlockSpec(8, 0.15, temporal_scale=0.0),)), "temporal_scale"),
    (dict(grid=(8, 14, 14), specs=(BlockSpec(0, 0.15),)), "num_blocks"),
    (dict(grid=(8, 14, 14), specs=(BlockSpec(2, 0.15, (1.5, 0.75)),)), "aspect_ratio"),
    (dict(grid=(8, 14, 14), specs=()), "at least one"),
    (dict(grid=(8, 14, 14), seed=-1), "seed"),
    (dict(grid=(8, 14, 14), max_tries=0), "max_tries"),
])
def test_multiblock_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiBlockMasker(**kwargs)


def test_bad_sample_arguments():
    masker = MultiBlockMasker(GRID)
    with pytest.raises(ValueError, match="step"):
        masker.sample(-1, [0])
    with pytest.raises(ValueError, match="sample_ids"):
        masker.sample(0, [0, -2])
    with pytest.raises(ValueError, match="sample_ids"):
        masker.sample(0, [0.5])


# ---------------------------------------------------------------- tube masks


def test_tube_masks():
    masker = TubeMasker(GRID, mask_ratio=0.9, seed=2)
    masks = masker.sample(4, range(16))
    assert len(masks) == 1 and len(masks[0]) == 16
    for ctx, tgt in masks[0]:
        _check_partition(ctx, tgt, N)
        assert ctx.size == 160 and tgt.size == 1408  # 196 - round(0.9 * 196) = 20 visible positions x 8
        pattern = _as_bool(tgt, N).reshape(8, 196)
        assert (pattern == pattern[:1]).all()
    assert len({ctx.tobytes() for ctx, _ in masks[0]}) == 16
    again = TubeMasker(GRID, mask_ratio=0.9, seed=2).sample(4, [15, 3])[0]
    assert np.array_equal(again[0][0], masks[0][15][0]) and np.array_equal(again[1][1], masks[0][3][1])
    assert not np.array_equal(TubeMasker(GRID, seed=3).sample(4, [3])[0][0][0], masks[0][3][0])
    assert not np.array_equal(masker.sample(5, [3])[0][0][0], masks[0][3][0])
    # Position frequencies are roughly uniform: each of the 196 positions visible ~10% of the time.
    vis = np.zeros(196)
    for step in range(20):
        for ctx, _ in masker.sample(step, range(50))[0]:
            vis[ctx[ctx < 196]] += 1
    assert vis.sum() == 20 * 50 * 20 and vis.min() > 30 and vis.max() < 200


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 0.999])
def test_tube_bad_ratio(ratio):
    with pytest.raises(ValueError, match="mask_ratio"):
        TubeMasker(GRID, mask_ratio=ratio)


def test_tube_bad_grid():
    with pytest.raises(ValueError, match="grid"):
        TubeMasker((8, 0, 14))


# ---------------------------------------------------------------- packing


def _pack_loop(masks, n, truncate):
    """Straightforward construction of every PackedMasks field, one token at a time."""
    M, B = len(masks), len(masks[0])
    f = {k: [] for k in ("ctx_rows", "tgt_rows", "tgt_mask_id", "pred_ctx_slots", "pred_tgt_slots")}
    slots = []  # predictor buffer, slot by slot: ("ctx", context row index, n) or ("tgt", mask m, n)
    ctx_cu, tgt_cu, pred_cu = [0], [0], [0]
    ctx_lens, tgt_lens, pred_lens = [], [], []
    tgt_counts = [0] * M
    for m in range(M):
        cmin = min(len(c) for c, _ in masks[m])
        tmin = min(len(t) for _, t in masks[m])
        for b in range(B):
            c, t = (sorted(int(x) for x in a) for a in masks[m][b])
            if truncate:
                c, t = c[:cmin], t[:tmin]
            f["ctx_rows"] += [b * n + x for x in c]
            f["tgt_rows"] += [b * n + x for x in t]
            f["tgt_mask_id"] += [m] * len(t)
            start = pred_cu[-1]
            slots += [("ctx", len(f["ctx_rows"]) - len(c) + j, x) for j, x in enumerate(c)]
            slots += [("tgt", m, x) for x in t]
            f["pred_ctx_slots"] += list(range(start, start + len(c)))
            f["pred_tgt_slots"] += list(range(start + len(c), start + len(c) + len(t)))
            ctx_cu.append(ctx_cu[-1] + len(c))
            tgt_cu.append(tgt_cu[-1] + len(t))
            pred_cu.append(start + len(c) + len(t))
            ctx_lens.append(len(c))
            tgt_lens.append(len(t))
            pred_lens.append(len(c) + len(t))
            tgt_counts[m] += len(t)
    f.update(ctx_cu=ctx_cu, tgt_cu=tgt_cu, pred_cu=pred_cu, tgt_counts=tgt_counts, ctx_max=max(ctx_lens),
             tgt_max=max(tgt_lens), pred_max=max(pred_lens))
    # The predictor's one gather: src = [context rows (Rc) ; mask tokens], so a target slot reads row Rc + m.
    rc = len(f["ctx_rows"])
    f["pred_src_rows"] = [j if kind == "ctx" else rc + j for kind, j, _ in slots]
    f["pred_pos_rows"] = [n for _, _, n in slots]
    return f


def _random_masks(rng, M, B, n, allow_empty=True):
    masks = []
    for _ in range(M):
        per = []
        for _ in range(B):
            perm = rng.permutation(n)
            nc = int(rng.integers(0 if allow_empty else 1, n + 1))
            nt = int(rng.integers(0, n - nc + 1))
            per.append((np.sort(perm[:nc]), np.sort(perm[nc:nc + nt])))
        masks.append(per)
    return masks


def _check_packed(p: PackedMasks, masks, n, truncate):
    M, B = len(masks), len(masks[0])
    assert (p.num_tokens, p.batch_size, p.num_masks) == (n, B, M)
    ref = _pack_loop(masks, n, truncate)
    for name in ("ctx_cu", "tgt_cu", "pred_cu"):
        assert getattr(p, name).dtype == torch.int32
    for name in ("ctx_rows", "tgt_rows", "tgt_mask_id", "tgt_counts", "pred_ctx_slots", "pred_tgt_slots",
                 "pred_src_rows", "pred_pos_rows"):
        assert getattr(p, name).dtype == torch.int64, name
    for name, want in ref.items():
        got = getattr(p, name)
        if isinstance(got, torch.Tensor):
            assert got.tolist() == want, name
        else:
            assert type(got) is int and got == want, name
    # Rows sorted within each sequence; slots are a permutation laid out as [ctx ; tgt] per sequence.
    for rows, cu in ((p.ctx_rows, p.ctx_cu), (p.tgt_rows, p.tgt_cu)):
        for s in range(M * B):
            seg = rows[cu[s]:cu[s + 1]]
            assert bool((seg[1:] > seg[:-1]).all())
    slots = torch.cat([p.pred_ctx_slots, p.pred_tgt_slots])
    assert torch.equal(slots.sort().values, torch.arange(len(p.ctx_rows) + len(p.tgt_rows)))
    assert torch.equal(p.pred_cu, p.ctx_cu + p.tgt_cu)
    # The gather indices agree with the slots: slot pred_ctx_slots[j] reads context row j at token ctx_rows[j] % n,
    # slot pred_tgt_slots[i] reads mask token Rc + tgt_mask_id[i] at token tgt_rows[i] % n.
    rc = len(p.ctx_rows)
    assert torch.equal(p.pred_src_rows[p.pred_ctx_slots], torch.arange(rc))
    assert torch.equal(p.pred_src_rows[p.pred_tgt_slots], rc + p.tgt_mask_id)
    assert torch.equal(p.pred_pos_rows[p.pred_ctx_slots], p.ctx_rows % n)
    assert torch.equal(p.pred_pos_rows[p.pred_tgt_slots], p.tgt_rows % n)


@pytest.mark.parametrize("truncate", [False, True])
@pytest.mark.parametrize("M, B, n", [(1, 1, 1), (2, 3, 7), (3, 5, 13), (2, 1, 31), (1, 4, 2)])
def test_pack_matches_loop(M, B, n, truncate):
    rng = np.random.default_rng(hash((M, B, n, truncate)) % 2**32)
    for trial in range(4):
        masks = _random_masks(rng, M, B, n)
        p = pack_masks(masks, n, truncate_to_batch_min=truncate)
        _check_packed(p, masks, n, truncate)
        if truncate:
            for m in range(M):
                cmin = min(len(c) for c, _ in masks[m])
                tmin = min(len(t) for _, t in masks[m])
                for b in range(B):
                    s = m * B + b
                    assert p.ctx_cu[s + 1] - p.ctx_cu[s] == cmin and p.tgt_cu[s + 1] - p.tgt_cu[s] == tmin
                    kept = (p.ctx_rows[p.ctx_cu[s]:p.ctx_cu[s + 1]] - b * n).numpy()
                    assert np.array_equal(kept, np.sort(masks[m][b][0])[:cmin])  # the lowest indices


@pytest.mark.parametrize("truncate", [False, True])
def test_pack_real_masks(truncate):
    masks = MultiBlockMasker(GRID, seed=9).sample(3, range(5))
    p = pack_masks(masks, N, truncate_to_batch_min=truncate)
    _check_packed(p, masks, N, truncate)
    if not truncate:  # ctx and tgt rows of one batch cover every token once per mask configuration
        for m in range(2):
            rows = torch.cat([p.ctx_rows[p.ctx_cu[m * 5]:p.ctx_cu[m * 5 + 5]],
                              p.tgt_rows[p.tgt_cu[m * 5]:p.tgt_cu[m * 5 + 5]]])
            assert torch.equal(rows.sort().values, torch.arange(5 * N))
    tube = TubeMasker(GRID).sample(0, range(3))
    p = pack_masks(tube, N, truncate_to_batch_min=truncate)
    assert p.ctx_max == 160 and p.tgt_counts.tolist() == [3 * 1408]
    _check_packed(p, tube, N, truncate)


def test_pack_accepts_tensors_and_int32():
    masks = [[(torch.tensor([0, 2]), np.array([1, 3], dtype=np.int32))]]
    p = pack_masks(masks, 4)
    assert p.ctx_rows.tolist() == [0, 2] and p.tgt_rows.tolist() == [1, 3] and p.tgt_rows.dtype == torch.int64


def test_pack_bad_input():
    ok = (np.array([0, 2]), np.array([1, 3]))
    with pytest.raises(IndexError, match="outside"):
        pack_masks([[ok, (np.array([0, 4]), np.array([1]))]], 4)
    with pytest.raises(IndexError, match="outside"):
        pack_masks([[ok], [(np.array([1]), np.array([-1, 0]))]], 4)
    with pytest.raises(ValueError, match="strictly increasing"):
        pack_masks([[ok, (np.array([2, 0]), np.array([1]))]], 4)
    with pytest.raises(ValueError, match="strictly increasing"):
        pack_masks([[ok, (np.array([0]), np.array([1, 1]))]], 4)
    with pytest.raises(ValueError, match="samples"):
        pack_masks([[ok, ok], [ok]], 4)
    with pytest.raises(ValueError, match="integer"):
        pack_masks([[(np.array([0.0, 2.0]), np.array([1]))]], 4)
    with pytest.raises(ValueError, match="1-D"):
        pack_masks([[(np.array([[0, 2]]), np.array([1]))]], 4)
    with pytest.raises(ValueError, match="pair"):
        pack_masks([[(np.array([0]),)]], 4)
    with pytest.raises(ValueError, match="num_tokens"):
        pack_masks([[ok]], 0)
    with pytest.raises(ValueError, match="non-empty"):
        pack_masks([], 4)


def test_pack_boundary_between_sequences_may_decrease():
    # A sequence ending high followed by one starting low is fine (sortedness is per sequence).
    masks = [[(np.array([5, 6]), np.array([0])), (np.array([0, 1]), np.array([6]))]]
    p = pack_masks(masks, 7)
    assert p.ctx_rows.tolist() == [5, 6, 7, 8]


def test_default_specs():
    assert DEFAULT_SPECS == (SHORT_RANGE, LONG_RANGE)
    assert (SHORT_RANGE.num_blocks, SHORT_RANGE.spatial_scale) == (8, 0.15)
    assert (LONG_RANGE.num_blocks, LONG_RANGE.spatial_scale) == (2, 0.7)


def test_to_carries_the_predictor_gather_indices():
    masks = MultiBlockMasker((2, 4, 4), specs=(BlockSpec(2, 0.3),), seed=4).sample(0, range(3))
    p = pack_masks(masks, 32)
    q = p.to(torch.device("cpu"))
    for name in ("pred_src_rows", "pred_pos_rows"):
        assert torch.equal(getattr(q, name), getattr(p, name)), name
    # Every field is required: a PackedMasks is always complete.
    vals = {f: getattr(p, f) for f in ("num_tokens", "batch_size", "num_masks", "ctx_rows", "ctx_cu", "ctx_max",
                                       "tgt_rows", "tgt_cu", "tgt_max", "tgt_mask_id", "tgt_counts", "pred_cu",
                                       "pred_max", "pred_ctx_slots", "pred_tgt_slots")}
    with pytest.raises(TypeError, match="pred_src_rows"):
        PackedMasks(**vals)
