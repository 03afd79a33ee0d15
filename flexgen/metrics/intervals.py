"""95% intervals for the numbers on a board: a bootstrap over samples for means (accuracy, per-sample scores), a
re-centred bootstrap for the Fréchet distance at fixed N, and KID's spread over subsets.

Every interval describes how much the number would move with another draw of the same number of samples from the
same model, which is what decides whether two rows of a board may be ranked (`flexgen.metrics.leaderboard`).

- `bootstrap_mean`: the percentile bootstrap (Efron & Tibshirani 1993, §13.3) of a mean over samples.
- `bootstrap_frechet`: the generated features resampled with replacement at their N, the real statistics fixed (the
  same for every row of a table). A resample with repeats has a smaller spread, which raises the Fréchet distance
  on average, so the plain percentile interval can sit wholly above the estimate (and the basic bootstrap's
  reflection, [2d − q97.5, 2d − q2.5], wholly below it when that bias exceeds the spread). Here the percentile
  interval is moved by the bootstrap's median shift, [d + q2.5 − q50, d + q97.5 − q50]: the bootstrap's spread and
  skew around the estimate, which it always contains. Clipped at 0.
- `kid_interval`: the unbiased MMD² over random half-size subsets; mean ± 1.96 × their standard deviation. A subset
  of half the samples varies more than the whole set, so the interval is conservative (wider than the whole
  set's); at small N the estimate itself stays unbiased (Bińkowski et al. 2018).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from flexgen.metrics.frechet import FeatureStats, fid_from_stats, frechet_distance, kid

LEVEL = 0.95
RESAMPLES = 2000


def _tails(level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f"interval level must be in (0, 1), got {level}")
    return 50 * (1 - level), 50 * (1 + level)


def bootstrap_mean(values: Sequence[float] | np.ndarray, *, resamples: int = RESAMPLES, seed: int = 0,
                   level: float = LEVEL) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of `values` (one per sample)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("a bootstrap needs at least one value")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, (resamples, x.size))].mean(axis=1)
    low, high = np.percentile(means, _tails(level))
    return float(low), float(high)


def bootstrap_frechet(fake: np.ndarray, real_mean: np.ndarray, real_cov: np.ndarray, *, resamples: int = 500,
                      seed: int = 0, level: float = LEVEL) -> tuple[float, float]:
    """Bootstrap interval of the Fréchet distance between `fake` features (N, D) and fixed real statistics, re-centred
    on the estimate (module docstring)."""
    fake = np.asarray(fake, dtype=np.float64)
    if fake.ndim != 2 or len(fake) < 2:
        raise ValueError(f"need generated features (N >= 2, D), got shape {fake.shape}")
    estimate = frechet_distance(fake.mean(0), np.cov(fake, rowvar=False), real_mean, real_cov)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        x = fake[rng.integers(0, len(fake), len(fake))]
        draws.append(frechet_distance(x.mean(0), np.cov(x, rowvar=False), real_mean, real_cov))
    q_low, q_high = np.percentile(draws, _tails(level))
    shift = estimate - float(np.median(draws))
    return max(0.0, float(q_low) + shift), max(0.0, float(q_high) + shift)


def kid_interval(real: np.ndarray, fake: np.ndarray, *, subsets: int = 100, seed: int = 0,
                 level: float = LEVEL) -> tuple[float, tuple[float, float]]:
    """KID (unbiased MMD², cubic kernel) over half-size subsets: (mean, (mean − z·std, mean + z·std))."""
    from statistics import NormalDist

    size = max(2, min(len(real), len(fake)) // 2)
    mean, std = kid(real, fake, num_subsets=subsets, subset_size=size, seed=seed)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    return mean, (mean - z * std, mean + z * std)


def distance_intervals(real: FeatureStats, fake: FeatureStats, *, seed: int = 0) -> dict[str, Any]:
    """The Fréchet distance and KID of two feature sets (raw features kept) with their 95% intervals:
    {"frechet_distance", "interval", "kid", "kid_interval"}."""
    if len(real.features) != real.count or len(fake.features) != fake.count:
        raise ValueError("intervals need every raw feature: build both FeatureStats with keep_features >= count")
    kid_mean, kid_bounds = kid_interval(real.features, fake.features, seed=seed)
    return {"frechet_distance": fid_from_stats(real, fake),
            "interval": bootstrap_frechet(fake.features, real.mean, real.cov, seed=seed),
            "kid": kid_mean, "kid_interval": kid_bounds}
