"""Bootstrap confidence intervals: the benchmark's claims are comparisons, so every mean carries one.

Percentile bootstrap with a fixed seed (reports are reproducible): resample the per-case
values with replacement ``n_boot`` times, take the mean of each resample, and report the
``alpha/2`` and ``1 − alpha/2`` quantiles. Paired deltas resample case-wise differences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A mean with its bootstrap interval over ``n`` values (all None when there are none)."""

    mean: float | None
    lo: float | None
    hi: float | None
    n: int

    def to_dict(self) -> dict:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "n": self.n}

    def fmt(self, digits: int = 2) -> str:
        if self.mean is None:
            return "–"
        return f"{self.mean:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"

    def overlaps(self, other: Interval) -> bool:
        """Whether the two intervals share any value (None intervals overlap everything)."""
        if None in (self.lo, self.hi, other.lo, other.hi):
            return True
        return not (self.hi < other.lo or other.hi < self.lo)  # type: ignore[operator]


def bootstrap_ci(values: Sequence[float | None], n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> Interval:
    """Mean and percentile-bootstrap interval of the non-None values."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if len(x) == 0:
        return Interval(None, None, None, 0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    means = x[idx].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return Interval(float(x.mean()), float(lo), float(hi), len(x))


def paired_delta(a: Sequence[float | None], b: Sequence[float | None], n_boot: int = 2000, alpha: float = 0.05,
                 seed: int = 0) -> Interval:
    """Mean of b − a over the pairs where both are known, with a bootstrap interval over pairs."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    d = [y - x for x, y in zip(a, b) if x is not None and y is not None]
    return bootstrap_ci(d, n_boot=n_boot, alpha=alpha, seed=seed)


def wilson(k: int, n: int, z: float = 1.96) -> list[float] | None:
    """Wilson score interval (95 % by default) of a proportion k/n, rounded to 4 digits; None when n = 0.

    Used for rates near 0 or 1 (false rejects, read accuracy), where a bootstrap interval collapses to a point.
    """
    if n == 0:
        return None
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * float(np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / den
    return [round(max(0.0, mid - half), 4), round(min(1.0, mid + half), 4)]
