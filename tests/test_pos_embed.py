"""The fixed 3D sin-cos position table and its trilinear resizing."""
import math

import pytest
import torch

from vjepa_fast.models.pos_embed import interpolate_pos, sincos_3d


def _table_by_loop(grid, dim):
    """Straight from docs/recipe.md: per axis c = 2 ceil(dim / 6) channels, c/2 sines then c/2 cosines."""
    T, H, W = grid
    c = 2 * math.ceil(dim / 6)
    rows = []
    for t in range(T):
        for h in range(H):
            for w in range(W):
                row = []
                for p in (t, h, w):
                    freqs = [1.0 / 10000 ** (k / (c / 2)) for k in range(c // 2)]
                    row += [math.sin(p * f) for f in freqs] + [math.cos(p * f) for f in freqs]
                rows.append(row[:dim])
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("grid,dim", [((2, 3, 4), 96), ((3, 2, 5), 100), ((1, 1, 1), 7), ((4, 1, 3), 1), ((2, 7, 2), 13)])
def test_table_matches_loop(grid, dim):
    table = sincos_3d(grid, dim)
    assert table.dtype == torch.float32 and table.shape == (math.prod(grid), dim)
    torch.testing.assert_close(table.double(), _table_by_loop(grid, dim), atol=1e-6, rtol=0)


def test_token_order_is_t_h_w():
    # Tokens sharing t have the same time channels; the time block is the first 2*ceil(D/6) channels.
    grid, dim = (3, 4, 5), 60
    c = 2 * math.ceil(dim / 6)
    table = sincos_3d(grid, dim).reshape(*grid, dim)
    assert torch.equal(table[:, :1, :1, :c].expand(3, 4, 5, c), table[..., :c])
    assert torch.equal(table[:1, :, :1, c:2 * c].expand(3, 4, 5, c), table[..., c:2 * c])
    assert torch.equal(table[:1, :1, :, 2 * c:].expand(3, 4, 5, dim - 2 * c), table[..., 2 * c:])


def test_interpolate_same_grid_is_identity():
    table = torch.randn(2 * 3 * 5, 11)
    assert torch.equal(interpolate_pos(table, (2, 3, 5), (2, 3, 5)), table)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_interpolate_doubling_keeps_corners(dtype):
    grid = (3, 4, 5)
    table = torch.randn(math.prod(grid), 9, dtype=dtype)
    out = interpolate_pos(table, grid, (6, 8, 10))
    assert out.shape == (6 * 8 * 10, 9) and out.dtype == dtype
    src, dst = table.reshape(3, 4, 5, 9), out.reshape(6, 8, 10, 9)
    for t in (0, -1):
        for h in (0, -1):
            for w in (0, -1):
                torch.testing.assert_close(dst[t, h, w], src[t, h, w])
    # Interior values are convex combinations: they stay inside the source's range per channel.
    assert (out.float() >= table.float().amin(0) - 1e-6).all() and (out.float() <= table.float().amax(0) + 1e-6).all()


def test_interpolate_single_frame_repeats_over_time():
    # An image (one time step) stretched to 4 time steps: every step equals the single frame's table.
    table = torch.randn(1 * 3 * 3, 6)
    out = interpolate_pos(table, (1, 3, 3), (4, 3, 3)).reshape(4, 9, 6)
    for t in range(4):
        torch.testing.assert_close(out[t], table)


def test_interpolate_matches_linear_along_one_axis():
    # Along one axis with align_corners=False and factor 2, out[j] samples src at (j + 0.5) / 2 - 0.5 (clamped).
    src = torch.randn(1, 1, 5, 3, dtype=torch.float64)
    out = interpolate_pos(src.reshape(5, 3), (1, 1, 5), (1, 1, 10)).reshape(10, 3)
    for j in range(10):
        x = min(max((j + 0.5) / 2 - 0.5, 0.0), 4.0)
        i0 = int(math.floor(x))
        i1 = min(i0 + 1, 4)
        expect = (1 - (x - i0)) * src[0, 0, i0] + (x - i0) * src[0, 0, i1]
        torch.testing.assert_close(out[j], expect)


def test_bad_inputs():
    with pytest.raises(ValueError, match="grid"):
        sincos_3d((2, 0, 3), 8)
    with pytest.raises(ValueError, match="grid"):
        sincos_3d((2, 3), 8)
    with pytest.raises(ValueError, match="dim"):
        sincos_3d((2, 3, 4), 0)
    with pytest.raises(ValueError, match="table"):
        interpolate_pos(torch.randn(23, 4), (2, 3, 4), (4, 6, 8))
