"""The feature statistics a model reports each step for the collapse watch (run/collapse.py, which explains them):
the spread of features across tokens and the evenly spaced row subsample RankMe is computed on. They sit with the
models because the model computes them inside its forward; the trainer reads them only on logged steps."""
from __future__ import annotations

import torch


@torch.no_grad()
def token_std(x: torch.Tensor) -> torch.Tensor:
    """x [..., tokens, channels] -> the standard deviation across tokens, averaged over channels and any leading
    dimension (fp32, on x's device)."""
    return x.float().std(dim=-2).mean()


RANK_ROWS = 256  # token rows per RankMe estimate: enough for a tiny model's width, cheap (one 256 x 256 eigenproblem)


@torch.no_grad()
def rank_rows(x: torch.Tensor, n: int = RANK_ROWS) -> torch.Tensor:
    """x [R, D] -> a detached copy of n rows at evenly spaced positions (all rows when R <= n); no host sync."""
    idx = torch.linspace(0, x.shape[0] - 1, min(n, x.shape[0]), device=x.device).round().long()
    return x.detach().index_select(0, idx)
