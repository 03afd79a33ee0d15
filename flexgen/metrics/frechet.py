"""Feature statistics and the distances built on them: FID / FVD (Fréchet distance) and KID.

- `FeatureStats` accumulates count, Σx and Σxxᵀ in float64 from batches of detector features (torch or numpy),
  merges exactly, all-reduces across torch.distributed ranks, and saves / loads as .npz with the detector and
  protocol metadata stored next to the numbers.
- `frechet_distance` takes tr √(Σ₁Σ₂) from symmetric eigendecompositions (`eigh` / `eigvalsh`), never from
  `scipy.linalg.sqrtm`, which goes through a Schur form of a non-symmetric product (complex round-off, version
  bugs, ill-conditioned for rank-deficient covariances).
- `kid` is the unbiased MMD² with the cubic polynomial kernel, averaged over seeded random subsets.

The covariance comes from Σxxᵀ − (Σx)(Σx)ᵀ/N, which loses precision when the mean is much larger than the spread;
in float64 this is harmless for detector features (Inception, I3D), whose mean and spread are of the same order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from flexgen.dist import is_distributed
from flexgen.files import atomic_write

FORMAT_VERSION = 1

# A covariance eigenvalue below -EIG_TOLERANCE * trace means the matrix is not a covariance (not round-off).
EIG_TOLERANCE = 1e-6

ArrayLike = np.ndarray | torch.Tensor


# ---------------------------------------------------------------------------------------------------------------
# _as_float64: any (N, D) batch -> float64 numpy array, checked
# ---------------------------------------------------------------------------------------------------------------
def _as_float64(x: ArrayLike | Any, what: str = "features") -> np.ndarray:
    if isinstance(x, torch.Tensor):
        arr = x.detach().to("cpu", torch.float64).numpy()
    else:
        arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (N, D) array, got shape {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contain NaN or inf values")
    return arr


# ---------------------------------------------------------------------------------------------------------------
# FeatureStats: streaming float64 mean / covariance of detector features
# ---------------------------------------------------------------------------------------------------------------
class FeatureStats:
    """Count, Σx and Σxxᵀ of the features seen so far, in float64.

    `keep_features > 0` also keeps the first `keep_features` raw feature rows (float64), for KID.
    `metadata` is a JSON-serialisable dict (detector file and hash, protocol, dataset...) saved with the numbers;
    merging accumulators with different non-empty metadata is refused.
    """

    def __init__(self, dim: int | None = None, keep_features: int = 0, metadata: dict[str, Any] | None = None):
        if keep_features < 0:
            raise ValueError(f"keep_features must be >= 0, got {keep_features}")
        self.dim: int | None = None
        self.count = 0
        self.sum: np.ndarray | None = None
        self.sum_outer: np.ndarray | None = None
        self.keep_features = keep_features
        self._kept: list[np.ndarray] = []
        self._num_kept = 0
        self.metadata: dict[str, Any] = dict(metadata or {})
        if dim is not None:
            self._init_dim(dim)

    def _init_dim(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"feature dimension must be >= 1, got {dim}")
        self.dim = dim
        self.sum = np.zeros(dim, dtype=np.float64)
        self.sum_outer = np.zeros((dim, dim), dtype=np.float64)

    def _check_dim(self, dim: int, where: str) -> None:
        if self.dim is None:
            self._init_dim(dim)
        elif dim != self.dim:
            raise ValueError(f"feature dimension mismatch in {where}: these statistics have D={self.dim}, got D={dim}")

    @classmethod
    def from_batches(cls, batches: Iterable[ArrayLike], keep_features: int = 0,
                     metadata: dict[str, Any] | None = None) -> FeatureStats:
        """One pass over an iterable of (N, D) batches."""
        stats = cls(keep_features=keep_features, metadata=metadata)
        for batch in batches:
            stats.update(batch)
        return stats

    def update(self, batch: ArrayLike) -> FeatureStats:
        """Add one (N, D) batch of features (torch or numpy, any float dtype). Returns self."""
        x = _as_float64(batch)
        self._check_dim(x.shape[1], "update")
        self.count += x.shape[0]
        self.sum += x.sum(axis=0)
        self.sum_outer += x.T @ x
        self._keep(x)
        return self

    def _keep(self, x: np.ndarray) -> None:
        room = self.keep_features - self._num_kept
        if room > 0 and len(x) > 0:
            rows = x[:room].copy()
            self._kept.append(rows)
            self._num_kept += len(rows)

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add another accumulator's samples into this one (as if its batches had been passed to `update`)."""
        if self.metadata and other.metadata and self.metadata != other.metadata:
            raise ValueError(f"cannot merge statistics with different metadata: {self.metadata} vs {other.metadata}")
        if other.dim is None:
            return self
        self._check_dim(other.dim, "merge")
        self.count += other.count
        self.sum += other.sum
        self.sum_outer += other.sum_outer
        self._keep(other.features)
        if not self.metadata:
            self.metadata = dict(other.metadata)
        return self

    def all_reduce(self) -> FeatureStats:
        """Sum the statistics over torch.distributed ranks, and gather the kept features in rank order.

        Every rank must call it; afterwards every rank holds the totals. Without a process group it does nothing.
        """
        if not is_distributed():
            return self
        dims: list[int | None] = [None] * dist.get_world_size()
        dist.all_gather_object(dims, self.dim)
        known = {d for d in dims if d is not None}
        if len(known) > 1:
            raise ValueError(f"feature dimension differs between ranks: {dims}")
        if not known:
            return self
        self._check_dim(known.pop(), "all_reduce")
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        count = torch.tensor([self.count], dtype=torch.int64, device=device)
        total = torch.from_numpy(self.sum).to(device)
        outer = torch.from_numpy(self.sum_outer).to(device)
        for t in (count, total, outer):
            dist.all_reduce(t)
        self.count = int(count.item())
        self.sum = total.cpu().numpy().astype(np.float64)
        self.sum_outer = outer.cpu().numpy().astype(np.float64)
        if self.keep_features > 0:
            gathered: list[np.ndarray | None] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, self.features)
            self._kept, self._num_kept = [], 0
            for rows in gathered:
                self._keep(rows)
        return self

    @property
    def features(self) -> np.ndarray:
        """The kept raw features, (≤ keep_features, D) float64."""
        if not self._kept:
            return np.zeros((0, self.dim or 0), dtype=np.float64)
        if len(self._kept) > 1:
            self._kept = [np.concatenate(self._kept, axis=0)]
        return self._kept[0]

    @property
    def mean(self) -> np.ndarray:
        if self.count < 1:
            raise ValueError("mean of empty statistics (no features were added)")
        return self.sum / self.count

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance (÷ N−1), symmetrised."""
        if self.count < 2:
            raise ValueError(f"the covariance needs at least 2 samples, got {self.count}")
        centered = self.sum_outer - np.outer(self.sum, self.sum) / self.count
        cov = centered / (self.count - 1)
        return (cov + cov.T) / 2

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write an .npz atomically (`flexgen.files.atomic_write`: a hidden temporary file beside it, then renamed)."""
        if self.dim is None:
            raise ValueError("cannot save empty statistics (no features were added)")
        metadata_json = json.dumps(self.metadata, sort_keys=True)
        with atomic_write(path) as tmp, tmp.open("wb") as f:   # a file object: np.savez would add ".npz" to a name
            np.savez(f, format_version=np.int64(FORMAT_VERSION), count=np.int64(self.count), sum=self.sum,
                     sum_outer=self.sum_outer, features=self.features, keep_features=np.int64(self.keep_features),
                     metadata=np.array(metadata_json))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FeatureStats:
        with np.load(path, allow_pickle=False) as data:
            version = int(data["format_version"]) if "format_version" in data else None
            if version != FORMAT_VERSION:
                raise ValueError(f"{path}: not a FeatureStats file of format {FORMAT_VERSION} (found {version})")
            stats = cls(dim=data["sum"].shape[0], keep_features=int(data["keep_features"]),
                        metadata=json.loads(str(data["metadata"])))
            stats.count = int(data["count"])
            stats.sum = data["sum"].astype(np.float64)
            stats.sum_outer = data["sum_outer"].astype(np.float64)
            stats._keep(data["features"].astype(np.float64))
        return stats

    def __repr__(self) -> str:
        return f"FeatureStats(dim={self.dim}, count={self.count}, kept={self._num_kept}, metadata={self.metadata})"


# ---------------------------------------------------------------------------------------------------------------
# _check_gaussian: validate one (mu, sigma) pair and return it in float64
# ---------------------------------------------------------------------------------------------------------------
def _check_gaussian(mu: ArrayLike, sigma: ArrayLike, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.asarray(mu.detach().cpu() if isinstance(mu, torch.Tensor) else mu, dtype=np.float64)
    sigma = np.asarray(sigma.detach().cpu() if isinstance(sigma, torch.Tensor) else sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{name}: expected mu of shape (D,) and sigma of shape (D, D), "
                         f"got {tuple(mu.shape)} and {tuple(sigma.shape)}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{name}: mu or sigma contain NaN or inf values")
    return mu, (sigma + sigma.T) / 2


# ---------------------------------------------------------------------------------------------------------------
# _check_psd: fail loudly when eigenvalues are negative beyond round-off
# ---------------------------------------------------------------------------------------------------------------
def _check_psd(eigenvalues: np.ndarray, trace: float, name: str) -> None:
    lowest = float(eigenvalues.min())
    if lowest < -EIG_TOLERANCE * max(abs(trace), np.finfo(np.float64).tiny):
        raise ValueError(f"{name} is not positive semi-definite: eigenvalue {lowest:.3e} with trace {trace:.3e}")


# ---------------------------------------------------------------------------------------------------------------
# frechet_distance: Fréchet distance between two Gaussians, symmetric eigendecomposition route
# ---------------------------------------------------------------------------------------------------------------
def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """||μ₁−μ₂||² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}, in float64, clamped at 0."""
    # Dowson & Landau 1982, "The Fréchet distance between multivariate normal distributions".
    mu1, sigma1 = _check_gaussian(mu1, sigma1, "first Gaussian")
    mu2, sigma2 = _check_gaussian(mu2, sigma2, "second Gaussian")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dimension mismatch: D={mu1.shape[0]} vs D={mu2.shape[0]}")
    trace1, trace2 = float(np.trace(sigma1)), float(np.trace(sigma2))

    # Σ₁^{1/2} = V diag(√λ) Vᵀ, negative round-off eigenvalues clipped to 0.
    eig1, vecs1 = np.linalg.eigh(sigma1)
    _check_psd(eig1, trace1, "sigma1")
    _check_psd(np.linalg.eigvalsh(sigma2), trace2, "sigma2")
    root1 = (vecs1 * np.sqrt(np.clip(eig1, 0.0, None))) @ vecs1.T

    # tr √(Σ₁Σ₂) = Σ √λᵢ(Σ₁^{1/2} Σ₂ Σ₁^{1/2}); the product is symmetric PSD, so eigvalsh applies.
    product = root1 @ sigma2 @ root1
    eig_product = np.linalg.eigvalsh((product + product.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eig_product, 0.0, None)).sum())

    diff = mu1 - mu2
    value = float(diff @ diff) + trace1 + trace2 - 2.0 * trace_sqrt
    return max(value, 0.0)


# ---------------------------------------------------------------------------------------------------------------
# fid_from_stats: FID / FVD between two accumulated feature statistics
# ---------------------------------------------------------------------------------------------------------------
def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """The Fréchet distance between the Gaussians fitted to two sets of features (FID for Inception, FVD for I3D)."""
    # Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a local Nash equilibrium".
    if a.dim != b.dim:
        raise ValueError(f"feature dimension mismatch: D={a.dim} vs D={b.dim}")
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


# ---------------------------------------------------------------------------------------------------------------
# _mmd2_unbiased: unbiased MMD² of two equal-size samples with the cubic polynomial kernel
# ---------------------------------------------------------------------------------------------------------------
def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    m, d = x.shape
    k_xx = (x @ x.T / d + 1.0) ** 3
    k_yy = (y @ y.T / d + 1.0) ** 3
    k_xy = (x @ y.T / d + 1.0) ** 3
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.mean())


# ---------------------------------------------------------------------------------------------------------------
# kid: Kernel Inception Distance, mean and std over seeded random subsets
# ---------------------------------------------------------------------------------------------------------------
def kid(features_a: ArrayLike, features_b: ArrayLike, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Unbiased MMD² with k(x, y) = (xᵀy/d + 1)³ over `num_subsets` subsets (drawn without replacement).

    The subset size is clipped to the smaller set. Returns (mean, std over subsets); papers often quote ×10³.
    """
    # Bińkowski et al. 2018, "Demystifying MMD GANs" (KID: unbiased MMD², cubic polynomial kernel).
    a = _as_float64(features_a, "features_a")
    b = _as_float64(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimension mismatch: D={a.shape[1]} vs D={b.shape[1]}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs subsets of at least 2 samples, got {m} "
                         f"(subset_size={subset_size}, sizes {len(a)} and {len(b)})")
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets, dtype=np.float64)
    for i in range(num_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        values[i] = _mmd2_unbiased(x, y)
    return float(values.mean()), float(values.std())


# ---------------------------------------------------------------------------------------------------------------
# kid_from_stats: KID from the raw features two FeatureStats kept
# ---------------------------------------------------------------------------------------------------------------
def kid_from_stats(a: FeatureStats, b: FeatureStats, num_subsets: int = 100, subset_size: int = 1000,
                   seed: int = 0) -> tuple[float, float]:
    if a.features.shape[0] == 0 or b.features.shape[0] == 0:
        raise ValueError("KID needs raw features: build the FeatureStats with keep_features > 0")
    return kid(a.features, b.features, num_subsets=num_subsets, subset_size=subset_size, seed=seed)
