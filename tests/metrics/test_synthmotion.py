"""The demo's yardstick: the SynthMotion classifier as a detector (contract, file, names), and the board it feeds
telling a model that makes the data from one that does not (issue 12)."""

import argparse

import numpy as np
import pytest
import torch

from flexgen.checkpoint import CheckpointError
from flexgen.config import load_config
from flexgen.data.media import write_video
from flexgen.files import file_sha256
from flexgen.metrics import synthmotion as sm
from flexgen.metrics.detectors import VideoDetector
from flexgen.metrics.evaluate import evaluate
from flexgen.registry import build_denoiser
from flexgen.sample import sample_main
from flexgen.sampling import manifest as mf
from flexgen.synthetic import make_synthetic

DEMO = "configs/demo/demo-dense.yaml"


@pytest.fixture(scope="module")
def yardstick(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthmotion")
    make_synthetic(root / "train", clips_per_class=8, seed=0)
    make_synthetic(root / "heldout", clips_per_class=4, seed=1)
    net = sm.train_classifier(root / "train", steps=300)
    sha = sm.save(net, root / "synthmotion.safetensors")
    return root, sha, sm.SynthMotionDetector(root / "synthmotion.safetensors", sha256=sha)


def test_the_classifier_is_a_verified_video_detector(yardstick):
    root, sha, detector = yardstick
    assert sha == file_sha256(root / "synthmotion.safetensors") == detector.sha256
    assert isinstance(detector, VideoDetector)
    videos, labels, classes = sm.read_clip_set(root / "heldout")
    assert classes == ["MoveDown", "MoveLeft", "MoveRight", "MoveUp"] and len(videos) == 16
    clips = sm.random_clips(videos, detector.config, np.random.default_rng(0))     # (16, 8, 3, 32, 32) uint8
    assert clips.shape == (16, 8, 3, 32, 32) and clips.dtype == torch.uint8
    features = detector(clips)
    assert features.shape == (16, detector.config.width) and features.dtype == torch.float64
    assert detector.accuracy(clips, labels) >= 0.9                                 # held-out real clips
    # Reversed in time, a clip moves the other way: the classifier reads motion, not the shape or its colour.
    reversed_labels = [{0: 3, 1: 2, 2: 1, 3: 0}[label] for label in labels]
    assert detector.accuracy(clips.flip(1), reversed_labels) >= 0.9
    with pytest.raises(TypeError, match="uint8"):
        detector(clips.float())
    with pytest.raises(CheckpointError, match="does not match"):
        sm.SynthMotionDetector(root / "synthmotion.safetensors", sha256="0" * 64)
    with pytest.raises(FileNotFoundError, match="flexgen demo trains"):
        sm.SynthMotionDetector(root / "missing.safetensors")


def _real_clips_as_samples(root, detector, folder):
    """Held-out real clips written as a `flexgen sample` folder (what a perfect model would draw)."""
    videos, labels, _ = sm.read_clip_set(root / "heldout")
    clips = sm.random_clips(videos, detector.config, np.random.default_rng(1))
    small = torch.nn.functional.interpolate(clips.flatten(0, 1).float(), size=(16, 16), mode="area")
    small = small.round().to(torch.uint8).unflatten(0, clips.shape[:2])            # (N, 8, 3, 16, 16)
    entries = mf.entries(len(small), 0, lambda i: f"{i:04d}.mp4", labels)
    manifest = mf.SampleManifest("flexgen sample", "latte", "real clips", "baseline", "", "", "none", 0, 1.0, 0,
                                 entries, storage="mp4")
    mf.start_run(manifest, folder / "samples.json")
    for entry, video in zip(entries, small, strict=True):
        write_video(folder / entry.file, video, fps=8)
    mf.finish_run(manifest, folder / "samples.json")


def test_the_board_tells_a_model_that_makes_the_data_from_one_that_does_not(yardstick, tmp_path):
    root, _, detector = yardstick
    protocol = sm.protocol(detector.config, num_real=16)
    _real_clips_as_samples(root, detector, tmp_path / "good")
    weights = tmp_path / "untrained.safetensors"
    torch.manual_seed(0)
    untrained = build_denoiser(load_config(DEMO))
    with torch.no_grad():                              # not the zero init (which draws flat frames): a random net
        for p in untrained.parameters():
            p.normal_(0, 0.05)
    untrained.export(weights)
    sample_main(argparse.Namespace(config=DEMO, ckpt=str(weights), out=str(tmp_path / "bad"), num_samples=16,
                                   sampler=None, steps=5, cfg_scale=None, seed=0, batch_size=None, device="cpu",
                                   dtype="float32", fps=8, sha256=None, no_progress=True, overwrite=False,
                                   overrides=[]))
    scores = {}
    for name in ("good", "bad"):
        result = evaluate(protocol, root / "heldout", tmp_path / name, detector, tmp_path / "ref", with_kid=False)
        assert result["metric"] == "fd_synthmotion" and result["protocol"] == "synthmotion16_8f"
        scores[name] = (result["value"], sm.sample_accuracy(tmp_path / name, detector, protocol)["value"])
    (fd_good, acc_good), (fd_bad, acc_bad) = scores["good"], scores["bad"]
    assert acc_good >= 0.9 and acc_bad <= 0.5, scores
    assert fd_bad > 5 * fd_good, scores
