"""The recipe's schedules (docs/recipe.md) as pure functions: learning rate, weight decay, EMA momentum.

The original code steps its learning-rate and weight-decay schedulers *before* each step's forward: the scheduler's
counter is incremented first, so step s (from 0) runs at the value for count k = s + 1 (step 0 with a warm-up of W
steps already at start_lr + (lr - start_lr) / W). The lr and wd functions below take that count k; `Schedules` passes
k = step + 1. The EMA momentum is taken after the step from a sequence that starts at its first value, so it is a
function of the step s itself.

Schedules span `total = steps * schedule_scale` steps (the reference stretches them by 1.25), so the run ends before
the cosine reaches its floor and the EMA momentum reaches 1.
"""
from __future__ import annotations

import math


def lr_at(k: int, warmup: int, total: float, start_lr: float, lr: float, final_lr: float) -> float:
    """Linear warm-up start_lr -> lr while k < `warmup`, then cosine lr -> final_lr over the rest of `total`."""
    if k < warmup:
        return start_lr + (lr - start_lr) * k / warmup
    progress = min(1.0, (k - warmup) / max(1.0, total - warmup))
    return final_lr + (lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def wsd_lr_at(k: int, warmup: int, steps: int, cooldown: int, start_lr: float, lr: float,
              final_lr: float) -> float:
    """Linear warm-up start_lr -> lr while k < `warmup`, constant lr, then linear lr -> final_lr over the last
    `cooldown` counts up to `steps` (V-JEPA 2's recipe: warm-up, a long constant phase, a final cool-down)."""
    if k < warmup:
        return start_lr + (lr - start_lr) * k / warmup
    cool_start = steps - cooldown
    if cooldown <= 0 or k < cool_start:
        return lr
    return lr + (final_lr - lr) * min(1.0, (k - cool_start) / cooldown)


def wd_at(k: int, total: float, wd: float, final_wd: float) -> float:
    """Cosine from wd up (or down) to final_wd over `total` counts."""
    progress = min(1.0, k / max(1.0, total))
    return final_wd + (wd - final_wd) * 0.5 * (1.0 + math.cos(math.pi * progress))


def ema_at(step: int, total: float, start: float, end: float) -> float:
    """Linear from start to end over `total` steps."""
    return start + (end - start) * min(1.0, step / max(1.0, total))


class Schedules:
    """All three for a given optimisation config and run length, at step s (lr and wd at count k = s + 1)."""

    def __init__(self, optim_cfg, steps: int):
        self.o = optim_cfg
        self.steps = steps
        self.total = steps * optim_cfg.schedule_scale

    def __call__(self, step: int) -> dict[str, float]:
        o = self.o
        k = step + 1  # the original increments its lr / wd schedulers before the step's forward
        return {
            "lr": (wsd_lr_at(k, o.warmup_steps, self.steps, o.cooldown_steps, o.start_lr, o.lr, o.final_lr)
                   if o.lr_schedule == "wsd"
                   else lr_at(k, o.warmup_steps, self.total, o.start_lr, o.lr, o.final_lr)),
            "wd": wd_at(k, self.total, o.weight_decay, o.final_weight_decay),
            "ema_momentum": ema_at(step, self.total, o.ema_start, o.ema_end),
        }
