"""The small synthetic clip set of the demo and the tests: a moving or spinning shape on a plain background.

    python -m flexgen.synthetic data/synthetic --classes 4 --clips-per-class 16 --frames 24 --size 32
    python -m flexgen.synthetic data/shapes --task shape-motion --classes 8     (the demo's set: shape × direction)
    python datasets/make_synthetic.py data/synthetic ...          (the same, from a source checkout)

Two tasks. `motion` (the default): each motion is a class (`MOTIONS`), the shape (disc or square) is drawn at
random, so only the direction of travel tells classes apart. `shape-motion` (`SHAPE_MOTIONS`, the demo's): a class
is a shape and a direction (DiscRight ... SquareDown), so a sample is right only when both its appearance and its
motion are. Clips are real mp4 files in the UCF101 layout that the `synthetic` preset of
flexgen.data.video reads: `<root>/<Class>/v_<Class>_gXX_cYY.mp4` (four clips per group, like UCF's cYY).
Labels are indices into the sorted class folders. Codec: MPEG-4 part 2 (FFmpeg's own `mpeg4` encoder, in
every PyAV build) at 2 Mb/s, which is near-lossless at these sizes; yuv420p, so the side must be even. libx264 is
also available here, but at 32×32 it does not always produce the same frames twice from the same input, while
`mpeg4` writes byte-identical files. Deterministic given the seed: clip (class c, number k) draws from numpy
Generator (seed, c, k). With `split_lists`, UCF-style `trainlist01.txt` / `testlist01.txt` are
written into the root (the first quarter of the groups is the test split).

It ships inside the package (the demo runs from an installed wheel): `from flexgen.synthetic import make_synthetic`.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from flexgen.arguments import COUNT, POSITIVE
from flexgen.files import atomic_write_text

# Class name -> ("move", dx, dy): direction of travel (y down); ("spin", ±1, 0): +1 turns clockwise on screen.
MOTIONS: dict[str, tuple[str, float, float]] = {
    "MoveRight": ("move", 1.0, 0.0),
    "MoveLeft": ("move", -1.0, 0.0),
    "MoveUp": ("move", 0.0, -1.0),
    "MoveDown": ("move", 0.0, 1.0),
    "SpinClockwise": ("spin", 1.0, 0.0),
    "SpinCounterclockwise": ("spin", -1.0, 0.0),
}
# Class name -> (shape, dx, dy): the same crossings with the shape fixed by the class (larger shapes: at the demo's
# 16×16 a disc and a square of radius 2–3 px must still differ).
SHAPE_MOTIONS: dict[str, tuple[str, float, float]] = {
    f"{shape}{direction}": (shape.lower(), dx, dy) for shape in ("Disc", "Square")
    for direction, (_, dx, dy) in (("Right", MOTIONS["MoveRight"]), ("Left", MOTIONS["MoveLeft"]),
                                   ("Up", MOTIONS["MoveUp"]), ("Down", MOTIONS["MoveDown"]))}
TASKS = {"motion": MOTIONS, "shape-motion": SHAPE_MOTIONS}
CLIPS_PER_GROUP = 4
FPS = 8
CODEC = "mpeg4"


# ----------------------------------------------------------------------------------------------------------
# Rendering one clip.


def render_clip(motion: str, num_frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (num_frames, size, size, 3): a filled circle or square crossing the frame in the motion's direction,
    or a bar spinning about a point near the centre. `motion` is a class of either task."""
    shape = None
    if motion in SHAPE_MOTIONS:
        shape, dx, dy = SHAPE_MOTIONS[motion]
        kind = "move"
    else:
        kind, dx, dy = MOTIONS[motion]
    background = rng.integers(0, 96, 3)
    colour = rng.integers(150, 256, 3)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5                               # pixel centres, (size, size)
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    t = np.linspace(0.0, 1.0, num_frames)                                  # clip time 0..1

    if kind == "move":
        radius = rng.uniform(size / 8, size / 5) if shape is None else rng.uniform(size / 6, size / 4.5)
        square = bool(rng.integers(2)) if shape is None else shape == "square"
        lateral = rng.uniform(radius, size - radius)                       # position across the motion
        travel = radius + (size - 2 * radius) * (t if dx + dy > 0 else 1 - t)   # along the motion
        for f in range(num_frames):
            cx, cy = (travel[f], lateral) if dx else (lateral, travel[f])
            if square:
                mask = np.maximum(abs(xx - cx), abs(yy - cy)) <= radius
            else:
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2
            frames[f] = np.where(mask[..., None], colour, background)
    else:
        cx, cy = size / 2 + rng.uniform(-size / 8, size / 8, 2)
        half_length, half_width = rng.uniform(0.3, 0.4) * size, rng.uniform(0.06, 0.1) * size
        angle = rng.uniform(0, math.pi) + dx * rng.uniform(0.5, 1.0) * math.pi * t    # radians, per frame
        for f in range(num_frames):
            c, s = math.cos(angle[f]), math.sin(angle[f])
            u = (xx - cx) * c + (yy - cy) * s                              # along the bar
            v = -(xx - cx) * s + (yy - cy) * c                             # across the bar
            mask = (abs(u) <= half_length) & (abs(v) <= half_width)
            frames[f] = np.where(mask[..., None], colour, background)
    return frames


# ----------------------------------------------------------------------------------------------------------
# Writing an mp4.


def write_mp4(path: str | Path, frames: np.ndarray, codec: str = CODEC, fps: int = FPS) -> None:
    """uint8 (T, H, W, 3) -> an mp4 file (yuv420p: H and W must be even), encoded on one thread so the same
    seed gives byte-identical files."""
    from flexgen.data.media import write_video

    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even frame sides, got {width}x{height}")
    write_video(path, frames, fps=fps, codec=codec, threads=1,
                options={"crf": "18"} if codec == "libx264" else {"b": "2000000"})


# ----------------------------------------------------------------------------------------------------------
# The clip set.


def make_synthetic(root: str | Path, num_classes: int = 4, clips_per_class: int = 16, num_frames: int = 24,
                   size: int = 32, seed: int = 0, split_lists: bool = False, task: str = "motion") -> list[Path]:
    """Write `num_classes` × `clips_per_class` clips to root/<Class>/v_<Class>_gXX_cYY.mp4 and return their paths
    (class by class). Classes are the first `num_classes` of the task's table: MOTIONS (four translations, then two
    spins) or SHAPE_MOTIONS (four directions of a disc, then of a square)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
    table = TASKS[task]
    if not 1 <= num_classes <= len(table):
        raise ValueError(f"num_classes must be in 1..{len(table)} for task {task}, got {num_classes}")
    if clips_per_class < 1 or num_frames < 1 or size < 2:
        raise ValueError(f"need clips_per_class ≥ 1, num_frames ≥ 1, size ≥ 2 (got {clips_per_class}, "
                         f"{num_frames}, {size})")
    root = Path(root)
    classes = list(table)[:num_classes]
    paths = []
    for c, motion in enumerate(classes):
        (root / motion).mkdir(parents=True, exist_ok=True)
        for k in range(clips_per_class):
            group, clip = divmod(k, CLIPS_PER_GROUP)
            path = root / motion / f"v_{motion}_g{group + 1:02d}_c{clip + 1:02d}.mp4"
            frames = render_clip(motion, num_frames, size, np.random.default_rng([seed, c, k]))
            write_mp4(path, frames)
            paths.append(path)
    if split_lists:
        write_split_lists(root, paths, sorted(classes))
    return paths


def write_split_lists(root: Path, paths: list[Path], classes: list[str]) -> None:
    """UCF-style lists: trainlist01.txt (`Class/file.mp4 <label + 1>`) and testlist01.txt (`Class/file.mp4`);
    the test split is the first quarter of the groups (at least one), as UCF101 holds out whole groups."""
    groups = sorted({p.stem.split("_")[-2] for p in paths})
    test_groups = set(groups[: max(1, len(groups) // 4)])
    train, test = [], []
    for path in paths:
        rel = path.relative_to(root).as_posix()
        if path.stem.split("_")[-2] in test_groups:
            test.append(rel)
        else:
            train.append(f"{rel} {classes.index(path.parent.name) + 1}")
    for name, lines in (("trainlist01.txt", train), ("testlist01.txt", test)):
        atomic_write_text(root / name, "".join(line + "\n" for line in lines))


# ----------------------------------------------------------------------------------------------------------
# Command line.


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic moving-shapes clip set (UCF101 layout, mp4).")
    parser.add_argument("root", help="output folder")
    parser.add_argument("--task", choices=sorted(TASKS), default="motion",
                        help="motion: the direction is the class; shape-motion: shape × direction (the demo's)")
    parser.add_argument("--classes", type=POSITIVE, default=4,
                        help=f"classes (motion: 1..{len(MOTIONS)}, shape-motion: 1..{len(SHAPE_MOTIONS)})")
    parser.add_argument("--clips-per-class", type=POSITIVE, default=16)
    parser.add_argument("--frames", type=POSITIVE, default=24, help="frames per clip")
    parser.add_argument("--size", type=POSITIVE, default=32, help="frame side in pixels (even)")
    parser.add_argument("--seed", type=COUNT, default=0)
    parser.add_argument("--split-lists", action="store_true", help="also write trainlist01.txt / testlist01.txt")
    args = parser.parse_args(argv)
    paths = make_synthetic(args.root, args.classes, args.clips_per_class, args.frames, args.size, args.seed,
                           args.split_lists, args.task)
    print(f"wrote {len(paths)} clips ({args.classes} classes, {args.frames} frames of {args.size}x{args.size}, "
          f"{CODEC}) to {args.root}")


if __name__ == "__main__":
    main()
