"""The recipe's schedules (docs/recipe.md) as pure functions of the step: learning rate, weight decay, EMA momentum.

Schedules span `total = steps * schedule_scale` steps (the reference stretches them by 1.25), so the run ends before
the cosine reaches its floor and the EMA momentum reaches 1.
"""
from __future__ import annotations

import math


def lr_at(step: int, warmup: int, total: float, start_lr: float, lr: float, final_lr: float) -> float:
    """Linear warmup start_lr -> lr over `warmup` steps, then cosine lr -> final_lr over the rest of `total`."""
    if step < warmup:
        return start_lr + (lr - start_lr) * step / warmup
    progress = min(1.0, (step - warmup) / max(1.0, total - warmup))
    return final_lr + (lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def wsd_lr_at(step: int, warmup: int, steps: int, cooldown: int, start_lr: float, lr: float,
              final_lr: float) -> float:
    """Linear warm-up start_lr -> lr, constant lr, then linear lr -> final_lr over the last `cooldown` of `steps`
    (V-JEPA 2's recipe: warm-up, a long constant phase, a final cool-down)."""
    if step < warmup:
        return start_lr + (lr - start_lr) * step / warmup
    cool_start = steps - cooldown
    if cooldown <= 0 or step < cool_start:
        return lr
    return lr + (final_lr - lr) * min(1.0, (step - cool_start + 1) / cooldown)


def wd_at(step: int, total: float, wd: float, final_wd: float) -> float:
    """Cosine from wd up (or down) to final_wd over `total` steps."""
    progress = min(1.0, step / max(1.0, total))
    return final_wd + (wd - final_wd) * 0.5 * (1.0 + math.cos(math.pi * progress))


def ema_at(step: int, total: float, start: float, end: float) -> float:
    """Linear from start to end over `total` steps."""
    return start + (end - start) * min(1.0, step / max(1.0, total))


class Schedules:
    """All three for a given optimisation config and run length."""

    def __init__(self, optim_cfg, steps: int):
        self.o = optim_cfg
        self.steps = steps
        self.total = steps * optim_cfg.schedule_scale

    def __call__(self, step: int) -> dict[str, float]:
        o = self.o
        return {
            "lr": (wsd_lr_at(step, o.warmup_steps, self.steps, o.cooldown_steps, o.start_lr, o.lr, o.final_lr)
                   if o.lr_schedule == "wsd"
                   else lr_at(step, o.warmup_steps, self.total, o.start_lr, o.lr, o.final_lr)),
            "wd": wd_at(step, self.total, o.weight_decay, o.final_weight_decay),
            "ema_momentum": ema_at(step, self.total, o.ema_start, o.ema_end),
        }
