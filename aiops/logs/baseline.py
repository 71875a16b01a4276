"""A small streaming baseline for per-step line counts: EWMA mean and variance.

Counts of one template per step are sparse (most steps are zero for most templates), so
updates are lazy: a series is advanced only when it has lines or is being watched, and the
zero steps in between are applied in one go (:meth:`RateBaseline.skip`).

The deviation test is Poisson-aware: the spread used is ``sqrt(max(var, mean, floor))``, so a
template that logs two lines a minute is not judged by a variance estimated from a handful of
zeros and ones (Lambert, "Zero-inflated Poisson regression", 1992, for why counts need it).

>>> b = RateBaseline()
>>> for _ in range(40):
...     b.update(2.0)
>>> round(b.mean, 2), b.z(2.0) < 1, b.z(12.0) > 4
(2.0, True, True)
"""

from __future__ import annotations

import math


class RateBaseline:
    """EWMA mean and variance of a count per step, with lazy zero-steps.

    ``alpha`` is the EWMA weight (0.05: a memory of about 20 steps, 5 minutes at 15 s).
    """

    __slots__ = ("alpha", "mean", "var", "n")

    def __init__(self, alpha: float = 0.05, mean: float = 0.0, var: float = 0.0, n: int = 0) -> None:
        self.alpha = alpha
        self.mean = mean
        self.var = var
        self.n = n

    def update(self, x: float) -> None:
        """Learn one step's count (the first step sets the level)."""
        if self.n == 0:
            self.mean = x
            self.var = 0.0
        else:
            diff = x - self.mean
            incr = self.alpha * diff
            self.mean += incr
            self.var = (1.0 - self.alpha) * (self.var + diff * incr)
        self.n += 1

    def skip(self, steps: int) -> None:
        """Learn ``steps`` steps with no lines at all."""
        if steps <= 0:
            return
        if self.n == 0:
            self.n = steps
            return
        # After ~20/alpha zero steps the level is zero for every practical purpose.
        for _ in range(min(steps, int(20 / self.alpha))):
            self.update(0.0)
        self.n += steps - min(steps, int(20 / self.alpha))
        if steps > int(20 / self.alpha):
            self.mean = 0.0
            self.var = 0.0

    def spread(self, floor: float = 0.25) -> float:
        """Standard deviation used for the deviation test (Poisson floor)."""
        return math.sqrt(max(self.var, self.mean, floor))

    def z(self, x: float) -> float:
        """How many spreads ``x`` lies above the mean."""
        return (x - self.mean) / self.spread()

    def to_list(self) -> list[float]:
        return [self.mean, self.var, float(self.n)]

    @classmethod
    def from_list(cls, data: list[float], alpha: float = 0.05) -> RateBaseline:
        return cls(alpha=alpha, mean=float(data[0]), var=float(data[1]), n=int(data[2]))
