"""The collapse watch: the spread of the target features and of the predictions across tokens, and the effective
rank of the target features and of the context encoder's output, per logged step.

A JEPA collapses when its encoder maps every token to the same vector: the loss can then fall while the features carry
nothing. A partial collapse keeps one vector per clip (the clip's background, say) and loses what differs between the
tokens of a clip (where the object is, how it moves), which a spread over the whole batch hides: so `target_std` is
the spread across the tokens of each clip, averaged over clips, and `pred_std` the spread across all predicted rows.
Both are per channel, averaged over channels. The model stashes them each step as one small detached device tensor
(`feature_stats`); the trainer reads it only on logged steps, so the watch adds no host synchronisation to the others.

A collapse into a few directions (dimensional collapse) keeps the spread and loses the rank: `target_rank` and
`context_rank` are RankMe (Garrido et al., ICML 2023), the exponential of the entropy of the normalised singular
values of the features, on a fixed subsample of `RANK_ROWS` token rows taken at evenly spaced positions of the step's
rows (deterministic, every clip and mask represented). 1 means every token on one line; the most is min(rows, width).
The model stashes the two subsamples each step (one small gather, no sync); the spectrum is computed on logged steps
only. The model's side, `token_std` and `rank_rows`, is models/collapse_stats.py. Unlike feature_stats.py's
effective_rank (the centred features' squared spectrum, a probe-time statistic), RankMe takes the raw features and
plain singular values, as its paper does.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import torch


@torch.no_grad()
def rankme(x: torch.Tensor) -> torch.Tensor:
    """x [n, D] -> RankMe, exp(-sum p log p) with p the singular values over their sum (0-d fp64, on x's device).

    The singular values come from the eigenvalues of the smaller Gram matrix in fp64 (cheaper than an SVD; fp64 keeps
    the small ones that fp32's squared spectrum would lose). Eigenvalues within the Gram matrix's round-off (size x
    eps x the largest) count as zero: their square roots would otherwise add ~1e-6 to a rank-1 input's rank."""
    f = x.double()
    gram = f @ f.T if f.shape[0] <= f.shape[1] else f.T @ f
    eig = torch.linalg.eigvalsh(gram)
    floor = eig[-1] * gram.shape[0] * torch.finfo(torch.float64).eps
    s = torch.where(eig > floor, eig, torch.zeros_like(eig)).sqrt()
    p = s / s.sum().clamp(min=1e-300)
    return torch.exp(-(p * torch.log(p.clamp(min=1e-300))).sum())


class CollapseWatch:
    """Turns a model's `feature_stats` and rank subsamples into metrics.jsonl fields. Warns once when the target's
    spread falls under `threshold`, or when the target's or the context's effective rank falls under `rank_per_clip`
    x `clips`, the clips the subsamples come from: one direction per clip is the partial collapse the spread can miss
    (0 disables either warning)."""

    def __init__(self, threshold: float, rank_per_clip: float = 0.0, clips: int = 1):
        self.threshold, self.rank_per_clip, self.clips = threshold, rank_per_clip, clips
        self.rank_threshold = rank_per_clip * clips
        self.warned = False

    @staticmethod
    def ranks(rows: Optional[tuple[torch.Tensor, torch.Tensor]]) -> Optional[torch.Tensor]:
        """(target rows, context rows) -> [target rank, context rank] on the device (called on logged steps)."""
        return None if rows is None else torch.stack([rankme(r) for r in rows])

    def fields(self, stats: Optional[torch.Tensor], step: int, ranks: Optional[torch.Tensor] = None) -> dict:
        if stats is None:  # a model without a target encoder (the VideoMAE baseline)
            return {}
        target_std, pred_std = (float(v) for v in stats.tolist())
        out = {"target_std": target_std, "pred_std": pred_std}
        if ranks is not None:
            out["target_rank"], out["context_rank"] = (float(v) for v in ranks.tolist())
        low = [(k, out[k]) for k in ("target_rank", "context_rank") if out.get(k, math.inf) < self.rank_threshold]
        if not self.warned and target_std < self.threshold:
            self.warned = True
            warnings.warn(f"step {step}: target features' std across the tokens of a clip is {target_std:.4g}, under "
                          f"train.collapse_std={self.threshold}: the representation may be collapsing")
        elif not self.warned and low:
            self.warned = True
            name, value = low[0]
            warnings.warn(f"step {step}: {name.removesuffix('_rank')} features' effective rank (RankMe) is "
                          f"{value:.3g}, under train.collapse_rank={self.rank_per_clip:g} per clip x {self.clips} "
                          f"clips: the representation may be collapsing into a few directions (loss.sigreg guards "
                          f"against it)")
        return out
