"""Feature statistics, Fréchet distance and KID against closed forms and a scipy.linalg.sqrtm reference."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from flexgen.metrics import FeatureStats, fid_from_stats, frechet_distance, kid, kid_from_stats


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def random_spd(rng: np.random.Generator, d: int, n: int) -> np.ndarray:
    """The sample covariance of n points: SPD when n > d, rank n−1 when n ≤ d."""
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) / np.sqrt(d)
    return np.cov(x, rowvar=False)


def sqrtm_reference(mu1, sigma1, mu2, sigma2) -> float:
    """The usual pytorch-fid / clean-fid formula with scipy.linalg.sqrtm of the non-symmetric product."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # sqrtm warns about singular products; the test tolerates them
        root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root).real)


# ---------------------------------------------------------------------------------------------------------------
# frechet_distance
# ---------------------------------------------------------------------------------------------------------------
def test_identical_stats_give_zero():
    rng = np.random.default_rng(0)
    for n in (200, 20):                        # full rank and rank-deficient (N < D)
        sigma = random_spd(rng, 64, n)
        mu = rng.standard_normal(64)
        assert frechet_distance(mu, sigma, mu, sigma) <= 1e-8 * np.trace(sigma)


def test_identical_feature_sets_give_zero():
    x = np.random.default_rng(1).standard_normal((300, 32))
    a, b = FeatureStats.from_batches([x]), FeatureStats.from_batches(np.array_split(x, 7))
    assert fid_from_stats(a, b) == pytest.approx(0.0, abs=1e-8 * np.trace(a.cov))


def test_diagonal_closed_form():
    # Σ₁ = diag(s²), Σ₂ = diag(t²) commute, so tr √(Σ₁Σ₂) = Σ sₖtₖ and FD = ||Δμ||² + Σₖ (sₖ − tₖ)².
    rng = np.random.default_rng(2)
    s, t = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((s - t) ** 2)
    assert frechet_distance(mu1, np.diag(s**2), mu2, np.diag(t**2)) == pytest.approx(expected, rel=1e-12)
    # The same in a rotated basis: Σ = Q diag Qᵀ, means rotated by Q (FD is rotation-invariant).
    q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    rotated = frechet_distance(q @ mu1, q @ np.diag(s**2) @ q.T, q @ mu2, q @ np.diag(t**2) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-10)


def test_shift_and_scale_closed_form():
    # Σ₂ = c²Σ₁: tr √(Σ₁Σ₂) = c tr Σ₁, so FD = ||Δμ||² + (1 − c)² tr Σ₁. A pure shift leaves only ||Δμ||².
    rng = np.random.default_rng(3)
    sigma, mu = random_spd(rng, 32, 100), rng.standard_normal(32)
    shift = rng.standard_normal(32)
    assert frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(shift @ shift, rel=1e-9)
    c = 1.7
    expected = shift @ shift + (1 - c) ** 2 * np.trace(sigma)
    assert frechet_distance(mu, sigma, mu + shift, c**2 * sigma) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("n1,n2", [(400, 300), (40, 30), (400, 30)], ids=["full-rank", "both-deficient", "mixed"])
def test_agrees_with_sqrtm(n1, n2):
    rng = np.random.default_rng(n1 + n2)
    sigma1, sigma2 = random_spd(rng, 64, n1), random_spd(rng, 64, n2)
    mu1, mu2 = rng.standard_normal(64), rng.standard_normal(64)
    reference = sqrtm_reference(mu1, sigma1, mu2, sigma2)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(reference, rel=1e-6)


def test_accepts_torch_and_float32():
    rng = np.random.default_rng(4)
    sigma1, sigma2 = random_spd(rng, 8, 50), random_spd(rng, 8, 50)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    expected = frechet_distance(mu1, sigma1, mu2, sigma2)
    got = frechet_distance(torch.tensor(mu1), torch.tensor(sigma1), torch.tensor(mu2), torch.tensor(sigma2))
    assert got == pytest.approx(expected, rel=1e-12)


def test_frechet_bad_inputs():
    eye = np.eye(4)
    with pytest.raises(ValueError, match="dimension mismatch"):
        frechet_distance(np.zeros(4), eye, np.zeros(5), np.eye(5))
    with pytest.raises(ValueError, match="expected mu of shape"):
        frechet_distance(np.zeros(4), np.eye(3), np.zeros(4), eye)
    with pytest.raises(ValueError, match="NaN or inf"):
        frechet_distance(np.full(4, np.nan), eye, np.zeros(4), eye)
    with pytest.raises(ValueError, match="not positive semi-definite"):
        frechet_distance(np.zeros(4), np.diag([1.0, 1.0, 1.0, -1.0]), np.zeros(4), eye)


# ---------------------------------------------------------------------------------------------------------------
# FeatureStats
# ---------------------------------------------------------------------------------------------------------------
def test_stats_match_numpy():
    x = np.random.default_rng(5).standard_normal((257, 24)) * 3 + 1
    stats = FeatureStats.from_batches(np.array_split(x, 5))
    assert stats.count == 257
    np.testing.assert_allclose(stats.mean, x.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)


def test_merge_equals_one_pass():
    rng = np.random.default_rng(6)
    batches = [rng.standard_normal((n, 16)).astype(np.float32) for n in (10, 33, 1, 50, 7)]
    whole = FeatureStats.from_batches(batches, keep_features=60)
    first = FeatureStats.from_batches(batches[:2], keep_features=60)
    rest = FeatureStats.from_batches((torch.from_numpy(b) for b in batches[2:]), keep_features=60)
    merged = first.merge(rest)
    assert merged.count == whole.count
    np.testing.assert_allclose(merged.sum, whole.sum, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(merged.sum_outer, whole.sum_outer, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(merged.cov, whole.cov, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(merged.features, whole.features)
    assert merged.features.shape == (60, 16)
    assert merged.features.dtype == np.float64


def test_save_load_round_trip(tmp_path):
    x = np.random.default_rng(7).standard_normal((40, 12))
    meta = {"detector": {"file": "i3d_torchscript.pt", "sha256": "bec6519f"}, "frames": 16, "dataset": "taichi"}
    stats = FeatureStats.from_batches([x], keep_features=25, metadata=meta)
    path = tmp_path / "sub" / "real.npz"
    stats.save(path)
    assert os.listdir(path.parent) == ["real.npz"]          # no temporary file left behind
    loaded = FeatureStats.load(path)
    assert loaded.metadata == meta
    assert loaded.count == 40 and loaded.dim == 12 and loaded.keep_features == 25
    np.testing.assert_array_equal(loaded.sum, stats.sum)
    np.testing.assert_array_equal(loaded.sum_outer, stats.sum_outer)
    np.testing.assert_array_equal(loaded.features, x[:25])
    assert fid_from_stats(stats, loaded) == pytest.approx(0.0, abs=1e-10)


def test_stats_bad_inputs(tmp_path):
    stats = FeatureStats().update(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="dimension mismatch"):
        stats.update(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="dimension mismatch"):
        stats.merge(FeatureStats().update(np.zeros((3, 5))))
    with pytest.raises(ValueError, match="2-D"):
        stats.update(np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        stats.update(np.full((2, 4), np.inf))
    with pytest.raises(ValueError, match="at least 2 samples"):
        _ = FeatureStats().update(np.zeros((1, 4))).cov
    with pytest.raises(ValueError, match="empty"):
        _ = FeatureStats().mean
    with pytest.raises(ValueError, match="different metadata"):
        FeatureStats(metadata={"detector": "a"}).merge(FeatureStats(metadata={"detector": "b"}))
    with pytest.raises(ValueError, match="dimension mismatch"):
        fid_from_stats(stats, FeatureStats().update(np.ones((3, 5))))
    np.savez(tmp_path / "other.npz", mu=np.zeros(3))
    with pytest.raises(ValueError, match="not a FeatureStats file"):
        FeatureStats.load(tmp_path / "other.npz")


def _all_reduce_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x = np.random.default_rng(8).standard_normal((30, 6))
        part = np.array_split(x, world)[rank]
        stats = FeatureStats(keep_features=20).update(part).all_reduce()
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), count=stats.count, cov=stats.cov, features=stats.features)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_over_two_ranks(tmp_path):
    mp.spawn(_all_reduce_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    x = np.random.default_rng(8).standard_normal((30, 6))
    for rank in range(2):
        got = np.load(tmp_path / f"rank{rank}.npz")
        assert int(got["count"]) == 30
        np.testing.assert_allclose(got["cov"], np.cov(x, rowvar=False), rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(got["features"], x[:20])   # rank 0's 15 rows, then 5 of rank 1's


def test_all_reduce_without_process_group_is_a_no_op():
    stats = FeatureStats().update(np.ones((2, 3)))
    assert stats.all_reduce() is stats and stats.count == 2


# ---------------------------------------------------------------------------------------------------------------
# KID
# ---------------------------------------------------------------------------------------------------------------
def test_kid_same_vs_shifted_distribution():
    rng = np.random.default_rng(9)
    a, b = rng.standard_normal((600, 32)), rng.standard_normal((600, 32))
    same_mean, same_std = kid(a, b, num_subsets=30, subset_size=300)
    shifted_mean, shifted_std = kid(a, b + 0.5, num_subsets=30, subset_size=300)
    assert abs(same_mean) < 3 * same_std / np.sqrt(30) + 1e-3
    assert shifted_mean > 0.05 and shifted_mean > 20 * shifted_std / np.sqrt(30) and shifted_mean > 50 * abs(same_mean)


def test_kid_is_deterministic_and_clips_subset_size():
    rng = np.random.default_rng(10)
    a, b = rng.standard_normal((50, 8)), rng.standard_normal((80, 8)) + 0.3
    assert kid(a, b, num_subsets=5, seed=1) == kid(a, b, num_subsets=5, seed=1)
    assert kid(a, b, num_subsets=5, seed=1) != kid(a, b, num_subsets=5, seed=2)
    # subset_size=1000 is clipped to 50: the same as asking for 50 directly.
    assert kid(a, b, num_subsets=5, subset_size=1000) == kid(a, b, num_subsets=5, subset_size=50)
    sa = FeatureStats(keep_features=100).update(torch.from_numpy(a))
    sb = FeatureStats(keep_features=100).update(b)
    assert kid_from_stats(sa, sb, num_subsets=5) == kid(a, b, num_subsets=5)


def test_kid_bad_inputs():
    with pytest.raises(ValueError, match="dimension mismatch"):
        kid(np.zeros((10, 4)), np.zeros((10, 5)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        kid(np.zeros((1, 4)), np.zeros((10, 4)))
    with pytest.raises(ValueError, match="keep_features"):
        kid_from_stats(FeatureStats().update(np.zeros((3, 4))), FeatureStats().update(np.zeros((3, 4))))
