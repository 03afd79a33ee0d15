"""The numbers of OpenAI's ADM evaluation suite (guided-diffusion `evaluations/evaluator.py`), which the DiT,
FlexDiT and DyDiT ImageNet tables report: FID, sFID, Inception Score, precision and recall of a sample batch
against a reference batch (`VIRTUAL_imagenet256_labeled.npz`, `VIRTUAL_imagenet512.npz`).

Definitions, as the evaluator computes them (each restated below with the line of the evaluator it follows):
- FID: Fréchet distance of pool_3 (2048-d) Gaussians; the reference's `mu` / `sigma` from its `.npz` when the file
  carries them, else from its images (our float64 statistics and `frechet.frechet_distance`).
- sFID: the same on `mixed_6/conv` spatial features, first 7 channels, flattened (17·17·7 = 2023-d), with the
  reference's `mu_s` / `sigma_s` when present.
- IS: softmax over the 1008 classes of the Inception head (without its output bias), exp of the mean KL between each
  prediction and the mean prediction, per split of 5000 samples, averaged over splits.
- Precision / recall (Kynkäänniemi et al. 2019, ADM's `ManifoldEstimator`, k = 3): a point's radius is its squared
  distance to its 3rd nearest neighbour in its own set (itself excluded); precision is the share of samples within
  the radius of some reference point, recall the share of reference points within the radius of some sample. Here
  in float64, in row / column batches of 10000 as ADM's.

The batches are uint8 N×H×W×3 (`arr_0`), as `flexgen sample --npz` writes them; the detector is an `AdmDetector`:
`InceptionADM` is ADM's TF-Inception as the TorchScript conversion `inception-2015-12-05.pt` (the file clean-fid and
StyleGAN2-ADA use; sha256 checked before loading), called as StyleGAN2-ADA calls it: uint8 images at their own size
(the network resizes inside, as TF's graph), `return_features=True` for pool_3, `no_output_bias=True` for the
bias-free softmax ADM's IS uses. That TorchScript's forward exposes no `mixed_6/conv`, so its sFID is reported
unavailable, never replaced by another feature. (The file is absent on the machines this was written on: the
parity test with clean-fid's `legacy_tensorflow` features runs where it is present.)

    flexgen eval adm --ref VIRTUAL_imagenet256_labeled.npz --fake samples/dit-xl2/samples.npz
"""

from __future__ import annotations

import dataclasses
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from flexgen.metrics.frechet import FeatureStats, frechet_distance

SPLIT_SIZE = 5000           # ADM compute_inception_score(split_size=5000)
NEIGHBOURHOOD = 3           # ADM ManifoldEstimator(nhood_sizes=(3,))
DISTANCE_BATCH = 10000      # ADM ManifoldEstimator(row_batch_size=10000, col_batch_size=10000)
SPATIAL_CHANNELS = 7        # ADM: spatial features [..., :7]


class AdmDetector(Protocol):
    """uint8 images (n, 3, H, W) -> {"pool": (n, 2048), "probs": (n, classes), "spatial": (n, D) or None}."""
    sha256: str | None
    spatial_reason: str     # why "spatial" is None (empty when the detector gives it)

    def __call__(self, images: torch.Tensor) -> dict: ...


def spatial_features(mixed_6_conv: torch.Tensor) -> torch.Tensor:
    """(n, C, 17, 17) channels-first `mixed_6/conv` -> (n, 17·17·7): its first 7 channels, flattened in TF's
    (h, w, c) order (ADM: `spatial[..., :7]` then reshape)."""
    return mixed_6_conv[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(len(mixed_6_conv), -1)


def inception_score(probs: np.ndarray, split_size: int = SPLIT_SIZE) -> float:
    """ADM compute_inception_score: mean over splits of exp(mean_i KL(p_i ‖ mean_split p))."""
    probs = np.asarray(probs, dtype=np.float64)
    scores = []
    for start in range(0, len(probs), split_size):
        part = probs[start:start + split_size]
        kl = part * (np.log(part) - np.log(part.mean(axis=0, keepdims=True)))
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores))


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # ADM batch_pairwise_distances: ‖u‖² − 2 u·v + ‖v‖², clamped at 0
    d = (a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None]
    return np.maximum(d, 0.0)


def manifold_radii(features: np.ndarray, k: int = NEIGHBOURHOOD, batch: int = DISTANCE_BATCH) -> np.ndarray:
    """Each point's squared distance to its k-th nearest neighbour in `features` (itself at index 0 excluded)."""
    features = np.asarray(features, dtype=np.float64)
    radii = np.empty(len(features))
    for start in range(0, len(features), batch):
        d = _squared_distances(features[start:start + batch], features)
        radii[start:start + batch] = np.partition(d, k, axis=1)[:, k]
    return radii


def precision_recall(reference: np.ndarray, samples: np.ndarray, k: int = NEIGHBOURHOOD,
                     batch: int = DISTANCE_BATCH) -> tuple[float, float]:
    """ADM evaluate_pr: (precision, recall) of `samples` against `reference` (feature rows)."""
    reference, samples = np.asarray(reference, np.float64), np.asarray(samples, np.float64)
    radii_ref, radii_sample = manifold_radii(reference, k, batch), manifold_radii(samples, k, batch)
    ref_in = np.zeros(len(reference), bool)          # a reference point inside some sample's ball: recall
    sample_in = np.zeros(len(samples), bool)         # a sample inside some reference point's ball: precision
    for i in range(0, len(reference), batch):
        for j in range(0, len(samples), batch):
            d = _squared_distances(reference[i:i + batch], samples[j:j + batch])
            ref_in[i:i + batch] |= (d <= radii_sample[None, j:j + batch]).any(axis=1)
            sample_in[j:j + batch] |= (d <= radii_ref[i:i + batch, None]).any(axis=0)
    return float(sample_in.mean()), float(ref_in.mean())


# ----------------------------------------------------------------------------------------------------------------
# Batches and the whole evaluation.


@dataclass
class Batch:
    """An ADM batch file: images `arr_0` (N, H, W, 3) uint8, and a reference batch's precomputed statistics."""
    path: Path
    images: np.ndarray
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None
    mu_s: np.ndarray | None = None
    sigma_s: np.ndarray | None = None
    sha256: str = ""


def read_batch(path: str | Path) -> Batch:
    """An `.npz` with `arr_0` uint8 N×H×W×3 (and `mu`, `sigma`, `mu_s`, `sigma_s` where present)."""
    from flexgen.files import file_sha256

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ADM batch not found: {path} (a reference batch such as "
                                "VIRTUAL_imagenet256_labeled.npz comes from guided-diffusion's evaluations README; "
                                "a sample batch from `flexgen sample --npz`)")
    unreadable = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)   # truncated, pickled, not numpy
    try:
        loaded = np.load(path, allow_pickle=False)
    except unreadable as e:
        raise ValueError(f"{path} is not a readable .npz batch ({type(e).__name__}: {e})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is one array ({getattr(loaded, 'shape', '?')}), not an ADM batch: an .npz with "
                         "arr_0 (np.savez(path, arr_0=images))")
    with loaded as npz:
        if "arr_0" not in npz:
            raise ValueError(f"{path} has no arr_0 (the images of an ADM batch): keys {sorted(npz.keys())}")
        try:
            images = npz["arr_0"]
            stats = {k: npz[k].astype(np.float64) for k in ("mu", "sigma", "mu_s", "sigma_s") if k in npz}
        except unreadable as e:
            raise ValueError(f"{path} is not a readable .npz batch ({type(e).__name__}: {e})") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{path}: arr_0 must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    return Batch(path, images, sha256=file_sha256(path), **stats)


def _activations(detector: AdmDetector, images: np.ndarray, batch_size: int) -> dict:
    out: dict[str, list] = {"pool": [], "probs": [], "spatial": []}
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).permute(0, 3, 1, 2)
        got = detector(chunk)
        for key, parts in out.items():
            if got.get(key) is not None:
                parts.append(np.asarray(got[key], dtype=np.float64))
    return {k: np.concatenate(v) if v else None for k, v in out.items()}


def _gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    stats = FeatureStats.from_batches([features])
    return stats.mean, stats.cov


def evaluate_adm(reference: Batch, samples: Batch | Iterable, detector: AdmDetector, batch_size: int = 64) -> dict:
    """FID, sFID (None when the detector has no spatial features, with the reason), IS, precision and recall."""
    images = samples.images if isinstance(samples, Batch) else np.asarray(samples)
    ref = _activations(detector, reference.images, batch_size)
    fake = _activations(detector, images, batch_size)
    # ADM read_statistics: the reference's precomputed mu / sigma (mu_s / sigma_s) when the .npz has them
    mu, sigma = (reference.mu, reference.sigma) if reference.mu is not None else _gaussian(ref["pool"])
    result = {"fid": frechet_distance(mu, sigma, *_gaussian(fake["pool"])),
              "inception_score": inception_score(fake["probs"]), "num_samples": len(images),
              "num_reference": len(reference.images), "reference_sha256": reference.sha256,
              "reference_stats": "npz" if reference.mu is not None else "images",
              "detector_sha256": detector.sha256}
    if fake["spatial"] is None:
        result.update(sfid=None, sfid_unavailable=detector.spatial_reason)
    else:
        mu_s, sigma_s = (reference.mu_s, reference.sigma_s) if reference.mu_s is not None else _gaussian(
            ref["spatial"])
        result["sfid"] = frechet_distance(mu_s, sigma_s, *_gaussian(fake["spatial"]))
    result["precision"], result["recall"] = precision_recall(ref["pool"], fake["pool"])
    return result


class InceptionADM:
    """ADM's Inception numbers through the verified TorchScript file (see the module docstring)."""

    spatial_reason = ("the TorchScript inception-2015-12-05.pt returns pool_3 features or class probabilities only; "
                      "ADM's mixed_6/conv spatial features are not an output of it")

    def __init__(self, path: str | Path | None = None, device: str = "cpu", sha256: str | None = None):
        """`sha256` replaces the published file's digest (a test's tiny TorchScript of the same interface)."""
        from flexgen.files import verified_detector_file
        from flexgen.metrics.inception import INCEPTION_FILENAME, INCEPTION_SHA256, INCEPTION_SOURCE

        self.sha256 = sha256 or INCEPTION_SHA256
        path = verified_detector_file(path, label="Inception", filename=INCEPTION_FILENAME, env_var="FLEXGEN_INCEPTION",
                                      sha256=self.sha256, source=INCEPTION_SOURCE)
        self.net = torch.jit.load(str(path), map_location=device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict:
        from flexgen.metrics.detectors import check_uint8_images

        check_uint8_images(images, "InceptionADM")
        x = images.to(self.device).float()                                   # 0..255, as clean-fid feeds it
        pool = self.net(x, return_features=True)
        probs = self.net(x, return_features=False, no_output_bias=True)
        return {"pool": pool.double().cpu(), "probs": probs.double().cpu(), "spatial": None}


# The record's metric name and protocol stem of each ADM number: adm_fid50k is FID over 50k samples (the dataset
# name carries the resolution: imagenet256, imagenet512), never in one table with clean-fid's fid50k.
RECORD_METRICS = {"fid": ("fid", "fid"), "sfid": ("sfid", "sfid"), "inception_score": ("is", "is"),
                  "precision": ("precision", "prec"), "recall": ("recall", "rec")}


def adm_protocol(stem: str, num_samples: int) -> str:
    count = f"{num_samples // 1000}k" if num_samples % 1000 == 0 else str(num_samples)
    return f"adm_{stem}{count}"


def adm_records(result: dict, dataset: str, fake_folder: Path, detector_file: str = "", **fields) -> list:
    """One leaderboard Record per ADM number (sFID only when computed), with the model, sampler and cost from the
    samples.json beside the batch."""
    from flexgen.metrics.records import record_from_evaluation

    records = []
    for key, (metric, stem) in RECORD_METRICS.items():
        if result.get(key) is None:
            continue
        records.append(record_from_evaluation(
            {"metric": metric, "protocol": adm_protocol(stem, result["num_samples"]), "value": result[key],
             "detector": detector_file, "detector_sha256": result["detector_sha256"],
             "reference_stats_sha256": result["reference_sha256"], "num_fake": result["num_samples"]},
            dataset, fake_folder, **fields))
    return records


def check_sample_batch(samples: Batch) -> None:
    """A batch beside a sample manifest is scored only if the manifest describes it: the run complete, the batch
    recorded as this run's (`flexgen sample --npz`: its file, count and sha256). A batch with no manifest beside it
    (from elsewhere) is taken as it is, without provenance."""
    from flexgen.sampling.manifest import find_manifest

    found = find_manifest(samples.path.parent)
    if found is None:
        return
    path, manifest = found
    recorded = manifest.settings.get("npz") or {}
    if not manifest.complete:
        raise ValueError(f"{path} says its run is not complete: finish it (run the same flexgen sample command "
                         f"again) before scoring {samples.path.name}")
    if recorded.get("file") != samples.path.name:
        raise ValueError(f"{samples.path} is not the batch {path} records (the run that wrote the folder last did not "
                         "write it: it may be another run's): run flexgen sample again with --npz")
    if recorded.get("count") != len(samples.images) or recorded.get("sha256") != samples.sha256:
        raise ValueError(f"{samples.path} holds {len(samples.images)} images with sha256 {samples.sha256[:12]}…, "
                         f"but {path} records {recorded.get('count')} with {str(recorded.get('sha256'))[:12]}…: "
                         "it changed after the run; run flexgen sample again with --npz")


def adm_main(args) -> dict:
    """`flexgen eval adm --ref REF.npz --fake FAKE.npz|FOLDER`: one JSON line of FID, sFID, IS, precision, recall
    (and with --records, one leaderboard record per number)."""
    import json

    if getattr(args, "records", None) and not getattr(args, "dataset", None):
        raise ValueError("--records needs --dataset NAME (imagenet256, imagenet512: rows of different datasets never "
                         "share a table)")
    if not getattr(args, "ref", None):
        raise ValueError("flexgen eval adm needs --ref, the reference batch (e.g. VIRTUAL_imagenet256_labeled.npz)")
    unused = [f"--{name.replace('_', '-')}" for name in ("real", "protocol", "num_real", "allow_fewer", "intervals",
                                                          "train_on", "floor", "cache", "no_kid")
              if getattr(args, name, None) not in (None, False)]
    if unused:
        raise ValueError(f"{', '.join(unused)} do not apply to eval adm: ADM's evaluator scores the --fake batch "
                         "(--num-fake N: its first N) against the whole --ref batch")
    fake = Path(args.fake)
    fake = fake / "samples.npz" if fake.is_dir() else fake
    reference, samples = read_batch(args.ref), read_batch(fake)
    check_sample_batch(samples)
    if reference.images.shape[1:3] != samples.images.shape[1:3]:
        raise ValueError(f"{samples.path} holds {'×'.join(map(str, samples.images.shape[1:3]))} images but the "
                         f"reference batch {reference.path} is {'×'.join(map(str, reference.images.shape[1:3]))}: "
                         "sample at the reference's resolution")
    num = getattr(args, "num_fake", None)
    if num is not None:
        if num > len(samples.images):
            raise ValueError(f"--num-fake {num}: {samples.path} holds {len(samples.images)} images")
        samples = dataclasses.replace(samples, images=samples.images[:num])
    if len(samples.images) < 2:
        raise ValueError(f"{samples.path}: a Fréchet distance needs at least 2 samples, got {len(samples.images)}")
    detector = InceptionADM(args.detector, device=args.device)
    result = {"metric": "adm", **evaluate_adm(reference, samples, detector, batch_size=args.batch_size),
              "reference": str(reference.path), "samples": str(samples.path)}
    if getattr(args, "records", None):
        from flexgen.metrics.records import append_record

        fields = {k: getattr(args, a, None) for k, a in (("method", "method"), ("model_variant", "model_name"),
                                                           ("note", "note"))}
        for record in adm_records(result, args.dataset, samples.path.parent, "inception-2015-12-05.pt", **fields):
            append_record(args.records, record)
    print(json.dumps(result))
    return result
