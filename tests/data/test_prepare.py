"""`flexgen data prepare` (flexgen/data/prepare.py): the index report, the clips too short for training, and FVD
reference frame folders; `flexgen data cache-text` is tested with the caption data (tests/data/test_captions.py).
Fixture clips are written in tmp_path by tests/data_helpers.py."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from PIL import Image

from flexgen.data.base import DataWarning
from flexgen.data.prepare import add_prepare_arguments, prepare, prepare_main
from flexgen.data.video import VideoClipDataset
from tests.data_helpers import write_avi, write_folder, write_garbage, write_mp4

# ----------------------------------------------------------------------------------------------------------
# prepare: index report and FVD reference frame folders.


def test_prepare_writes_depth_two_frame_folders(tmp_path, capsys):
    src = tmp_path / "ucf"
    write_avi(src / "Alpha" / "v_Alpha_g01_c01.avi", 7)
    write_mp4(src / "Beta" / "v_Beta_g01_c01.mp4", 5)
    write_garbage(src / "Beta" / "v_Beta_g02_c01.avi")
    dst = tmp_path / "fvd_real"
    report = prepare("ucf101", src, dst, size=24, split="all", cache_dir=tmp_path / "cache")
    out = capsys.readouterr().out
    assert "2 clips, 2 classes, 12 frames" in out and "v_Beta_g02_c01.avi" in out
    assert report.videos_written == 2 and report.frames_written == 12 and len(report.skipped) == 1
    assert sorted(p.name for p in dst.iterdir()) == ["v_Alpha_g01_c01", "v_Beta_g01_c01"]
    files = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*"))
    assert all(len(Path(f).parts) in (1, 2) for f in files)
    frames = sorted((dst / "v_Alpha_g01_c01").iterdir())
    assert [p.name for p in frames] == [f"{k:06d}.jpg" for k in range(7)]
    with Image.open(frames[0]) as image:
        assert image.size == (24, 24) and image.format == "JPEG"


def test_prepare_command_line_on_frame_folders(tmp_path):
    src = tmp_path / "taichi" / "train"
    for i in range(3):
        write_folder(src / f"vid{i}", 4, "{k:07d}.png")
    parser = add_prepare_arguments(argparse.ArgumentParser())
    dst = tmp_path / "real"
    args = parser.parse_args(["taichi", "--src", str(src), "--dst", str(dst), "--size", "16", "--max-videos", "2",
                              "--cache-dir", str(tmp_path / "cache")])
    report = prepare_main(args)
    assert report.clips == 3 and report.videos_written == 2 and report.frames_written == 8
    assert len(list(dst.iterdir())) == 2 and all(len(list(d.iterdir())) == 4 for d in dst.iterdir())
    check_only = prepare_main(parser.parse_args(["taichi", "--src", str(src), "--cache-dir", str(tmp_path / "c")]))
    assert check_only.dst is None and check_only.frames == 12


# ----------------------------------------------------------------------------------------------------------
# Clips too short for the training clip.


def test_prepare_names_the_clips_too_short_for_training_as_the_loader_drops_them(tmp_path, capsys):
    src = tmp_path / "ffs"
    write_mp4(src / "long.mp4", 46)                             # 16 frames at stride 3 need 1 + 15 · 3 = 46
    write_mp4(src / "short.mp4", 45)
    write_avi(src / "sub" / "tiny.avi", 8)
    report = prepare("ffs", src, cache_dir=tmp_path / "cache")
    lines = capsys.readouterr().out.strip().splitlines()
    assert (report.num_frames, report.frame_interval, report.clips) == (16, 3, 3)   # the preset's training clip
    assert sorted(Path(s.path).name for s in report.too_short) == ["short.mp4", "tiny.avi"]
    assert all("need 46" in s.reason for s in report.too_short) and report.skipped == []
    summary = lines[-1]                                         # the closing summary: count, names and lengths
    assert summary.startswith("2 clip(s) too short for training (16 frames at stride 3 need 46")
    assert "short.mp4 (45 frames)" in summary and "sub/tiny.avi (8 frames)" in summary and "long.mp4" not in summary
    assert sum("tiny.avi" in line for line in lines) == 1       # named once (issue 30: it was listed twice)

    with pytest.warns(DataWarning, match="too short"):          # the training loader drops exactly these
        loader = VideoClipDataset(src, "ffs", num_frames=16, frame_interval=3, cache_dir=tmp_path / "cache")
    assert [(s.path, s.reason) for s in loader.skipped if s.reason.startswith("too short")] == \
        [(s.path, s.reason) for s in report.too_short]
    assert [c.path for c in loader.clips] == [str(src / "long.mp4")]

    dst = tmp_path / "real"                                     # reference folders keep every clip
    written = prepare("ffs", src, dst, size=16, cache_dir=tmp_path / "cache")
    lines = capsys.readouterr().out.strip().splitlines()
    assert written.videos_written == 3 and len(written.too_short) == 2
    assert lines[-2].startswith("wrote 3 videos") and lines[-1].startswith("2 clip(s) too short for training")


def test_prepare_command_checks_another_training_clip(tmp_path, capsys):
    src = tmp_path / "ffs"
    write_mp4(src / "a.mp4", 10)                                # 4 frames at stride 3 need 10
    write_avi(src / "b.avi", 9)
    parser = add_prepare_arguments(argparse.ArgumentParser())
    report = prepare_main(parser.parse_args(["ffs", "--src", str(src), "--cache-dir", str(tmp_path / "cache"),
                                             "--num-frames", "4", "--frame-interval", "3"]))
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary == "1 clip(s) too short for training (4 frames at stride 3 need 10; the training loader drops " \
                      "them): b.avi (9 frames)"
    assert (report.num_frames, report.frame_interval) == (4, 3) and len(report.too_short) == 1
    report = prepare_main(parser.parse_args(["ffs", "--src", str(src), "--cache-dir", str(tmp_path / "cache")]))
    assert [Path(s.path).name for s in report.too_short] == ["a.mp4", "b.avi"]      # the preset's 16 at stride 3
    with pytest.raises(SystemExit):                 # argparse: "argument --num-frames: must be at least 1, got 0"
        parser.parse_args(["ffs", "--src", str(src), "--num-frames", "0"])
