"""Error bars: 95 % bootstrap intervals for the book's tables (chapters 01, 04-07).

A toy run measures 32 or 64 samples; a claim ("zero convolutions beat Gaussian
connectors") compares two such means. Is the difference larger than the noise? The
bootstrap answers without assuming a distribution: resample what was measured, with
replacement, recompute the statistic many times, and read the 2.5 % and 97.5 %
quantiles.

* :func:`bootstrap_ci` for one set of per-sample values (sampling seeds);
* hierarchical resampling when values come in groups, one per **training seed**:
  resample the seeds, then the samples within each chosen seed. Three seeds of 64
  samples are not 192 independent samples, and the interval then says so;
* :func:`compare` for a claim "a > b": the interval of the difference of the means,
  and whether it excludes 0 (``supported``). A claim its interval does not support is
  reported as not supported, whatever the means say.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

Values = Sequence[float] | np.ndarray
Groups = Sequence[Values]


@dataclass(frozen=True)
class Interval:
    """A statistic and its bootstrap interval."""

    value: float
    low: float
    high: float
    level: float = 0.95
    n: int = 0  #: samples (or groups, for grouped data) behind the value

    def __str__(self) -> str:
        return f"{self.value:.2f} [{self.low:.2f}, {self.high:.2f}]"

    def excludes(self, x: float) -> bool:
        return not self.low <= x <= self.high

    def to_dict(self) -> dict:
        return asdict(self)


def _as_groups(values: Values | Groups) -> list[np.ndarray]:
    """A flat sequence is one group; a sequence of sequences is one group per training seed."""
    if len(values) == 0:
        raise ValueError("values: expected at least one measurement, got none")
    first = values[0]
    if np.ndim(first) == 0:
        groups = [np.asarray(values, dtype=float)]
    else:
        groups = [np.asarray(g, dtype=float) for g in values]
    for k, g in enumerate(groups):
        if g.ndim != 1 or len(g) == 0:
            raise ValueError(f"values[{k}]: expected a non-empty 1-D sequence of numbers, got shape {g.shape}")
        if not np.all(np.isfinite(g)):
            raise ValueError(f"values[{k}]: expected finite numbers, got {int((~np.isfinite(g)).sum())} NaN/inf")
    return groups


def _resample(groups: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    if len(groups) == 1:
        g = groups[0]
        return g[rng.integers(0, len(g), len(g))]
    picked = rng.integers(0, len(groups), len(groups))
    return np.concatenate([groups[k][rng.integers(0, len(groups[k]), len(groups[k]))] for k in picked])


def bootstrap_ci(values: Values | Groups, statistic: Callable[[np.ndarray], float] = np.mean, *,
                 level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Interval:
    """``statistic`` of ``values`` with its percentile bootstrap interval.

    ``values`` is one sequence (samples of one run) or a list of sequences (one per
    training seed: resampled hierarchically, seeds first).
    """
    if not 0 < level < 1:
        raise ValueError(f"level: expected a value in (0, 1), got {level}")
    groups = _as_groups(values)
    rng = np.random.default_rng(seed)
    stats = np.array([statistic(_resample(groups, rng)) for _ in range(n_boot)])
    tail = (1 - level) / 2
    lo, hi = np.quantile(stats, [tail, 1 - tail])
    n = len(groups) if len(groups) > 1 else len(groups[0])
    return Interval(float(statistic(np.concatenate(groups))), float(lo), float(hi), level, n)


@dataclass(frozen=True)
class Comparison:
    """``mean(a) − mean(b)`` with its interval; ``supported`` when the interval is above 0."""

    a: Interval
    b: Interval
    difference: Interval

    @property
    def supported(self) -> bool:
        return self.difference.low > 0

    @property
    def verdict(self) -> str:
        """The two-sided reading: "higher" (the interval lies above 0: the claim is supported),
        "lower" (below 0: the opposite is), or "inconclusive" (it includes 0: neither is shown,
        and equality is not shown either)."""
        return "higher" if self.difference.low > 0 else "lower" if self.difference.high < 0 else "inconclusive"

    def __str__(self) -> str:
        reading = {"higher": "supported",
                   "lower": "not supported: lower, the opposite is supported",
                   "inconclusive": "not supported: inconclusive, the interval includes 0"}[self.verdict]
        return f"{self.a.value:.2f} vs {self.b.value:.2f}: difference {self.difference} ({reading})"


def compare(a: Values | Groups, b: Values | Groups, *, paired: bool = False, level: float = 0.95,
            n_boot: int = 2000, seed: int = 0) -> Comparison:
    """Is ``a`` larger than ``b``? Bootstrap interval of the difference of their means.

    ``paired=True`` when a[i] and b[i] are the same condition and seed measured two
    ways (a guidance mode against another): the per-sample differences are resampled,
    which removes the variation between conditions from the interval. Otherwise ``a``
    and ``b`` are resampled independently (different training runs).
    """
    ga, gb = _as_groups(a), _as_groups(b)
    ia = bootstrap_ci(ga, level=level, n_boot=n_boot, seed=seed)
    ib = bootstrap_ci(gb, level=level, n_boot=n_boot, seed=seed + 1)
    if paired:
        if [len(g) for g in ga] != [len(g) for g in gb]:
            raise ValueError("paired comparison: expected a and b of the same shape, got "
                             f"{[len(g) for g in ga]} and {[len(g) for g in gb]}")
        diff = bootstrap_ci([x - y for x, y in zip(ga, gb)] if len(ga) > 1 else ga[0] - gb[0],
                            level=level, n_boot=n_boot, seed=seed + 2)
    else:
        rng = np.random.default_rng(seed + 2)
        d = np.array([_resample(ga, rng).mean() - _resample(gb, rng).mean() for _ in range(n_boot)])
        tail = (1 - level) / 2
        lo, hi = np.quantile(d, [tail, 1 - tail])
        diff = Interval(ia.value - ib.value, float(lo), float(hi), level, min(ia.n, ib.n))
    return Comparison(ia, ib, diff)


def share_ci(flags: Values | Groups, **options) -> Interval:
    """A share (of samples above a threshold, say) with its interval: the bootstrap of a mean of 0/1."""
    groups = [np.asarray(g, dtype=float) for g in _as_groups(flags)]
    return bootstrap_ci(groups if len(groups) > 1 else groups[0], **options)
