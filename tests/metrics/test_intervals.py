"""95% intervals (`flexgen.metrics.intervals`): they cover a known value at their nominal rate, and they tell two
draws of one distribution (overlap) from two distributions (apart)."""

import numpy as np
import pytest

from flexgen.metrics.frechet import FeatureStats, frechet_distance
from flexgen.metrics.intervals import bootstrap_frechet, bootstrap_mean, distance_intervals, kid_interval


def test_the_mean_bootstrap_covers_the_true_mean_at_its_nominal_rate():
    # 400 data sets of 64 Bernoulli(0.8) hits (an accuracy) and 400 of 64 exponential grades (a skewed score):
    # the 95% interval holds the true mean in 91–98.5% of them (binomial spread of 400 trials around 95%,
    # with the percentile bootstrap's known slight under-coverage at this N).
    rng = np.random.default_rng(0)
    for draw, truth in ((lambda: rng.random(64) < 0.8, 0.8), (lambda: rng.exponential(2.0, 64), 2.0)):
        hits = 0
        for i in range(400):
            low, high = bootstrap_mean(draw(), resamples=1000, seed=i)
            hits += low <= truth <= high
        assert 0.91 <= hits / 400 <= 0.985, hits


def test_the_mean_bootstrap_has_the_width_of_the_standard_error():
    x = np.random.default_rng(1).normal(5.0, 2.0, 400)
    low, high = bootstrap_mean(x)
    assert low < x.mean() < high
    assert (high - low) == pytest.approx(2 * 1.96 * x.std() / 20, rel=0.1)       # ±1.96 σ/√N
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_mean([])
    with pytest.raises(ValueError, match="level"):
        bootstrap_mean(x, level=1.5)


def _stats(x: np.ndarray) -> FeatureStats:
    return FeatureStats(keep_features=len(x)).update(x)


def test_the_frechet_interval_overlaps_for_two_draws_and_parts_two_distributions():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(64, 8))
    same_a, same_b = rng.normal(size=(64, 8)), rng.normal(size=(64, 8))
    shifted = rng.normal(size=(64, 8)) + 1.0                                     # FD ≈ 8 more than the draws'
    intervals = {}
    for name, fake in (("a", same_a), ("b", same_b), ("shifted", shifted)):
        low, high = bootstrap_frechet(fake, real.mean(0), np.cov(real, rowvar=False), seed=0)
        estimate = frechet_distance(fake.mean(0), np.cov(fake, rowvar=False), real.mean(0), np.cov(real, rowvar=False))
        assert 0 <= low <= estimate + 1e-9 and estimate <= high + 1e-9           # the estimate is inside
        intervals[name] = (low, high)
    (a_low, a_high), (b_low, b_high), (s_low, _) = intervals["a"], intervals["b"], intervals["shifted"]
    assert a_low <= b_high and b_low <= a_high                                  # two draws: overlap
    assert s_low > max(a_high, b_high)                                          # another distribution: apart


def test_kid_and_frechet_intervals_of_feature_stats():
    rng = np.random.default_rng(3)
    real, fake = _stats(rng.normal(size=(48, 6))), _stats(rng.normal(size=(48, 6)) + 0.5)
    spread = distance_intervals(real, fake)
    kid, (low, high) = kid_interval(real.features, fake.features)
    assert spread["kid"] == kid and spread["kid_interval"] == (low, high) and low < kid < high
    assert spread["interval"][0] <= spread["frechet_distance"] <= spread["interval"][1] + 1e-9
    with pytest.raises(ValueError, match="keep_features"):
        distance_intervals(FeatureStats().update(rng.normal(size=(8, 6))), fake)
