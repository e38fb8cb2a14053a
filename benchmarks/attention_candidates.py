"""Block-size candidates for the Triton varlen attention kernels, per kernel and head-dim class, shared by the
offline compile check (`aot_compile_attention.py`) and the on-GPU tuner (`tune_attention.py`).

Each kernel holds one tile and streams the other: `fwd` and `dq` hold BLOCK_M query rows and stream BLOCK_N keys,
`dkdv` holds BLOCK_N keys and streams BLOCK_M query rows. The lists span tile shape, warps (4 = one warpgroup,
8 = two) and pipeline depth around the shipped defaults (listed first). Every entry compiled for sm_90 (bf16, ViT
strides) with no register spills and fits in shared memory (`aot_compile_attention.py`, Triton 3.8); candidates that
spilled were dropped here rather than spending GPU time on them.
"""

import torch


def _lens(n: int, lo: int, hi: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, (n,), generator=g).tolist()


# The packed ViT-L/16 batches of one card (24 clips of 1568 tokens), shared by the benchmark and the tuner:
# the context encoder's 48 sequences (half short-range masks, half long-range), the predictor's and the target's.
CONTEXT_LENS = _lens(24, 392, 784, 0) + _lens(24, 112, 448, 1)
PREDICTOR_LENS = [1568] * 48
DENSE_LENS = [1568] * 24

HEAD_DIMS = (24, 64, 80)  # one per padded class: 32 (predictor), 64 (ViT-L/B), 128 (ViT-H's 80, also 96/128)


def _c(m: int, n: int, warps: int, stages: int, **switches: int) -> dict:
    return {"BLOCK_M": m, "BLOCK_N": n, "num_warps": warps, "num_stages": stages, **switches}


def _poly(m: int, n: int, warps: int, stages: int, quarter: bool = False) -> dict:
    """A forward candidate with half (or a quarter) of each key block's exponentials on the FMA units (EXP2_POLY,
    see docs/attention.md "Small head dims"): where the special-function units bound the forward (head dim <= 64)."""
    return _c(m, n, warps, stages, EXP2_POLY=2 if quarter else 1)


CANDIDATES = {
    "fwd": {
        24: [_c(128, 32, 4, 3), _c(128, 64, 8, 3), _c(128, 128, 8, 2), _c(128, 128, 8, 3), _c(128, 64, 4, 3),
             _c(64, 64, 4, 3),
             _c(128, 32, 4, 3), _c(128, 64, 8, 4),
             _poly(128, 64, 4, 3), _poly(128, 64, 8, 3), _poly(128, 128, 8, 2), _poly(128, 32, 4, 3),
             _poly(64, 64, 4, 3), _poly(128, 64, 8, 3, quarter=True), _poly(128, 128, 8, 2, quarter=True)],
        64: [_c(128, 64, 8, 3), _c(128, 64, 8, 4), _c(128, 32, 8, 3), _c(64, 64, 8, 3), _c(64, 64, 4, 3),
             _c(128, 32, 4, 3), _c(128, 128, 8, 1), _poly(64, 64, 4, 3), _poly(128, 64, 8, 3),
             _poly(64, 64, 4, 3, quarter=True)],
        80: [_c(128, 64, 8, 2), _c(128, 32, 8, 3), _c(64, 64, 8, 3), _c(64, 32, 4, 2)],
    },
    "dkdv": {
        24: [_c(32, 128, 8, 3), _c(64, 128, 8, 2), _c(32, 64, 4, 3), _c(16, 128, 8, 3), _c(16, 64, 4, 3)],
        64: [_c(32, 128, 8, 3), _c(32, 128, 8, 2), _c(16, 128, 8, 3), _c(16, 128, 8, 2), _c(32, 64, 8, 3),
             _c(16, 64, 4, 3)],
        80: [_c(32, 64, 8, 2), _c(16, 128, 8, 3), _c(16, 128, 8, 2), _c(16, 64, 8, 3)],
    },
    "dq": {
        24: [_c(128, 64, 8, 3), _c(128, 32, 8, 3), _c(64, 64, 4, 3), _c(128, 128, 8, 2), _c(64, 32, 4, 3)],
        64: [_c(128, 64, 8, 3), _c(128, 32, 8, 3), _c(64, 64, 8, 3), _c(64, 64, 4, 3), _c(64, 32, 4, 3)],
        80: [_c(128, 32, 8, 3), _c(128, 32, 8, 2), _c(64, 32, 8, 3), _c(64, 32, 4, 3)],
    },
}
