"""The collapse watch: the spread of the target features and of the predictions across tokens, per logged step.

A JEPA collapses when its encoder maps every token to the same vector: the loss can then fall while the features carry
nothing. A partial collapse keeps one vector per clip (the clip's background, say) and loses what differs between the
tokens of a clip (where the object is, how it moves), which a spread over the whole batch hides: so `target_std` is
the spread across the tokens of each clip, averaged over clips, and `pred_std` the spread across all predicted rows.
Both are per channel, averaged over channels. The model stashes them each step as one small detached device tensor
(`feature_stats`); the trainer reads it only on logged steps, so the watch adds no host synchronisation to the others.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch


@torch.no_grad()
def token_std(x: torch.Tensor) -> torch.Tensor:
    """x [..., tokens, channels] -> the standard deviation across tokens, averaged over channels and any leading
    dimension (fp32, on x's device)."""
    return x.float().std(dim=-2).mean()


class CollapseWatch:
    """Turns a model's `feature_stats` into metrics.jsonl fields and warns once when the target's spread falls under
    `threshold` (0 disables the warning)."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.warned = False

    def fields(self, stats: Optional[torch.Tensor], step: int) -> dict:
        if stats is None:  # a model without a target encoder (the VideoMAE baseline)
            return {}
        target_std, pred_std = (float(v) for v in stats.tolist())
        if not self.warned and target_std < self.threshold:
            self.warned = True
            warnings.warn(f"step {step}: target features' std across the tokens of a clip is {target_std:.4g}, under "
                          f"train.collapse_std={self.threshold}: the representation may be collapsing")
        return {"target_std": target_std, "pred_std": pred_std}
