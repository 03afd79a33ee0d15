"""Generated folders: the sample manifest a `flexgen sample` folder must match, and the images and prompts of a
text-to-image folder.

- A folder written by `flexgen sample` (samples.json) is evaluated only when its run completed and it holds exactly
  the sample files its manifest lists (`check_sample_manifest`).
- Generated text-to-image folders (fid, clipscore): a folder written by `flexgen generate` holds FILE.json sample
  manifests (`sampling.manifest.SampleManifest`: samples with file, prompt and seed, the grid); when it has such,
  the images they list (records in sorted path order, images in record order; grids left out) are the generated
  set, otherwise every image, and the prompts come from same-stem .txt files beside the images (`generated_images`).
- A generated image PIL cannot identify or verify is refused by name (`check_generated_images`): the fix is to
  delete it and re-run the sampling command, which draws the missing files.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flexgen.files import walk_visible
from flexgen.metrics.sources import (
    check_each,
    find_images,
    generated_file_error,
    image_problem,
    list_images,
    media_files,
)
from flexgen.sampling.manifest import SampleManifest

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# Checks: a `flexgen sample` folder against its manifest, generated images readable
# ---------------------------------------------------------------------------------------------------------------
def check_sample_manifest(root: str | Path) -> None:
    """A folder `flexgen sample` wrote (samples.json) is evaluated only when its run completed and the manifest lists
    exactly the sample files it holds: two runs in one folder, or files of a killed run, are refused by name."""
    root = Path(root)
    path = root / "samples.json"
    if not path.is_file():
        return
    try:
        manifest = SampleManifest.read(path)
    except ValueError:                      # another tool's samples.json: other JSON is ignored, as in listings
        return
    if not manifest.complete:
        raise ValueError(f"{path}: the sampling run that wrote this folder did not complete; re-run its command to "
                         "finish it, then evaluate")
    present = set(media_files(root))
    listed = set(manifest.files())
    extra = sorted(present - listed - ({manifest.grid} if manifest.grid else set()))
    missing = sorted(listed - present)
    if extra or missing:
        parts = [f"{len(extra)} not listed (e.g. {', '.join(extra[:3])})"] if extra else []
        parts += [f"{len(missing)} listed but missing (e.g. {', '.join(missing[:3])})"] if missing else []
        raise ValueError(f"{root}: its manifest samples.json does not list exactly the sample files it holds "
                         f"({'; '.join(parts)}); a folder must hold the samples of one complete run")


def check_generated_images(paths: Sequence[Path]) -> None:
    """Every generated image identified and verified by PIL (`image_problem`); the corrupt ones are refused by name."""
    bad = [(path, problem) for path, problem in zip(paths, check_each(image_problem, paths), strict=True) if problem]
    if bad:
        raise generated_file_error(bad, "image")


# ---------------------------------------------------------------------------------------------------------------
# Generated text-to-image folders: `flexgen generate` records (FILE.json) or same-stem .txt prompts
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class GeneratedImages:
    """The images of a generated folder in evaluation order, their prompts (None when the folder has no records
    and not every image has a .txt file) and where those came from."""

    paths: list[Path]
    prompts: list[str] | None
    source: str

    @property
    def prompts_sha256(self) -> str | None:
        """sha256 of the prompts as a JSON list in evaluation order (tells prompt sets apart in records)."""
        return None if self.prompts is None else prompts_sha256(self.prompts)


def prompts_sha256(prompts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode()).hexdigest()


def _read_generate_record(path: Path) -> tuple[list[dict[str, Any]], str | None] | None:
    """The entries (each with "file" and "prompt") and the grid file name of a text-to-image sample manifest
    (`flexgen.sampling.manifest.SampleManifest`, the FILE.json of `flexgen generate`); None for other JSON, or for a
    manifest without prompts."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}); a generated folder's .json files are read as sample "
                         f"manifests of flexgen generate, move other files out") from error
    try:
        manifest = SampleManifest.from_dict(data, str(path))
    except (ValueError, TypeError):
        return None
    if not manifest.samples or any(entry.prompt is None for entry in manifest.samples):
        return None
    if not manifest.complete:
        raise ValueError(f"{path}: the flexgen generate run that wrote it did not complete; re-run its command to "
                         "finish it, then evaluate")
    return [{"file": e.file, "prompt": e.prompt} for e in manifest.samples], manifest.grid


def generated_images(root: str | Path, need_prompts: bool = False) -> GeneratedImages:
    """The generated images of `root`: those `flexgen generate` records list, else every image (sorted) with the
    prompts of same-stem .txt files when every image has one. `need_prompts` makes missing prompts an error."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no generated image folder at {root}")
    records = []
    for folder, _, files in walk_visible(root, followlinks=False):
        records += [folder / f for f in files if f.lower().endswith(".json")]
    records.sort(key=lambda p: p.relative_to(root).as_posix())
    paths: list[Path] = []
    prompts: list[str] = []
    used: list[Path] = []
    grids: set[Path] = set()
    for record in records:
        content = _read_generate_record(record)
        if content is None:
            continue
        entries, grid = content
        used.append(record)
        if grid is not None:
            grids.add((record.parent / grid).resolve())
        for entry in entries:
            image = record.parent / entry["file"]
            if not image.is_file():
                raise FileNotFoundError(f"{image} is listed in {record} but missing")
            paths.append(image)
            prompts.append(entry["prompt"])
    if used:
        duplicates = [p for p, n in Counter(p.resolve() for p in paths).items() if n > 1]
        if duplicates:
            raise ValueError(f"{root}: images listed twice by the flexgen generate records: "
                             f"{', '.join(map(str, duplicates[:5]))}")
        listed = {p.resolve() for p in paths} | grids
        unlisted = [p for p in find_images(root) if p.resolve() not in listed]
        if unlisted:
            log.warning("%s: %d images are not listed in its flexgen generate records and are not evaluated (e.g. "
                        "%s)", root, len(unlisted), unlisted[0])
        names = ", ".join(p.relative_to(root).as_posix() for p in used)
        return GeneratedImages(paths, prompts, f"flexgen generate records: {names}")

    images = list_images(root)
    captions = [image.with_suffix(".txt") for image in images]
    missing = [image for image, caption in zip(images, captions, strict=True) if not caption.is_file()]
    if missing and need_prompts:
        raise FileNotFoundError(
            f"{root}: {len(missing)} of {len(images)} images have no prompt, e.g. {missing[0]} (expected "
            f"{missing[0].with_suffix('.txt')}); give the folder the FILE.json that flexgen generate writes, or a "
            f"same-stem .txt file with the prompt beside every image")
    if missing:
        return GeneratedImages(images, None, "images only (no prompts)")
    prompts = [caption.read_text(encoding="utf-8").strip() for caption in captions]
    empty = [c for c, text in zip(captions, prompts, strict=True) if not text]
    if empty:
        raise ValueError(f"{root}: {len(empty)} prompt files are empty, e.g. {empty[0]}")
    return GeneratedImages(images, prompts, "same-stem .txt files")
