"""How many steps of a run fit in a wall-clock budget, from a short calibration run of the same kind.

    cost = RunCost.measure(step_seconds, wall, head_fraction, warmup)   # one calibration run
    steps = cost.steps_within(budget_seconds)                           # the largest n whose run fits

A run of n steps is modelled as it is timed (the whole call, as the quality benchmark times its rows):
`fixed + head x h + (n - head) x step`, with `head = int(n x head_fraction)` steps of a cheaper first phase (the
supervised ceiling's head-only steps; none for pretraining). `fixed` is what does not grow with the steps: building
the model, starting the loader, the first steps' extra cost, the last checkpoint, the plots. Each phase's step cost is
the MEAN of its steady steps (after its first `warmup`), not the median: the run's time is the sum of its steps, slow
ones (a log write, a late batch) included. `fixed` is then the rest of the calibration's wall time, so a short budget
is not overrun by start-up costs that a per-step estimate alone spreads over no steps.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence

from vjepa_fast.config import ConfigError


@dataclass(frozen=True)
class RunCost:
    fixed: float  # seconds a run costs besides its steady steps
    step: float  # seconds of a steady step (of the last phase)
    head: float = 0.0  # seconds of a steady step of the first phase
    head_fraction: float = 0.0  # that phase's share of the steps: int(n x head_fraction) of n

    def split(self, steps: int) -> tuple[int, int]:
        """(first-phase steps, other steps) of a run of `steps`, as the run splits them."""
        head = int(steps * self.head_fraction)
        return head, steps - head

    def seconds(self, steps: int) -> float:
        """The modelled wall time of a run of `steps`."""
        head, rest = self.split(steps)
        return self.fixed + head * self.head + rest * self.step

    def steps_within(self, budget: float) -> int:
        """The largest step count whose run fits in `budget` seconds; at least 1 (a run has a step)."""
        if not (self.step > 0 and self.head >= 0 and budget > 0):
            raise ConfigError(f"wall budget: needs positive step cost and budget, got {self} and {budget} s")
        lo, hi = 1, max(2, int(budget / min(c for c in (self.step, self.head) if c > 0)) + 2)
        while lo < hi:  # seconds() only grows with the steps: bisect for the last one that fits
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.seconds(mid) <= budget else (lo, mid - 1)
        return lo

    @staticmethod
    def measure(step_seconds: Sequence[float], wall: float, head_fraction: float = 0.0, warmup: int = 4) -> RunCost:
        """The cost of a calibration run that took `wall` seconds and whose steps took `step_seconds`, split into
        phases as a run of that length splits them: each phase's steady steps averaged (its first `warmup` left
        out), the fixed part the rest of `wall` (never below 0)."""
        head, rest = RunCost(0.0, 0.0, 0.0, head_fraction).split(len(step_seconds))
        if rest <= warmup or (head_fraction > 0 and head <= warmup):
            raise ConfigError(f"wall budget: each calibration phase needs more than {warmup} steps, got {head} and "
                              f"{rest} (run more calibration steps)")
        phases = (step_seconds[:head], step_seconds[head:])
        means = [statistics.fmean(p[warmup:]) if p else 0.0 for p in phases]
        fixed = max(0.0, wall - sum(len(p) * m for p, m in zip(phases, means)))
        return RunCost(fixed, step=means[1], head=means[0], head_fraction=head_fraction)
