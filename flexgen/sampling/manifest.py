"""What a sampling command writes beside its samples: one manifest type for `flexgen sample` (video / DiT) and
`flexgen generate` (PixArt-α), one seed rule and one sharding rule.

- Seeds: sample i is drawn with seed `seed + i` (its own CPU generator), whatever the batch size or rank.
- Sharding: rank r of W draws the indices i ≡ r (mod W), in increasing order (Latte's sample_ddp.py interleaving).
- Resuming: the manifest is written (complete = false) before any sample; a re-run with the same run-defining
  fields draws only the missing files, another run's folder is refused (unless overwriting), and the manifest is
  rewritten complete, with the cost, once every file exists. Evaluation and result records read this type
  (`flexgen.metrics.records`), never hard-coded keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flexgen.files import atomic_write_text, folder_lock

MANIFEST_VERSION = 1
# Fields that define a run: a folder holding another run's manifest is refused (they must all match to resume).
RUN_FIELDS = ("command", "family", "model", "method", "checkpoint_sha256", "sampler", "steps", "cfg_scale", "seed")
# Identity keys recorded since issue 30: a folder written before them is resumed without comparing them.
LATER_IDENTITY = ("dydit", "cfg_channels", "diffusion", "fps", "codec")


@dataclass
class SampleEntry:
    index: int                          # global sample index i
    file: str                           # file name in the manifest's folder
    seed: int                           # seed + i
    label: int | None = None            # class label (class-conditional models)
    prompt: str | None = None           # text prompt (text-to-image models)


@dataclass
class SampleManifest:
    command: str                        # "flexgen sample" | "flexgen generate"
    family: str                         # model family as leaderboards name it: latte, dit, pixart-alpha
    model: str                          # preset name (sample) or transformer folder (generate)
    method: str                         # "baseline" or "flexdit <layout>"
    checkpoint: str                     # weights file or folder
    checkpoint_sha256: str              # of the weights file ("" when the weights are not one file)
    sampler: str
    steps: int
    cfg_scale: float                    # classifier-free guidance scale (1 = off)
    seed: int                           # sample i uses seed + i
    samples: list[SampleEntry]
    storage: str = "png"                # "mp4" or "png"
    world_size: int = 1
    complete: bool = False              # every file written (set last)
    grid: str | None = None             # preview image, if any
    cost: dict = field(default_factory=dict)        # gmacs_per_forward, gmacs_per_sample, seconds_per_sample, ...
    settings: dict = field(default_factory=dict)    # the command's other settings (config, dtype, size, ...)
    identity: dict = field(default_factory=dict)    # settings that must match to resume (with RUN_FIELDS)
    version: int = MANIFEST_VERSION

    # ---- files ------------------------------------------------------------------------------------------

    def files(self) -> list[str]:
        return [s.file for s in self.samples]

    def write(self, path: str | Path) -> None:
        """Write atomically (a reader never sees half a manifest)."""
        atomic_write_text(path, json.dumps(dataclasses.asdict(self), indent=1) + "\n")

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> SampleManifest:
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING}
        if not isinstance(data, dict) or not required <= set(data) or set(data) - names:
            keys = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{source} is not a sample manifest (keys {keys}; expected {sorted(names)})")
        try:
            entries = [SampleEntry(**e) for e in data["samples"]]
        except TypeError as e:
            raise ValueError(f"{source} is not a sample manifest (a sample entry: {e})") from None
        return cls(**{**data, "samples": entries})

    @classmethod
    def read(cls, path: str | Path) -> SampleManifest:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read the sample manifest {path}: {e}") from e
        return cls.from_dict(data, str(path))

    def differences(self, other: SampleManifest) -> list[str]:
        """The run-defining fields (and the sample list) in which `other`, the folder's record, differs from this
        manifest; a sample list that only adds samples after `other`'s is the same run drawing more."""
        changed = [f"{k}: {getattr(other, k)!r} -> {getattr(self, k)!r}" for k in RUN_FIELDS
                   if getattr(other, k) != getattr(self, k)]
        keys = {*self.identity, *other.identity} - {k for k in LATER_IDENTITY
                                                      if (k in self.identity) != (k in other.identity)}
        changed += [f"{k}: {other.identity.get(k)!r} -> {self.identity.get(k)!r}"
                    for k in sorted(keys) if other.identity.get(k) != self.identity.get(k)]
        before, now = ([(s.index, s.file, s.seed, s.label, s.prompt) for s in m.samples] for m in (other, self))
        if now[:len(before)] != before:            # (more samples of the same run extend the folder)
            changed.append("other samples (count, seeds, labels or prompts)")
        return changed


def find_manifest(folder: str | Path) -> tuple[Path, SampleManifest] | None:
    """The sample manifest in `folder` (samples.json, or FILE.json of `flexgen generate`), or None."""
    folder = Path(folder)
    candidates = [folder / "samples.json"] + sorted(p for p in folder.glob("*.json") if p.name != "samples.json")
    for path in candidates:
        if path.is_file():
            try:
                return path, SampleManifest.read(path)
            except ValueError:
                continue
    return None


# ----------------------------------------------------------------------------------------------------------
# Which samples a rank draws, and resuming into a folder.


def shard_indices(num_samples: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """The sample indices of rank `rank` of `world_size`: i ≡ rank (mod world_size), increasing."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    return list(range(rank, num_samples, world_size))


def start_run(manifest: SampleManifest, path: Path, overwrite: bool = False, hold: Any = None) -> None:
    """Before sampling (rank 0): refuse a folder holding another run's manifest (unless `overwrite`), hold the folder
    for the command on `hold` (a contextlib.ExitStack the command closes when it ends: a second process writing
    into the folder meanwhile is refused, `files.folder_lock`), then write this run's manifest with complete =
    false."""
    if path.parent.exists() and not path.parent.is_dir():
        raise NotADirectoryError(f"{path.parent} is a file; the samples go into a folder: give another output path")
    if path.is_file() and not overwrite:
        try:
            previous = SampleManifest.read(path)
        except ValueError as e:
            raise ValueError(f"{path} exists and is not a manifest of this version ({e}); use another output "
                             "folder, or --overwrite") from None
        changed = manifest.differences(previous)
        if changed:
            raise ValueError(f"{path} belongs to another run ({'; '.join(changed)}); use another output folder, "
                             "or --overwrite to replace its samples")
    path.parent.mkdir(parents=True, exist_ok=True)
    if hold is not None:
        hold.enter_context(folder_lock(path.parent, manifest.command))
    if overwrite and path.is_file():                # the replaced run's files this one does not draw again
        with contextlib.suppress(ValueError):       # (an unreadable record names none)
            kept = set(manifest.files())
            for name in SampleManifest.read(path).files():
                if name not in kept and name == Path(name).name and not name.startswith("."):   # its own files
                    (path.parent / name).unlink(missing_ok=True)
    manifest.write(path)


def previous(path: Path, overwrite: bool) -> SampleManifest | None:
    """The record a re-run finds at `path` (read before `start_run` replaces it; None without one, or with
    `overwrite`; start_run names what is wrong with an unreadable one)."""
    if overwrite or not path.is_file():
        return None
    try:
        return SampleManifest.read(path)
    except ValueError:
        return None


def previous_cost(found: SampleManifest | None, kept: int) -> tuple[dict | None, int]:
    """(cost, the samples it stands for) of the record a re-run of the same run found (`previous`): its numbers are
    taken as those of the `kept` samples still there."""
    return (found.cost, kept) if found is not None and found.cost and kept > 0 else (None, 0)


def todo(manifest: SampleManifest, folder: Path, rank: int, world_size: int, overwrite: bool = False) -> list[int]:
    """This rank's sample indices still to draw (all of its shard with `overwrite`)."""
    return [i for i in shard_indices(len(manifest.samples), rank, world_size)
            if overwrite or not (folder / manifest.samples[i].file).is_file()]


def finish_run(manifest: SampleManifest, path: Path) -> None:
    """After every rank finished (rank 0): check that every file exists, then write the manifest complete."""
    missing = [f for f in manifest.files() if not (path.parent / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} sample file(s) were not written (e.g. {missing[0]}); run the "
                                "command again to draw them")
    manifest.complete = True
    manifest.write(path)


def entries(count: int, seed: int, file: Any, labels: list[int] | None = None,
            prompts: list[str] | None = None) -> list[SampleEntry]:
    """Manifest entries of `count` samples: file(i) names sample i, seed + i seeds it."""
    return [SampleEntry(i, file(i), seed + i, None if labels is None else labels[i],
                        None if prompts is None else prompts[i]) for i in range(count)]
