"""How many steps of a run fit in a wall-clock budget, from a short calibration run of the same kind.

    cost = RunCost.measure(step_seconds, wall, warmup)   # one calibration run
    steps = cost.steps_within(budget_seconds)            # the largest n whose run fits

A run of n steps is modelled as it is timed (the whole call, as the quality benchmark times its rows):
`fixed + n x step`. `fixed` is what does not grow with the steps: building the model, starting the loader, the first
steps' extra cost, the last checkpoint, the plots, and work done once whatever the step count (the supervised
ceiling's head phase on cached features). The step cost is the MEAN of the steady steps (after the first `warmup`),
not the median: the run's time is the sum of its steps, slow ones (a log write, a late batch) included. `fixed` is
then the rest of the calibration's wall time, so a short budget is not overrun by start-up costs that a per-step
estimate alone spreads over no steps.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence

from vjepa_fast.config import ConfigError


@dataclass(frozen=True)
class RunCost:
    fixed: float  # seconds a run costs besides its steady steps
    step: float  # seconds of a steady step

    def seconds(self, steps: int) -> float:
        """The modelled wall time of a run of `steps`."""
        return self.fixed + steps * self.step

    def steps_within(self, budget: float) -> int:
        """The largest step count whose run fits in `budget` seconds; at least 1 (a run has a step)."""
        if not (self.step > 0 and budget > 0):
            raise ConfigError(f"wall budget: needs positive step cost and budget, got {self} and {budget} s")
        lo, hi = 1, max(2, int(budget / self.step) + 2)
        while lo < hi:  # seconds() only grows with the steps: bisect for the last one that fits (no rounding slip)
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.seconds(mid) <= budget else (lo, mid - 1)
        return lo

    @staticmethod
    def measure(step_seconds: Sequence[float], wall: float, warmup: int = 4) -> RunCost:
        """The cost of a calibration run that took `wall` seconds and whose steps took `step_seconds`: the steady
        steps averaged (the first `warmup` left out), the fixed part the rest of `wall` (never below 0)."""
        if len(step_seconds) <= warmup:
            raise ConfigError(f"wall budget: a calibration needs more than {warmup} steps, got {len(step_seconds)} "
                              f"(run more calibration steps)")
        step = statistics.fmean(step_seconds[warmup:])
        return RunCost(max(0.0, wall - len(step_seconds) * step), step)
