"""Inception (clean-fid "clean") image features and `flexgen eval fid`, offline.

No weights are needed: the network is injected (a fixed random projection of mean-pooled 299x299 inputs) or a tiny
TorchScript stand-in with the same `.layers` interface; the real file is used only by the parity test, which is
skipped when it is absent. clean-fid's own resizer and feature pipeline (with the same injected network) are the
reference; nothing here may download (torch.jit.load and clean-fid's downloader are patched to fail where needed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from flexgen.metrics import inception
from flexgen.metrics.eval_command import add_eval_arguments, eval_main
from flexgen.metrics.evaluate import evaluate, metric_name
from flexgen.metrics.inception import (
    INCEPTION_SHA256,
    InceptionDetector,
    clean_resize,
    default_inception_path,
    load_inception_torchscript,
)
from flexgen.metrics.protocols import Protocol
from flexgen.metrics.selection import select_fake_images, select_real_images

TINY_FID = Protocol("fid8", "fid", num_real=8, num_fake=8, num_frames=1, real_stride=1, fake_stride=1,
                    min_real_frames=1, seed=0)


class TinyInception(nn.Module):
    """float (n, 3, 299, 299) in [0, 255] -> (n, dim): a fixed random projection of 2x2 mean-pooled pixels."""

    def __init__(self, seed: int = 0, dim: int = 4):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("weight", torch.randn(3 * 2 * 2, dim, generator=generator))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 299, 299)
        self.calls += 1
        return nn.functional.adaptive_avg_pool2d(x / 255.0, 2).flatten(1) @ self.weight


def tiny_detector(seed: int = 0) -> InceptionDetector:
    sha = hashlib.sha256(f"random-inception seed={seed}".encode()).hexdigest()
    return InceptionDetector(model=TinyInception(seed), name="random-inception", sha256=sha, batch_size=3)


def write_images(folder: Path, count: int, seed: int = 0, shift: int = 0, size=(20, 24)) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 200, size=(*size, 3)) + shift
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"img_{i:03d}.png")
    return folder


@pytest.fixture
def no_jit_load(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("torch.jit.load must not be called")

    monkeypatch.setattr(torch.jit, "load", fail)


@pytest.fixture
def no_download(monkeypatch):
    import cleanfid.downloads_helper
    import cleanfid.inception_torchscript

    def fail(*args, **kwargs):
        raise AssertionError("clean-fid must not download")

    monkeypatch.setattr(cleanfid.downloads_helper, "check_download_url", fail)
    monkeypatch.setattr(cleanfid.inception_torchscript, "check_download_inception", fail)


# ---------------------------------------------------------------------------------------------------------------
# Resize and features agree with clean-fid's own pipeline
# ---------------------------------------------------------------------------------------------------------------
def test_clean_resize_matches_cleanfid(tmp_path: Path):
    from cleanfid.resize import build_resizer
    from cleanfid.utils import ResizeDataset

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    ours = clean_resize(torch.from_numpy(image).permute(2, 0, 1)[None])
    assert ours.dtype == torch.float32 and ours.shape == (1, 3, 299, 299)

    reference = build_resizer("clean")(image)                                      # (299, 299, 3) float32
    assert np.array_equal(ours[0].permute(1, 2, 0).numpy(), reference)

    # Independently: PIL bicubic per channel in 'F' mode, clipped, not requantised.
    manual = np.stack([np.asarray(Image.fromarray(image[:, :, c].astype(np.float32), mode="F")
                                  .resize((299, 299), resample=Image.BICUBIC)).clip(0, 255) for c in range(3)])
    assert np.array_equal(ours[0].numpy(), manual)
    assert not np.array_equal(manual, manual.round())                              # really float, not uint8

    Image.fromarray(image).save(tmp_path / "a.png")                                # clean-fid's file path
    assert torch.equal(ResizeDataset([str(tmp_path / "a.png")], mode="clean")[0], ours[0])


def test_detector_matches_cleanfid_features(tmp_path: Path, no_download):
    from cleanfid.fid import get_files_features

    folder = write_images(tmp_path / "imgs", 5, seed=3, size=(31, 17))
    files = [str(p) for p in sorted(folder.glob("*.png"))]
    model = TinyInception()
    theirs = get_files_features(files, model, num_workers=0, batch_size=2, device=torch.device("cpu"),
                                mode="clean", verbose=False)
    detector = InceptionDetector(model=model, batch_size=3)
    images = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
    ours = detector(images.permute(0, 3, 1, 2))
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-5, atol=1e-6)


def test_detector_contract():
    detector = tiny_detector()
    images = torch.randint(0, 256, (7, 3, 20, 24), dtype=torch.uint8)
    features = detector(images)
    assert features.dtype == torch.float64 and features.shape == (7, 4)
    assert detector.model.calls == 3                                               # batch_size=3: 3 + 3 + 1
    assert torch.equal(features, detector(images))
    assert detector(images[:0]).shape == (0, 2048)
    with pytest.raises(TypeError, match="uint8"):
        detector(images.float())
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        detector(images[:, :1])
    assert detector.name == "random-inception"
    assert metric_name("fid", detector) == "fid[random-inception]"
    assert metric_name("fid", InceptionDetector(model=TinyInception())).startswith("fid[custom-")

    class Standard:
        name, sha256 = "inception", INCEPTION_SHA256

    assert metric_name("fid", Standard()) == "fid"
    assert metric_name("fvd", Standard()) == "fvd[inception]"


# ---------------------------------------------------------------------------------------------------------------
# Weight file: located from the environment, verified before torch.jit.load
# ---------------------------------------------------------------------------------------------------------------
def test_default_path(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("FLEXGEN_INCEPTION", raising=False)
    monkeypatch.setenv("FLEXGEN_CACHE", str(tmp_path / "cache"))
    assert default_inception_path() == tmp_path / "cache" / "detectors" / "inception-2015-12-05.pt"
    monkeypatch.setenv("FLEXGEN_INCEPTION", str(tmp_path / "x.pt"))
    assert default_inception_path() == tmp_path / "x.pt"


def test_missing_and_wrong_weights(tmp_path: Path, monkeypatch, no_jit_load, no_download):
    monkeypatch.delenv("FLEXGEN_INCEPTION", raising=False)
    monkeypatch.setenv("FLEXGEN_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError) as missing:
        InceptionDetector()
    message = str(missing.value)
    assert "Inception detector weights not found" in message and INCEPTION_SHA256 in message
    assert str(tmp_path / "cache" / "detectors" / "inception-2015-12-05.pt") in message
    assert "FLEXGEN_INCEPTION" in message

    wrong = tmp_path / "inception-2015-12-05.pt"
    wrong.write_bytes(b"not the inception network")
    with pytest.raises(ValueError, match="refusing to load") as bad:
        InceptionDetector(path=wrong)
    assert hashlib.sha256(b"not the inception network").hexdigest() in str(bad.value)
    assert INCEPTION_SHA256 in str(bad.value) and str(wrong) in str(bad.value)


class _Layers(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)).repeat(1, 683)[:, :2048].reshape(-1, 2048, 1, 1)


class _FakeScript(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = _Layers()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def test_verified_file_loads_through_cleanfid_wrapper(tmp_path: Path):
    """A stand-in TorchScript file with the right interface: loaded once its sha256 matches, normalised inside."""
    path = tmp_path / "stand-in.pt"
    torch.jit.save(torch.jit.script(_FakeScript()), str(path))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="refusing to load"):
        load_inception_torchscript(path)                                           # standard sha expected
    model = load_inception_torchscript(path, sha256=sha)
    x = torch.full((2, 3, 299, 299), 192.0)
    assert torch.allclose(model(x), torch.full((2, 2048), 0.5))                    # (192 - 128) / 128
    detector = InceptionDetector(model=model, name="stand-in")
    features = detector(torch.full((2, 3, 10, 10), 64, dtype=torch.uint8))
    assert features.shape == (2, 2048) and torch.allclose(features, torch.full((2, 2048), -0.5, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------------------------
# flexgen eval fid on image folders
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture
def image_sets(tmp_path: Path):
    real = write_images(tmp_path / "real", 10, seed=0)
    same = tmp_path / "same"
    shutil.copytree(real, same)
    shifted = write_images(tmp_path / "shifted", 10, seed=0, shift=50)
    return real, same, shifted


def test_image_sampling(image_sets):
    real, _, _ = image_sets
    chosen = select_real_images(real, TINY_FID)
    assert len(chosen) == 8 and chosen.num_candidates == 10
    assert chosen.paths == sorted(chosen.paths) and chosen.paths == select_real_images(real, TINY_FID).paths
    fake = select_fake_images(real, TINY_FID, batch_size=3)
    assert [p.name for p in fake.paths] == [f"img_{i:03d}.png" for i in range(8)]
    batches = list(fake)
    assert [b.shape for b in batches] == [(3, 3, 20, 24)] * 2 + [(2, 3, 20, 24)]
    assert all(b.dtype == torch.uint8 for b in batches)
    with pytest.raises(ValueError, match="needs 12 generated images"):
        select_fake_images(real, TINY_FID.with_counts(num_fake=12))


def test_evaluate_fid(tmp_path: Path, image_sets):
    real, same, shifted = image_sets
    cache = tmp_path / "cache"
    detector = tiny_detector()
    every = TINY_FID.with_counts(10, 10)                                           # all 10 real images
    assert every.name == "fid10"
    identical = evaluate(every, real, real, detector, cache, with_kid=False)
    assert abs(identical["value"]) < 1e-9
    assert identical["metric"] == "fid[random-inception]" and identical["num_real"] == 10
    copied = evaluate(every, real, same, detector, cache)
    assert not copied["reference_cache_hit"] and abs(copied["value"]) < 1e-9     # with_kid: another key
    assert np.isfinite(copied["kid"])                                              # unbiased KID: not exactly 0
    far = evaluate(every, real, shifted, detector, cache)
    assert far["reference_cache_hit"] and far["value"] > 1e-3
    assert far["detector_sha256"] == detector.sha256 and far["protocol"] == "fid10"
    subset = evaluate(TINY_FID, real, real, detector, cache)                       # 8 of 10 real vs first 8
    assert subset["num_real"] == 8 and subset["value"] > 0


def test_eval_main_fid(tmp_path: Path, image_sets, monkeypatch, capsys):
    real, _, shifted = image_sets
    parser = add_eval_arguments(argparse.ArgumentParser())
    argv = ["fid", "--real", str(real), "--fake", str(shifted), "--protocol", "fid50k", "--num-real", "8",
            "--num-fake", "8", "--cache", str(tmp_path / "cache"), "--device", "cpu", "--batch-size", "4"]
    monkeypatch.setenv("FLEXGEN_INCEPTION", str(tmp_path / "absent.pt"))
    with pytest.raises(FileNotFoundError, match="Inception detector weights not found"):
        eval_main(parser.parse_args(argv))

    made = []

    def injected(path=None, device="cpu", batch_size=32):
        made.append((path, device, batch_size))
        return tiny_detector()

    monkeypatch.setattr(inception, "InceptionDetector", injected)
    result = eval_main(parser.parse_args(argv))
    assert made == [(None, "cpu", 4)]
    assert result["protocol"] == "fid8" and result["metric"] == "fid[random-inception]" and result["value"] > 1e-3
    assert result["num_real"] == 8 and result["num_fake"] == 8 and "kid" in result
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["value"] == result["value"]


# ---------------------------------------------------------------------------------------------------------------
# The real weight file, when present
# ---------------------------------------------------------------------------------------------------------------
def test_real_weights_parity(tmp_path: Path, no_download):
    path = default_inception_path()
    if not path.is_file():
        reason = f"Inception weights absent at {path} (set $FLEXGEN_INCEPTION or $FLEXGEN_CACHE); parity not checked"
        print(reason)
        pytest.skip(reason)
    detector = InceptionDetector(path=path, batch_size=2)
    assert detector.sha256 == INCEPTION_SHA256 and metric_name("fid", detector) == "fid"
    folder = write_images(tmp_path / "imgs", 3, seed=5, size=(64, 48))
    files = [str(p) for p in sorted(folder.glob("*.png"))]
    images = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
    ours = detector(images.permute(0, 3, 1, 2))
    assert ours.shape == (3, 2048) and ours.dtype == torch.float64 and torch.isfinite(ours).all()

    from cleanfid.fid import get_files_features
    from cleanfid.inception_torchscript import InceptionV3W

    link = tmp_path / "weights"
    link.mkdir()
    os.symlink(path.resolve(), link / "inception-2015-12-05.pt")
    theirs = get_files_features(files, InceptionV3W(str(link), download=False), num_workers=0, batch_size=2,
                                device=torch.device("cpu"), mode="clean", verbose=False)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-4, atol=1e-4)
