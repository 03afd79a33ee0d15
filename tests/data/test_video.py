"""The video clip datasets (flexgen/data/video.py) and the synthetic clip generator (flexgen/synthetic.py,
run through its command line datasets/make_synthetic.py).

Fixture clips are written in tmp_path by tests/data_helpers.py: frame k has the value 8 + 4k in its left half and
0 in its right half, so a decoded clip tells which frames were sampled (and whether it was flipped).
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from flexgen.config import DATASETS as CONFIG_DATASETS
from flexgen.config import DataConfig
from flexgen.data import media, video_index
from flexgen.data.base import DatasetLayoutError, DataWarning
from flexgen.data.video import VideoClipDataset, build_dataset
from flexgen.data.video_index import DATASETS
from tests.data_helpers import (
    coded_frames,
    decoded,
    truncate,
    write_avi,
    write_folder,
    write_garbage,
    write_mp4,
    write_video,
)

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------------------
# Fixtures.


def make(root: Path, dataset: str, tmp_path: Path, **kwargs) -> VideoClipDataset:
    options = {"num_frames": 4, "frame_interval": 3, "image_size": 32, "cache_dir": tmp_path / "cache"}
    return VideoClipDataset(root, dataset, **{**options, **kwargs})


def layout(root: Path, dataset: str, n: int = 30) -> list[Path]:
    """Two or three clips of `n` coded frames in the layout of `dataset`."""
    if dataset == "ffs":
        return [write_mp4(root / "a" / "000.mp4", n), write_avi(root / "001.avi", n)]
    if dataset in ("ucf101", "synthetic"):
        ext, write = (".mp4", write_mp4) if dataset == "synthetic" else (".avi", write_avi)
        return [write(root / c / f"v_{c}_g01_c01{ext}", n) for c in ("Zeta", "Alpha", "Mid")]
    if dataset == "sky":
        return [write_folder(root / "v1" / "v1_1", n, "v1_frames_{k}.jpg"), write_folder(root / "v2", n)]
    return [write_folder(root / "train" / f"clip{i}", n, "{k:07d}.png") for i in range(2)]     # taichi


def load_make_synthetic():
    """datasets/make_synthetic.py, the command line of the generator that ships in the package."""
    import flexgen.synthetic

    spec = importlib.util.spec_from_file_location("make_synthetic", REPO / "datasets" / "make_synthetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.make_synthetic is flexgen.synthetic.make_synthetic and module.main is flexgen.synthetic.main
    return module


# ----------------------------------------------------------------------------------------------------------
# Presets.


def test_presets_match_the_config_choices():
    # captions: flexgen.data.captions (T2I); imagenet, latents: flexgen.data.images / latents (DiT)
    assert set(DATASETS) == set(CONFIG_DATASETS) - {"captions", "imagenet", "latents"}
    assert {name for name, p in DATASETS.items() if p.hflip} == {"ffs", "ucf101", "taichi"}
    assert {name for name, p in DATASETS.items() if p.labelled} == {"ucf101", "synthetic"}
    assert DATASETS["sky"].crop == "crop_resize"


# ----------------------------------------------------------------------------------------------------------
# Every preset: shapes, range, labels, window and stride.


@pytest.mark.parametrize("dataset", ["ffs", "sky", "ucf101", "taichi", "synthetic"])
def test_each_preset_loads_its_layout(tmp_path, dataset):
    root = tmp_path / dataset
    layout(root, dataset, n=30)
    ds = make(root, dataset, tmp_path, num_frames=5, frame_interval=3)
    assert len(ds) == (3 if dataset in ("ucf101", "synthetic") else 2) and not ds.skipped
    span = 13                                                   # (5 - 1) · 3 + 1
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            video = item["video"]
            assert video.shape == (5, 3, 32, 32) and video.dtype == torch.float32
            assert video.min() >= -1 and video.max() <= 1
            indices, _ = decoded(video)
            start = indices[0]
            assert 0 <= start <= 30 - span
            assert indices == [start + 3 * k for k in range(5)], (dataset, indices)
            assert Path(item["path"]).exists()
    if dataset in ("ucf101", "synthetic"):
        assert ds.classes == ["Alpha", "Mid", "Zeta"]
        for i in range(len(ds)):
            assert ds[i]["label"] == ds.classes.index(Path(ds[i]["path"]).parent.name)
    else:
        assert ds.classes == [] and {ds[i]["label"] for i in range(len(ds))} == {0}


def test_every_start_is_drawn_and_frames_follow_the_stride(tmp_path):
    write_folder(tmp_path / "sky" / "clip", 20)
    ds = make(tmp_path / "sky", "sky", tmp_path, num_frames=4, frame_interval=3)      # span 10: starts 0..10
    starts = set()
    for epoch in range(100):
        ds.set_epoch(epoch)
        indices, _ = decoded(ds[0]["video"])
        assert indices == [indices[0] + 3 * k for k in range(4)]
        starts.add(indices[0])
    assert starts == set(range(11))


def test_resize_and_crop_of_larger_frames(tmp_path):
    write_video(tmp_path / "ffs" / "wide.mp4", coded_frames(12, 48, 64))
    write_folder(tmp_path / "sky" / "clip", 6)
    video = make(tmp_path / "ffs", "ffs", tmp_path, num_frames=3, frame_interval=2, image_size=24)[0]["video"]
    assert video.shape == (3, 3, 24, 24)
    video = make(tmp_path / "sky", "sky", tmp_path, num_frames=2, frame_interval=1, image_size=16)[0]["video"]
    assert video.shape == (2, 3, 16, 16)


# ----------------------------------------------------------------------------------------------------------
# Flips, seeds, epochs.


def test_flip_only_where_enabled(tmp_path):
    layout(tmp_path / "ucf", "ucf101", n=20)
    write_folder(tmp_path / "sky" / "clip", 20)

    def flips(ds):
        seen = []
        for epoch in range(12):
            ds.set_epoch(epoch)
            for i in range(len(ds)):
                per_frame = decoded(ds[i]["video"])[1]
                assert len(set(per_frame)) == 1              # the whole clip flips, or none of it
                seen.append(per_frame[0])
        return seen

    assert set(flips(make(tmp_path / "ucf", "ucf101", tmp_path, hflip=True))) == {True, False}
    assert not any(flips(make(tmp_path / "ucf", "ucf101", tmp_path, hflip=False)))
    assert not any(flips(make(tmp_path / "sky", "sky", tmp_path, hflip=True)))          # Sky never flips


def test_same_seed_same_items_other_seed_other_clips(tmp_path):
    layout(tmp_path / "ffs", "ffs", n=40)
    a, b, c = (make(tmp_path / "ffs", "ffs", tmp_path, seed=s) for s in (0, 0, 1))
    for i in range(len(a)):
        assert torch.equal(a[i]["video"], b[i]["video"])

    def starts(ds):
        drawn = []
        for epoch in range(4):
            ds.set_epoch(epoch)
            drawn += [decoded(ds[i]["video"])[0][0] for i in range(len(ds))]
        return drawn

    assert starts(a) == starts(b) and starts(a) != starts(c)
    a.set_epoch(0)
    first = a[0]["video"]
    a.set_epoch(1)
    assert not torch.equal(first, a[0]["video"])


def test_cached_videos_give_the_same_items_and_decode_each_video_once(tmp_path, monkeypatch):
    import flexgen.data.video as video_module

    layout(tmp_path / "syn", "synthetic", n=30)
    plain, cached = (make(tmp_path / "syn", "synthetic", tmp_path, cache_videos=c) for c in (False, True))
    reads = []
    original = video_module.read_video
    monkeypatch.setattr(video_module, "read_video", lambda path, indices=None: reads.append(path) or
                        original(path, indices))
    for epoch in range(3):                       # other windows every epoch, from the frames decoded once
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for i in range(len(plain)):
            assert torch.equal(plain[i]["video"], cached[i]["video"])
    assert len(reads) == 3 * len(plain) + len(cached)      # the plain set decodes every item, the cached one once


def test_worker_processes_give_the_same_items(tmp_path):
    layout(tmp_path / "ffs", "ffs", n=30)
    ds = make(tmp_path / "ffs", "ffs", tmp_path)
    ds.set_epoch(3)
    serial = [batch["video"] for batch in DataLoader(ds, batch_size=1, num_workers=0)]
    parallel = [batch["video"] for batch in DataLoader(ds, batch_size=1, num_workers=2)]
    assert all(torch.equal(x, y) for x, y in zip(serial, parallel, strict=True))


# ----------------------------------------------------------------------------------------------------------
# Bad input: skipped, counted, named; the epoch completes.


def test_bad_files_are_skipped_named_and_the_epoch_completes(tmp_path):
    root = tmp_path / "ffs"
    good = [write_mp4(root / "good0.mp4", 48), write_avi(root / "sub" / "good1.avi", 48)]
    bad = [write_garbage(root / "corrupt.mp4"), write_garbage(root / "corrupt.avi"),
           truncate(write_mp4(root / "truncated.mp4", 48)), truncate(write_avi(root / "truncated.avi", 60)),
           write_mp4(root / "short.mp4", 10)]
    (root / "empty.mp4").write_bytes(b"")
    bad.append(root / "empty.mp4")
    with pytest.warns(DataWarning) as record:
        ds = make(root, "ffs", tmp_path, num_frames=16, frame_interval=3)
    message = "\n".join(str(w.message) for w in record)
    for path in bad:
        assert str(path) in message, path
    assert {Path(s.path) for s in ds.skipped} == set(bad) and len(ds) == 2
    assert "too short" in next(s.reason for s in ds.skipped if s.path.endswith("short.mp4"))
    batches = list(DataLoader(ds, batch_size=2, num_workers=0))
    assert len(batches) == 1 and batches[0]["video"].shape == (2, 16, 3, 32, 32)
    assert sorted(batches[0]["path"]) == sorted(map(str, good))


def test_decode_time_failures_fall_back_and_are_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(media, "decord", None)      # PyAV's probe trusts the header: 60 frames in a truncated avi
    root = tmp_path / "ffs"
    write_mp4(root / "a.mp4", 48)
    broken = truncate(write_avi(root / "b.avi", 60), keep=0.7)      # the header survives, 23 frames decode
    write_mp4(root / "c.mp4", 48)
    ds = make(root, "ffs", tmp_path, num_frames=16, frame_interval=3)
    assert len(ds) == 3 and not ds.skipped          # the index cannot tell
    with pytest.warns(DataWarning, match="b.avi"):
        items = list(DataLoader(ds, batch_size=1, num_workers=0))
    assert len(items) == 3 and all(item["video"].shape == (1, 16, 3, 32, 32) for item in items)
    assert [s.path for s in ds.skipped] == [str(broken)] and "decoding failed" in ds.skipped[0].reason
    assert items[1]["path"] == [str(root / "c.mp4")]                 # item 1 fell back to the next clip
    ds.set_epoch(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                               # a known failure is not retried or re-warned
        assert ds[1]["path"] == str(root / "c.mp4")


def test_corrupt_frame_and_empty_folder_in_a_frame_dataset(tmp_path):
    root = tmp_path / "sky"
    write_folder(root / "good", 12)
    bad = write_folder(root / "bad", 12)
    for k in range(3):                                               # every window (start 0, 1 or 2) hits one
        (bad / f"img_{k}.png").write_bytes(b"not a png")
    (root / "empty").mkdir()
    write_folder(root / "short", 3)
    with pytest.warns(DataWarning) as record:
        ds = make(root, "sky", tmp_path, num_frames=4, frame_interval=3)
        for epoch in range(6):
            ds.set_epoch(epoch)
            assert all(ds[i]["video"].shape == (4, 3, 32, 32) for i in range(len(ds)))
    message = "\n".join(str(w.message) for w in record)
    for name in ("empty", "short", "bad"):
        assert str(root / name) in message
    assert {Path(s.path).name for s in ds.skipped} == {"empty", "short", "bad"}


# ----------------------------------------------------------------------------------------------------------
# Wrong layouts.


def test_wrong_layouts_are_clear_errors(tmp_path):
    write_mp4(tmp_path / "videos" / "x.mp4", 8)
    write_folder(tmp_path / "frames" / "clip", 8)
    with pytest.raises(DatasetLayoutError, match="class folders"):
        make(tmp_path / "videos", "ucf101", tmp_path)
    with pytest.raises(DatasetLayoutError, match="frame folders"):
        make(tmp_path / "videos", "sky", tmp_path)
    with pytest.raises(DatasetLayoutError, match="video files"):
        make(tmp_path / "frames", "ffs", tmp_path)
    with pytest.raises(DatasetLayoutError, match="class folders"):
        make(tmp_path / "frames", "synthetic", tmp_path)
    with pytest.raises(DatasetLayoutError, match="not a folder"):
        make(tmp_path / "missing", "taichi", tmp_path)
    with pytest.raises(ValueError, match="data.root is empty"):
        build_dataset(DataConfig(dataset="ffs"))


# ----------------------------------------------------------------------------------------------------------
# The index cache.


def test_index_is_cached_reused_and_rebuilt_after_a_change(tmp_path, monkeypatch):
    root = tmp_path / "ucf"
    layout(root, "ucf101", n=20)
    first = make(root, "ucf101", tmp_path)
    assert not first.index_reused and first.index_path.is_file()
    calls = []
    probe = video_index.probe_frames
    monkeypatch.setattr(video_index, "probe_frames", lambda path: calls.append(Path(path).name) or probe(path))
    second = make(root, "ucf101", tmp_path)
    assert second.index_reused and calls == [] and second.clips == first.clips
    write_avi(root / "Alpha" / "v_Alpha_g02_c01.avi", 20)
    third = make(root, "ucf101", tmp_path)
    assert not third.index_reused and len(third) == len(first) + 1
    assert calls == ["v_Alpha_g02_c01.avi"]                          # unchanged files are not probed again
    cached = json.loads(third.index_path.read_text())
    assert cached["classes"] == ["Alpha", "Mid", "Zeta"] and len(cached["clips"]) == 4


def test_index_lives_in_the_root_or_the_user_cache_when_the_root_is_read_only(tmp_path, monkeypatch):
    root = tmp_path / "sky"
    write_folder(root / "clip", 12)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    ds = VideoClipDataset(root, "sky", num_frames=4)
    assert ds.index_path == root / ".flexgen-index-sky.json"
    assert VideoClipDataset(root, "sky", num_frames=4).index_reused          # the hidden cache is not a change
    ds.index_path.unlink()

    write = video_index._write_index

    def read_only_root(path, content):
        if root in path.parents:
            raise PermissionError(13, "Permission denied", str(path))
        write(path, content)

    monkeypatch.setattr(video_index, "_write_index", read_only_root)
    ds = VideoClipDataset(root, "sky", num_frames=4)
    assert (tmp_path / "xdg" / "flexgen" / "index") in ds.index_path.parents and not ds.index_reused
    assert VideoClipDataset(root, "sky", num_frames=4).index_reused


# ----------------------------------------------------------------------------------------------------------
# Split lists.


def test_split_lists_select_clips(tmp_path):
    root = tmp_path / "UCF101" / "UCF-101"
    for c in ("ApplyEyeMakeup", "Archery"):
        for g in (1, 8):
            write_avi(root / c / f"v_{c}_g{g:02d}_c01.avi", 12)
    lists = tmp_path / "UCF101" / "ucfTrainTestlist"                  # the official unpacking: beside the videos
    lists.mkdir()
    (lists / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n"
                                           "Archery/v_Archery_g08_c01.avi 2\nArchery/v_Archery_g09_c01.avi 2\n")
    (lists / "testlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n"
                                          "Archery/v_Archery_g01_c01.avi\n")
    assert len(make(root, "ucf101", tmp_path, split="train")) == 4      # not searched there: all clips (Latte)
    with pytest.raises(ValueError, match="no list file"):
        make(root, "ucf101", tmp_path, split="test")
    with pytest.warns(DataWarning, match="v_Archery_g09_c01.avi"):       # listed but missing
        train = make(root, "ucf101", tmp_path, split="train", split_dir=lists)
    assert sorted(Path(c.path).name for c in train.clips) == ["v_ApplyEyeMakeup_g08_c01.avi", "v_Archery_g08_c01.avi"]
    test = make(root, "ucf101", tmp_path, split="test", split_dir=lists)
    assert sorted(c.label for c in test.clips) == [0, 1] and all("_g01_" in c.path for c in test.clips)
    assert len(make(root, "ucf101", tmp_path, split="all", split_dir=lists)) == 4
    assert len(make(root, "ucf101", tmp_path, split=str(lists / "testlist01.txt"))) == 2
    lists.rename(root / "ucfTrainTestlist")                             # inside the root: found, not a class
    test = make(root, "ucf101", tmp_path, split="test")
    assert len(test) == 2 and test.classes == ["ApplyEyeMakeup", "Archery"]


# ----------------------------------------------------------------------------------------------------------
# Joint image-video output.


def test_joint_image_video_items(tmp_path):
    root = tmp_path / "ucf"
    write_avi(root / "Alpha" / "v_Alpha_g01_c01.avi", 20)
    write_video(root / "Beta" / "v_Beta_g01_c01.avi", 255 - coded_frames(20), "mpeg4")
    ds = make(root, "ucf101", tmp_path, num_frames=4, num_images=3, hflip=False)
    item = ds[0]
    assert item["video"].shape == (4 + 3, 3, 32, 32)
    assert item["image_labels"].dtype == torch.long and item["image_labels"].tolist() == [1, 1, 1]
    assert item["label"] == 0
    assert (item["video"][4:, :, :, -8:] > 0.5).all()               # Beta's inverted frames: bright right half
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["video"].shape == (2, 7, 3, 32, 32) and batch["image_labels"].shape == (2, 3)
    assert torch.equal(ds[1]["video"], ds[1]["video"])               # still images are seeded too


# ----------------------------------------------------------------------------------------------------------
# decord -> PyAV fallback.


def test_pyav_fallback_gives_the_same_frames(tmp_path, monkeypatch):
    layout(tmp_path / "ffs", "ffs", n=30)
    with_decord = make(tmp_path / "ffs", "ffs", tmp_path, num_frames=5, frame_interval=2)
    expected = [with_decord[i]["video"] for i in range(len(with_decord))]

    monkeypatch.setattr(media, "decord", None)
    without = make(tmp_path / "ffs", "ffs", tmp_path / "other", num_frames=5, frame_interval=2)
    assert [c.frames for c in without.clips] == [30, 30]
    for i, video in enumerate(expected):
        assert decoded(without[i]["video"]) == decoded(video)

    class Unopenable:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("decord cannot open this")

    monkeypatch.undo()
    monkeypatch.setattr(media.decord, "VideoReader", Unopenable)
    failing = make(tmp_path / "ffs", "ffs", tmp_path / "third", num_frames=5, frame_interval=2)
    assert not failing.skipped
    for i, video in enumerate(expected):
        assert decoded(failing[i]["video"]) == decoded(video)


# ----------------------------------------------------------------------------------------------------------
# The synthetic generator.


def test_synthetic_clips_load_through_the_synthetic_preset(tmp_path):
    module = load_make_synthetic()
    paths = module.make_synthetic(tmp_path / "syn", num_classes=4, clips_per_class=3, num_frames=24, size=32, seed=0)
    assert len(paths) == 12 and all(p.suffix == ".mp4" and p.is_file() for p in paths)
    cfg = DataConfig(dataset="synthetic", root=str(tmp_path / "syn"), num_frames=8, frame_interval=2, image_size=32)
    ds = build_dataset(cfg, split="train", seed=0, cache_dir=tmp_path / "cache")
    assert len(ds) == 12 and ds.classes == ["MoveDown", "MoveLeft", "MoveRight", "MoveUp"] and not ds.skipped
    labels = {}
    for batch in DataLoader(ds, batch_size=4):
        assert batch["video"].shape == (4, 8, 3, 32, 32)
        labels.update(zip(batch["path"], batch["label"].tolist(), strict=True))
    assert set(labels.values()) == {0, 1, 2, 3}
    assert all(label == ds.classes.index(Path(p).parent.name) for p, label in labels.items())

    # Motion: the shape's centre of mass moves right in MoveRight clips, up in MoveUp clips.
    def centre(frame):
        mass = frame.float().mean(-1) > frame.float().mean()
        ys, xs = torch.nonzero(mass, as_tuple=True)
        return xs.float().mean().item(), ys.float().mean().item()

    right = torch.from_numpy(media.read_video(tmp_path / "syn" / "MoveRight" / "v_MoveRight_g01_c01.mp4", [0, 23]))
    up = torch.from_numpy(media.read_video(tmp_path / "syn" / "MoveUp" / "v_MoveUp_g01_c01.mp4", [0, 23]))
    assert centre(right[1])[0] > centre(right[0])[0] + 8 and centre(up[1])[1] < centre(up[0])[1] - 8

    again = module.make_synthetic(tmp_path / "again", num_classes=4, clips_per_class=3, num_frames=24, size=32)
    for a, b in zip(paths[:3], again[:3], strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_synthetic_split_lists(tmp_path):
    module = load_make_synthetic()
    module.make_synthetic(tmp_path / "syn", num_classes=2, clips_per_class=8, num_frames=12, split_lists=True)
    train = make(tmp_path / "syn", "synthetic", tmp_path, split="train")
    test = make(tmp_path / "syn", "synthetic", tmp_path, split="test")
    assert len(train) == 8 and len(test) == 8 and not {c.path for c in train.clips} & {c.path for c in test.clips}


def test_many_skipped_clips_make_one_bounded_warning(tmp_path):
    """issue 30: 64 too-short clips were one 64-line warning; it names 10 and counts the rest (all are in
    dataset.skipped)."""
    root = tmp_path / "ffs"
    write_mp4(root / "long.mp4", 12)
    for i in range(13):
        write_mp4(root / f"short{i:02d}.mp4", 4)                # 4 frames at stride 3 need 10
    with pytest.warns(DataWarning) as record:
        ds = make(root, "ffs", tmp_path)
    message = str(record[0].message)
    assert len(ds.skipped) == 13 and len(ds.clips) == 1
    assert message.count("\n") == 11 and message.endswith("... and 3 more (see dataset.skipped)")
