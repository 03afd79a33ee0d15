"""`flexgen eval synthmotion`: the demo's yardstick on any folder of samples of the synthetic clips, and the
real-vs-real floor, each number with its 95% interval.

    flexgen eval synthmotion --real data/heldout --fake samples/ --detector det.safetensors --train-on data/train
    flexgen eval synthmotion --real data/heldout --fake data/heldout --floor --num-real 64 --detector det.safetensors

Five numbers per folder, under the protocol the detector defines (`synthmotion.protocol`: one clip per real video,
the first frames of each sample):

- `fd_synthmotion`: the Fréchet distance of the detector's features to the real clips (a bootstrap interval
  re-centred on it),
- `kid_synthmotion`: KID on the same features (the spread over half-size subsets),
- `acc_synthmotion`: the share of samples the detector classifies as the class they were drawn for (shape and
  direction), a bootstrap over samples,
- `tone_synthmotion` (% of the contrast) and `track_synthmotion` (pixels): how far each sample is from a flat two-colour
  clip and from a straight constant-speed crossing (`synthmotion_scores`), averaged, a bootstrap over samples.

The floor (`--floor`) scores a second draw of real clips (another seed, labels from the class folders) the same
way: the best a model could reach at this N. With `--fake` the `--real` folder, the second draw takes the videos
the first left, so the two are disjoint (the demo's: held-out clips the detector never saw). Numbers whose
intervals overlap are not ranked by the board.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from flexgen.metrics import synthmotion as sm
from flexgen.metrics.intervals import bootstrap_mean, distance_intervals
from flexgen.metrics.sources import ClipSet

DATASET = "synthmotion"             # the records' default dataset name
FLOOR_MODEL = "real clips"          # the floor row's model name (method "floor")


def metric(kind: str) -> str:
    """'acc' -> 'acc_synthmotion'."""
    return f"{kind}_{sm.SynthMotionDetector.name}"


# ---------------------------------------------------------------------------------------------------------------
# Grading a set of clips
# ---------------------------------------------------------------------------------------------------------------
def _stacked(clips: ClipSet) -> tuple[torch.Tensor, list[str]]:
    """Every clip of a ClipSet as one uint8 (N, T, 3, H, W) tensor, with each clip's file (relative path)."""
    return torch.cat(list(clips)), [clip.source.rel for clip in clips.clips]


def graded(detector: sm.SynthMotionDetector, videos: torch.Tensor, labels: Sequence[int], seed: int = 0
           ) -> dict[str, dict[str, Any]]:
    """Accuracy and the two pixel grades of uint8 clips (N, T, 3, H, W) drawn for `labels`: {metric name: {"value",
    "interval", ...}}, each interval a bootstrap over the clips."""
    from flexgen.metrics.synthmotion_scores import clip_scores

    targets = torch.as_tensor(list(labels))
    hits = (detector.logits(videos).argmax(dim=1) == targets).double()
    per_class = {name: float(hits[targets == c].mean()) for c, name in enumerate(detector.config.classes)
                 if bool((targets == c).any())}
    with torch.no_grad():
        levels = (detector.net.preprocess(videos) + 1) * 127.5                       # (N, 3, T, s, s), 0..255
    scores = clip_scores(levels)
    out = {metric("acc"): {"value": float(hits.mean()), "interval": bootstrap_mean(hits.numpy(), seed=seed),
                           "per_class": per_class}}
    for kind in ("tone", "track"):
        values = scores[kind].numpy()
        out[metric(kind)] = {"value": float(values.mean()), "interval": bootstrap_mean(values, seed=seed)}
    return out


def _results(base: dict[str, Any], spread: dict[str, Any], grades: dict[str, dict[str, Any]]) -> list[dict]:
    """One result dict per metric (the shape `record_from_evaluation` takes), sharing `base`'s provenance."""
    out = [{**base, "metric": metric("fd"), "value": spread["frechet_distance"], "interval": spread["interval"],
            "frechet_distance": spread["frechet_distance"], "kid": spread["kid"]},
           {**base, "metric": metric("kid"), "value": spread["kid"], "interval": spread["kid_interval"]}]
    return out + [{**base, "metric": name, **grade} for name, grade in grades.items()]


# ---------------------------------------------------------------------------------------------------------------
# A sample folder, and the floor
# ---------------------------------------------------------------------------------------------------------------
def sample_labels(folder: Path) -> dict[str, int | None]:
    """Each sample's file -> the class it was drawn for, from the folder's samples.json (a `flexgen sample`
    folder)."""
    from flexgen.metrics.generated import check_sample_manifest
    from flexgen.sampling.manifest import SampleManifest

    check_sample_manifest(folder)
    return {entry.file: entry.label for entry in SampleManifest.read(folder / "samples.json").samples}


def evaluate_samples(real: str | Path, fake: str | Path, detector: sm.SynthMotionDetector, cache_dir: str | Path,
                     num_real: int | None = None, num_fake: int | None = None) -> list[dict[str, Any]]:
    """The five numbers of a sample folder against the real clips, with intervals (one result dict each)."""
    from flexgen.metrics.evaluate import evaluate
    from flexgen.metrics.selection import select_fake_clips

    fake = Path(fake)
    label_of = sample_labels(fake)
    num_fake = len(label_of) if num_fake is None else num_fake
    protocol = sm.protocol(detector.config, num_real=num_real or num_fake, num_fake=num_fake)
    base = evaluate(protocol, real, fake, detector, cache_dir, intervals=True)
    videos, files = _stacked(select_fake_clips(fake, protocol))
    labels = [label_of.get(file) for file in files]
    if any(label is None for label in labels):
        raise ValueError(f"{fake}: samples.json gives no class label for some samples (an unconditional model?); "
                         "the SynthMotion grades need class-conditional samples")
    spread = {k: base[k] for k in ("frechet_distance", "interval", "kid", "kid_interval")}
    return _results(base, spread, graded(detector, videos, labels, seed=protocol.seed))


def evaluate_floor(real: str | Path, second: str | Path, detector: sm.SynthMotionDetector, cache_dir: str | Path,
                   count: int) -> list[dict[str, Any]]:
    """The same five numbers for `count` real clips of `second` (drawn with the next seed) against `real`'s. When
    `second` is `real`'s folder, the second draw takes only the videos the first one left (it needs 2 × count)."""
    from flexgen.metrics.evaluate import compute_stats, detector_name, reference_stats
    from flexgen.metrics.selection import select_real_clips

    protocol = sm.protocol(detector.config, num_real=count)
    ref = reference_stats(real, protocol, detector, cache_dir, keep_features=count)
    same = Path(second).resolve() == Path(real).resolve()
    first = frozenset(clip.source.rel for clip in select_real_clips(real, protocol).clips) if same else frozenset()
    draw = select_real_clips(second, dataclasses.replace(protocol, seed=protocol.seed + 1), exclude=first)
    if len(draw) < count:
        left = f" besides the {len(first)} of the first draw" if same else ""
        raise ValueError(f"{second}: the floor needs {count} usable real videos{left}, found {len(draw)}")
    videos, files = _stacked(draw)
    stats = compute_stats(draw, detector, keep_features=count)
    classes = detector.config.classes
    unknown = sorted({f.split("/")[0] for f in files} - set(classes))
    if unknown:
        raise ValueError(f"{second}: class folders {unknown} are not classes of the detector ({', '.join(classes)})")
    labels = [classes.index(f.split("/")[0]) for f in files]
    base = {"protocol": protocol.name, "detector": detector_name(detector), "detector_sha256": detector.sha256,
            "reference_stats_sha256": ref.sha256, "num_real": ref.stats.count, "num_fake": stats.count,
            "real": str(Path(real).resolve()), "fake": str(Path(second).resolve()), "floor": True}
    return _results(base, distance_intervals(ref.stats, stats, seed=protocol.seed),
                    graded(detector, videos, labels, seed=protocol.seed))


def records_of(results: Sequence[dict[str, Any]], dataset: str, fake: str | Path, **fields: Any) -> list:
    """The leaderboard records of one evaluation (the floor's are marked `extra["floor"]`, model "real clips")."""
    from flexgen.metrics.records import record_from_evaluation

    records = []
    for result in results:
        floor = bool(result.get("floor"))
        # the floor's clips are the real mp4 files: stored as the samples are, so it shares their tables
        named = {"model_variant": FLOOR_MODEL, "method": "floor", "storage": "mp4"} if floor else {}
        given = {k: v for k, v in fields.items() if v is not None}
        record = record_from_evaluation(result, dataset, fake, **{**named, **given})
        record.extra.update({"floor": True} if floor else {})
        if "per_class" in result:
            record.extra["per_class"] = result["per_class"]
        records.append(record)
    return records


# ---------------------------------------------------------------------------------------------------------------
# The detector: a file, or trained on a clip folder and written there
# ---------------------------------------------------------------------------------------------------------------
def detector_from(path: str | Path | None, train_on: str | Path | None = None, steps: int = 400
                  ) -> sm.SynthMotionDetector:
    """The detector at `path`; when it does not exist and `train_on` names a clip folder, train one there first."""
    if path is None:
        raise ValueError("synthmotion needs --detector FILE (a trained detector, or where to write one with "
                         "--train-on DIR)")
    path = Path(path)
    if not path.exists() and train_on is not None:
        net = sm.train_classifier(train_on, steps=steps)
        sm.save(net, path)
        print(f"trained a SynthMotion detector on {train_on} ({steps} steps): {path}")
    return sm.SynthMotionDetector(path)


def synthmotion_main(args: argparse.Namespace) -> list[dict[str, Any]]:
    """`flexgen eval synthmotion`: print one JSON line per number; with --records, append one record each."""
    import json

    from flexgen.metrics.eval_command import default_stats_cache
    from flexgen.metrics.records import append_record

    if args.real is None:
        raise ValueError("--real DIR is required for synthmotion (the held-out clips, <Class>/<video>.mp4)")
    detector = detector_from(args.detector, args.train_on, args.train_steps)
    cache = Path(args.cache).expanduser() if args.cache else default_stats_cache()
    if args.floor:
        count = args.num_real or args.num_fake
        if count is None:
            raise ValueError("--floor needs --num-real N (how many real clips each side draws)")
        results = evaluate_floor(args.real, args.fake, detector, cache, count)
    else:
        results = evaluate_samples(args.real, args.fake, detector, cache, args.num_real, args.num_fake)
    for result in results:
        print(json.dumps({k: v for k, v in result.items() if k != "per_class"}, sort_keys=True, default=str))
    if args.records:
        fields = {"method": args.method, "model_variant": args.model_name, "note": args.note}
        for record in records_of(results, args.dataset or DATASET, args.fake, **fields):
            append_record(args.records, record)
    return results

