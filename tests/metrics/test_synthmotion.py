"""The demo's yardstick: the SynthMotion classifier as a detector (contract, file, names), the board it feeds
telling a model that makes the data from one that does not (issue 12), and ranking only beyond the 95% intervals:
two seed sets of one model share a rank, a damaged model is ranked below them (issue 28); `flexgen eval
synthmotion` outside the demo."""

import argparse

import numpy as np
import pytest
import torch

from flexgen.checkpoint import CheckpointError
from flexgen.cli import main
from flexgen.config import load_config
from flexgen.data.media import write_video
from flexgen.files import file_sha256
from flexgen.metrics import synthmotion as sm
from flexgen.metrics.detectors import VideoDetector
from flexgen.metrics.evaluate import evaluate
from flexgen.metrics.records import append_record, build_tables, read_records
from flexgen.metrics.synthmotion_eval import evaluate_samples, records_of
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


def _real_clips_as_samples(root, detector, folder, split="heldout", videos=slice(None), damage=None):
    """Real clips written as a `flexgen sample` folder (what a perfect model would draw); `damage` (float frames
    (N, 8, 3, 16, 16) -> the same) makes a worse model of them."""
    every_video, every_label, _ = sm.read_clip_set(root / split)
    videos, labels = every_video[videos], every_label[videos]
    clips = sm.random_clips(videos, detector.config, np.random.default_rng(1))
    small = torch.nn.functional.interpolate(clips.flatten(0, 1).float(), size=(16, 16), mode="area")
    small = small.unflatten(0, clips.shape[:2])                                       # (N, 8, 3, 16, 16)
    small = (small if damage is None else damage(small)).round().clamp(0, 255).to(torch.uint8)
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
        accuracy = evaluate_samples(root / "heldout", tmp_path / name, detector, tmp_path / "ref")[2]
        assert accuracy["metric"] == "acc_synthmotion"
        scores[name] = (result["value"], accuracy["value"])
    (fd_good, acc_good), (fd_bad, acc_bad) = scores["good"], scores["bad"]
    assert acc_good >= 0.9 and acc_bad <= 0.5, scores
    assert fd_bad > 5 * fd_good, scores


def _noisy_and_blurred(frames: torch.Tensor) -> torch.Tensor:
    """A model at too few steps, stood in for: each frame blurred over 3 × 3 pixels and grainy."""
    blurred = torch.nn.functional.avg_pool2d(frames.flatten(0, 1), 3, stride=1, padding=1, count_include_pad=False)
    noise = 20 * torch.randn(blurred.shape, generator=torch.Generator().manual_seed(0))
    return (blurred + noise).unflatten(0, frames.shape[:2])


def test_the_board_ranks_only_beyond_the_intervals(yardstick, tmp_path):
    # Two seed sets of one model (two halves of the training clips, written as samples) and a damaged model: on
    # the continuous grades the seed sets share a rank, the damaged model is ranked below both beyond the
    # intervals; every record keeps its interval.
    root, _, detector = yardstick
    folders = {"seeds A": dict(split="train", videos=slice(0, None, 2)),
               "seeds B": dict(split="train", videos=slice(1, None, 2)),
               "damaged": dict(split="train", videos=slice(0, None, 2), damage=_noisy_and_blurred)}
    records = tmp_path / "records.jsonl"
    for name, how in folders.items():
        _real_clips_as_samples(root, detector, tmp_path / name, **how)
        for record in records_of(evaluate_samples(root / "heldout", tmp_path / name, detector, tmp_path / "ref"),
                                 "synthmotion", tmp_path / name, model_variant=name):
            assert record.interval is not None and record.interval[0] <= record.value <= record.interval[1] + 1e-9
            append_record(records, record)
    tables = {table.key.metric: table for table in build_tables(read_records(records))}
    assert sorted(tables) == ["acc_synthmotion", "fd_synthmotion", "kid_synthmotion", "tone_synthmotion",
                              "track_synthmotion"]
    for metric in ("tone_synthmotion", "track_synthmotion"):
        table = tables[metric]
        ranks = dict(zip((r.model_variant for r in table.rows), table.ranks(), strict=True))
        assert ranks == {"seeds A": "1=", "seeds B": "1=", "damaged": "3"}, (metric, ranks)


def test_eval_synthmotion_outside_the_demo(yardstick, tmp_path, capsys):
    # A user with the synthetic clips and no demo: train a detector (--train-on), score the real-vs-real floor
    # and a sample folder, and get records with intervals.
    root, _, detector = yardstick
    _real_clips_as_samples(root, detector, tmp_path / "samples")
    det = tmp_path / "det" / "synthmotion.safetensors"
    common = ["eval", "synthmotion", "--real", str(root / "heldout"), "--detector", str(det), "--cache",
              str(tmp_path / "cache"), "--records", str(tmp_path / "r.jsonl")]
    assert main([*common, "--fake", str(root / "train"), "--floor", "--num-real", "16", "--train-on",
                 str(root / "train"), "--train-steps", "5"]) == 0
    assert det.is_file() and "trained a SynthMotion detector" in capsys.readouterr().out
    assert main([*common, "--fake", str(tmp_path / "samples")]) == 0
    records = read_records(tmp_path / "r.jsonl")
    assert len(records) == 10 and all(r.interval is not None and r.protocol == "synthmotion16_8f" for r in records)
    floor = [r for r in records if r.is_floor]
    assert len(floor) == 5 and {r.model_variant for r in floor} == {"real clips"}
    assert {r.storage for r in records} == {"mp4"} and {r.dataset for r in records} == {"synthmotion"}
    # the floor from the held-out folder itself: a second draw among the videos the first left (16 = 2 × 8)
    assert main([*common, "--fake", str(root / "heldout"), "--floor", "--num-real", "8"]) == 0
    assert read_records(tmp_path / "r.jsonl")[-1].num_samples == 8
    for args, message in ((["--fake", str(root / "train"), "--floor"], "--floor needs --num-real"),
                          (["--fake", str(root / "heldout"), "--floor", "--num-real", "9"],
                           "besides the 9 of the first draw, found 7"),
                          (["--fake", str(tmp_path / "samples"), "--real", str(tmp_path / "nowhere")], "nowhere")):
        assert main([*common, *args]) != 0
        assert message in capsys.readouterr().err
