"""The global batch shared by tests/test_sigreg.py and tests/sigreg_worker.py (so 1 and 2 processes see the same rows)."""
import torch

ROWS, DIM = 301, 24  # an odd row count: the two ranks hold different numbers of rows, as packed context tokens do


def global_rows() -> torch.Tensor:
    gen = torch.Generator().manual_seed(11)
    return torch.randn(ROWS, DIM, generator=gen) * torch.linspace(0.3, 2.0, DIM)  # anisotropic: a non-zero gradient


def rank_slices(world: int) -> list[slice]:
    """Uneven contiguous parts: rank 0 holds 120 rows of the 301 with 2 processes."""
    if world == 1:
        return [slice(0, ROWS)]
    assert world == 2
    return [slice(0, 120), slice(120, ROWS)]
