"""ADM's evaluation numbers (flexgen.metrics.adm) against float64 references written from the evaluator's
definitions, on synthetic activations, and the whole batch -> metrics path with a tiny detector."""

import math

import numpy as np
import pytest
import torch

from flexgen.metrics.adm import (
    Batch,
    evaluate_adm,
    inception_score,
    manifold_radii,
    precision_recall,
    read_batch,
    spatial_features,
)
from flexgen.metrics.frechet import frechet_distance
from tests.metrics_helpers import TinyInceptionScript


def test_inception_score_matches_the_definition():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, 5)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = []
    for start in (0, 5, 10):                                      # splits of 5: 5, 5, 2
        part = probs[start:start + 5]
        marginal = [sum(p[c] for p in part) / len(part) for c in range(5)]
        kl = [sum(p[c] * (math.log(p[c]) - math.log(marginal[c])) for c in range(5)) for p in part]
        expected.append(math.exp(sum(kl) / len(kl)))
    assert inception_score(probs, split_size=5) == pytest.approx(sum(expected) / 3, rel=1e-12)
    assert inception_score(np.full((10, 4), 0.25)) == pytest.approx(1.0)          # no information: IS 1
    confident = np.full((12, 4), 1e-12) + np.eye(4)[[0, 1, 2, 3] * 3]            # (a softmax is never exactly 0)
    assert inception_score(confident / confident.sum(1, keepdims=True)) == pytest.approx(4.0, rel=1e-6)


def brute_force_pr(ref, fake, k=3):
    def radii(x):
        return [sorted(sum((a - b) ** 2) for b in x)[k] for a in x]        # index 0 is the point itself
    r_ref, r_fake = radii(ref), radii(fake)
    precision = np.mean([any(sum((f - r) ** 2) <= rr for r, rr in zip(ref, r_ref, strict=True)) for f in fake])
    recall = np.mean([any(sum((r - f) ** 2) <= rf for f, rf in zip(fake, r_fake, strict=True)) for r in ref])
    return precision, recall


def test_precision_recall_match_the_definition_in_any_batching():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(40, 6))
    fake = rng.normal(size=(30, 6)) * 0.5 + 0.8                   # shifted and narrower: precision != recall
    expected = brute_force_pr(ref, fake)
    assert precision_recall(ref, fake) == pytest.approx(expected, abs=1e-12)
    assert precision_recall(ref, fake, batch=7) == pytest.approx(expected, abs=1e-12)   # ADM's row/column blocks
    assert expected[0] != expected[1]
    assert manifold_radii(ref)[0] == pytest.approx(sorted(((ref - ref[0]) ** 2).sum(1))[3])
    same = precision_recall(ref, ref)
    assert same == (1.0, 1.0)


def test_spatial_features_are_the_first_seven_channels_in_tf_order():
    x = torch.randn(2, 10, 17, 17)
    out = spatial_features(x)
    nhwc = x.permute(0, 2, 3, 1).numpy()                          # TF's layout, then [..., :7] and flatten
    assert out.shape == (2, 17 * 17 * 7) and np.array_equal(out.numpy(), nhwc[..., :7].reshape(2, -1))


class TinyDetector:
    """Deterministic features of uint8 images: a fixed projection of 4×4 mean-pooled pixels (pool), its softmax over
    5 "classes" (probs), and one channel of 17×17 maps (spatial)."""
    sha256 = "tiny"
    spatial_reason = ""

    def __init__(self, spatial=True):
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(48, 8, generator=g, dtype=torch.float64)
        self.c = torch.randn(8, 5, generator=g, dtype=torch.float64)
        self.spatial = spatial
        if not spatial:
            self.spatial_reason = "no mixed_6/conv in this detector"

    def __call__(self, images):
        x = torch.nn.functional.adaptive_avg_pool2d(images.double() / 255, 4).flatten(1)     # (n, 48)
        pool = x @ self.w
        probs = torch.softmax(pool @ self.c, dim=1)
        maps = torch.nn.functional.interpolate(images.double()[:, :1] / 255, size=(17, 17), mode="bilinear")
        return {"pool": pool, "probs": probs, "spatial": spatial_features(maps) if self.spatial else None}


def test_reference_statistics_from_the_npz_and_the_whole_path(tmp_path):
    rng = np.random.default_rng(2)
    ref_images = rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    fake_images = np.clip(ref_images[:20].astype(int) + rng.integers(-40, 40, (20, 16, 16, 3)), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "ref.npz", arr_0=ref_images)
    np.savez(tmp_path / "fake.npz", arr_0=fake_images)
    detector = TinyDetector()
    ref, fake = read_batch(tmp_path / "ref.npz"), read_batch(tmp_path / "fake.npz")
    result = evaluate_adm(ref, fake, detector, batch_size=7)
    feats = {name: detector(torch.from_numpy(b.images).permute(0, 3, 1, 2)) for name, b in (("r", ref), ("f", fake))}

    def gaussian(x):
        x = x.numpy()
        return x.mean(0), np.cov(x, rowvar=False)                  # ADM: np.mean, np.cov (N - 1)
    assert result["fid"] == pytest.approx(frechet_distance(*gaussian(feats["r"]["pool"]),
                                                           *gaussian(feats["f"]["pool"])), rel=1e-6)
    assert result["sfid"] == pytest.approx(frechet_distance(*gaussian(feats["r"]["spatial"]),
                                                            *gaussian(feats["f"]["spatial"])), rel=1e-6)
    assert result["inception_score"] == pytest.approx(inception_score(feats["f"]["probs"].numpy()))
    assert (result["precision"], result["recall"]) == pytest.approx(
        brute_force_pr(feats["r"]["pool"].numpy(), feats["f"]["pool"].numpy()), abs=1e-12)
    assert result["reference_stats"] == "images" and len(result["reference_sha256"]) == 64

    # a reference batch with precomputed statistics: ADM uses them for FID / sFID (P/R still need its images)
    mu, sigma = gaussian(feats["r"]["pool"])
    np.savez(tmp_path / "ref_stats.npz", arr_0=ref_images, mu=mu + 1.0, sigma=sigma, mu_s=np.zeros(17 * 17),
             sigma_s=np.eye(17 * 17))
    with_stats = evaluate_adm(read_batch(tmp_path / "ref_stats.npz"), fake, detector)
    assert with_stats["fid"] == pytest.approx(frechet_distance(mu + 1.0, sigma, *gaussian(feats["f"]["pool"])))
    assert with_stats["fid"] != pytest.approx(result["fid"])
    assert with_stats["sfid"] == pytest.approx(frechet_distance(np.zeros(289), np.eye(289),
                                                                *gaussian(feats["f"]["spatial"])))
    assert with_stats["precision"] == result["precision"] and with_stats["reference_stats"] == "npz"

    # no spatial features: sFID is reported unavailable with the reason, never filled with something else
    plain = evaluate_adm(ref, fake, TinyDetector(spatial=False))
    assert plain["sfid"] is None and "mixed_6" in plain["sfid_unavailable"]

    # bad batches name the file
    np.savez(tmp_path / "bad.npz", images=ref_images)
    with pytest.raises(ValueError, match="no arr_0"):
        read_batch(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="VIRTUAL_imagenet256_labeled"):
        read_batch(tmp_path / "missing.npz")
    assert isinstance(ref, Batch)


def test_torchscript_detector_end_to_end_and_errors(tmp_path, capsys):
    from flexgen.cli import main
    from flexgen.files import file_sha256
    from flexgen.metrics.adm import InceptionADM

    torch.manual_seed(0)
    script = torch.jit.script(TinyInceptionScript())
    path = tmp_path / "tiny.pt"
    script.save(str(path))
    detector = InceptionADM(path, sha256=file_sha256(path))
    rng = np.random.default_rng(3)
    ref = Batch(tmp_path / "r", rng.integers(0, 256, (20, 12, 12, 3), dtype=np.uint8))
    fake = Batch(tmp_path / "f", rng.integers(0, 256, (18, 12, 12, 3), dtype=np.uint8))
    result = evaluate_adm(ref, fake, detector, batch_size=5)
    with torch.no_grad():
        probs = script(torch.from_numpy(fake.images).permute(0, 3, 1, 2), no_output_bias=True).double().numpy()
    assert result["inception_score"] == pytest.approx(inception_score(probs), rel=1e-9)    # bias-free softmax
    assert result["sfid"] is None and "mixed_6/conv" in result["sfid_unavailable"]
    assert 0 <= result["precision"] <= 1 and result["fid"] > 0
    # the command: a missing detector or reference batch is named, with where it comes from
    np.savez(tmp_path / "fake.npz", arr_0=fake.images)
    np.savez(tmp_path / "ref.npz", arr_0=ref.images)
    assert main(["eval", "adm", "--ref", str(tmp_path / "ref.npz"), "--fake", str(tmp_path / "fake.npz"),
                 "--detector", str(tmp_path / "none.pt")]) == 2
    err = capsys.readouterr().err
    assert "none.pt" in err and "f58cb9b6" in err
    assert main(["eval", "adm", "--ref", str(tmp_path / "VIRTUAL_imagenet256_labeled.npz"), "--fake",
                 str(tmp_path / "fake.npz")]) == 2
    assert "guided-diffusion" in capsys.readouterr().err


def test_real_inception_matches_clean_fids_tensorflow_mode():
    """With the real file: ADM's pool_3 features = clean-fid's legacy_tensorflow features (the TF graph's resize)."""
    from flexgen.metrics.inception import INCEPTION_SHA256, default_inception_path

    path = default_inception_path()
    if not path.is_file():
        pytest.skip(f"Inception weights absent at {path} (sha256 {INCEPTION_SHA256}); ADM parity not checked")
    from cleanfid.inception_torchscript import InceptionV3W

    from flexgen.metrics.adm import InceptionADM

    ours = InceptionADM(path)
    theirs = InceptionV3W(str(path.parent), download=False, resize_inside=True).eval()
    images = torch.from_numpy(np.random.default_rng(4).integers(0, 256, (3, 3, 64, 80), dtype=np.uint8))
    with torch.no_grad():
        expected = theirs(images.float()).double()
    torch.testing.assert_close(ours(images)["pool"], expected, rtol=1e-5, atol=1e-5)
