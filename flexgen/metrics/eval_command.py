"""The `flexgen eval` command line: fvd | kid | fid --real DIR --fake DIR, clipscore --fake DIR (adm and synthmotion
are dispatched by `flexgen.cli`), its options, the reference-statistics cache folder, and the one JSON line (and
leaderboard record) it reports. The evaluations themselves are `flexgen.metrics.evaluate`'s."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from flexgen.arguments import POSITIVE
from flexgen.dist import init, is_distributed, shutdown
from flexgen.metrics.evaluate import evaluate, evaluate_clipscore
from flexgen.metrics.i3d import default_i3d_path
from flexgen.metrics.inception import default_inception_path
from flexgen.metrics.protocols import DEFAULT_PROTOCOLS, PROTOCOLS, Protocol, get_protocol
from flexgen.metrics.sources import DEFAULT_BATCH_SIZE


def default_stats_cache() -> Path:
    """`$FLEXGEN_CACHE/ref_stats` (cache default ~/.cache/flexgen)."""
    return Path(os.environ.get("FLEXGEN_CACHE", "~/.cache/flexgen")).expanduser() / "ref_stats"


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("metric", choices=sorted([*DEFAULT_PROTOCOLS, "adm", "synthmotion"]),
                        help="fvd, kid (I3D video features), fid (images), clipscore (images and their prompts), "
                             "adm (ADM's FID, sFID, IS, precision, recall of an .npz batch against --ref), or "
                             "synthmotion (the demo's yardstick on samples of the synthetic clips: fd, kid, class "
                             "accuracy, tone and track errors, each with a 95%% interval)")
    parser.add_argument("--ref", default=None, help="adm: the reference batch .npz (VIRTUAL_imagenet256_labeled.npz)")
    parser.add_argument("--real", default=None, help="real videos: video files or frame folders <video>/<frame> "
                                                     "(fid: a folder of images); required except for clipscore")
    parser.add_argument("--fake", required=True, help="generated videos (mp4), the first ones in sorted order (fid, "
                                                      "clipscore: images; with flexgen generate's FILE.json, the "
                                                      "images it lists and their prompts, else same-stem .txt "
                                                      "prompts)")
    parser.add_argument("--protocol", default=None,
                        help=f"named protocol (default per metric: {DEFAULT_PROTOCOLS}); known: "
                             f"{', '.join(sorted(PROTOCOLS))}")
    parser.add_argument("--detector", default=None,
                        help=f"detector weights: I3D TorchScript for fvd/kid (default {default_i3d_path()}, or "
                             f"$FLEXGEN_I3D), Inception for fid (default {default_inception_path()}, or "
                             f"$FLEXGEN_INCEPTION), a Hugging Face CLIP folder for clipscore (default "
                             f"$FLEXGEN_CLIP, else {default_stats_cache().parent / 'detectors'}/"
                             f"<clip-vit-large-patch14 or clip-vit-base-patch32, per the protocol's variant>)")
    parser.add_argument("--train-on", default=None, metavar="DIR",
                        help="synthmotion: train the detector on this clip folder when --detector does not exist yet, "
                             "and write it there")
    parser.add_argument("--train-steps", type=POSITIVE, default=400, help="synthmotion: detector training steps")
    parser.add_argument("--floor", action="store_true",
                        help="synthmotion: --fake is a folder of real clips; score a second draw of them (the "
                             "real-vs-real floor, needs --num-real; --fake the --real folder: the videos the first "
                             "draw left)")
    parser.add_argument("--cache", default=None, help=f"reference statistics cache (default {default_stats_cache()})")
    parser.add_argument("--num-real", type=POSITIVE, default=None, help="fewer real clips for quick runs (renames the "
                                                                   "protocol, e.g. fvd64_16f); a real folder with "
                                                                   "fewer usable ones is refused unless "
                                                                   "--allow-fewer")
    parser.add_argument("--allow-fewer", action="store_true",
                        help="when the real folder has fewer usable videos / images than the protocol's num_real "
                             "(too short or corrupt ones are discarded), evaluate on those M under the renamed "
                             "protocol (e.g. fvd16x2048_16f) instead of refusing")
    parser.add_argument("--num-fake", type=POSITIVE, default=None, help="fewer generated clips (renames the protocol; "
                                                                   "clipscore: the first N images)")
    parser.add_argument("--batch-size", type=POSITIVE, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-kid", action="store_true", help="skip KID (does not keep raw features)")
    parser.add_argument("--intervals", action="store_true",
                        help="fvd, kid, fid: add the value's 95%% interval (a bootstrap of the Fréchet distance "
                             "over the generated set; KID over half-size subsets), which the records and the board "
                             "keep")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("--records", default=None, metavar="FILE",
                        help="also append the result as a leaderboard record to this JSON Lines file (model, sampler, "
                             "seeds and cost come from samples.json / the generate JSON beside the samples)")
    parser.add_argument("--dataset", default=None, help="dataset name of the record (ffs, sky, ucf101, taichi, "
                                                        "imagenet256, coco30k, ...); required with --records")
    parser.add_argument("--method", default=None, help="record's method (default: baseline / flexdit <layout>)")
    parser.add_argument("--model-name", default=None, help="record's model name (default: from the sample JSON)")
    parser.add_argument("--note", default=None, help="free-text note stored with the record")
    return parser


def eval_main(args: argparse.Namespace) -> dict[str, Any]:
    """Run one evaluation and print its record as one JSON line (and append it to --records).

    Expected failures (bad arguments, missing or corrupt files, too few items) are ValueError or FileNotFoundError
    with a message naming the file or option; the `flexgen` command line prints it as `flexgen eval: error: ...`."""
    if args.metric == "adm":
        from flexgen.metrics.adm import adm_main

        return adm_main(args)
    if getattr(args, "records", None) and not args.dataset:
        raise ValueError("--records needs --dataset NAME (rows of different datasets never share a table)")
    protocol = get_protocol(args.protocol or DEFAULT_PROTOCOLS[args.metric])
    if protocol.metric != args.metric:
        raise ValueError(f"protocol {protocol.name} measures {protocol.metric}, not {args.metric}")
    if args.metric == "clipscore":
        if args.num_real is not None:
            raise ValueError("--num-real does not apply to clipscore (a CLIP score has no real images)")
        if getattr(args, "allow_fewer", False):
            raise ValueError("--allow-fewer does not apply to clipscore (a CLIP score has no real images)")
    elif args.real is None:
        what = "images" if args.metric == "fid" else "videos"
        raise ValueError(f"--real DIR is required for {args.metric} (the real {what} the generated ones are "
                         f"compared with)")
    elif any(n is not None and n < 2 for n in (args.num_real, args.num_fake)):
        raise ValueError(f"{args.metric} compares feature covariances: --num-real and --num-fake need at least 2 "
                         f"items, got {args.num_real} and {args.num_fake}")
    if args.ref is not None:
        raise ValueError(f"--ref is eval adm's reference batch; {args.metric} compares --fake with --real")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:   # torchrun: each rank its block of clips / images, on its GPU
        args.device = str(init(None if args.device == "cuda" else args.device).device)
    if args.metric == "clipscore":
        return _report(_clipscore_main(protocol.with_counts(num_fake=args.num_fake), args), args)
    protocol = protocol.with_counts(args.num_real, args.num_fake)

    if protocol.metric == "fid":
        from flexgen.metrics.inception import InceptionDetector

        # verifies sha256 before loading; never downloads
        detector: Any = InceptionDetector(path=args.detector, device=args.device, batch_size=args.batch_size)
    else:
        from flexgen.metrics.i3d import I3DDetector

        detector = I3DDetector(path=args.detector, device=args.device, batch_size=args.batch_size)  # verifies sha256
    cache = Path(args.cache).expanduser() if args.cache else default_stats_cache()
    result = evaluate(protocol, args.real, args.fake, detector, cache, with_kid=not args.no_kid,
                      batch_size=args.batch_size, progress=args.progress,
                      allow_fewer=getattr(args, "allow_fewer", False), intervals=getattr(args, "intervals", False))
    return _report(result, args)


def _report(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Print the result as one JSON line; with --records, also append it as a leaderboard Record (model, sampler,
    seeds and cost read from the generator's JSON beside the samples). Under torchrun, rank 0 reports."""
    if is_distributed():
        world = torch.distributed.get_world_size()
        result["world_size"] = world
        rank = torch.distributed.get_rank()
        shutdown()
        if rank != 0:
            return result
    print(json.dumps(result, sort_keys=True))
    if getattr(args, "records", None):
        from flexgen.metrics.records import append_record, record_from_evaluation

        record = record_from_evaluation(result, args.dataset, args.fake, method=args.method,
                                        model_variant=args.model_name, note=args.note)
        append_record(args.records, record)
        print(f"appended a {record.metric} record to {args.records}", file=sys.stderr)
    return result


def _clipscore_main(protocol: Protocol, args: argparse.Namespace) -> dict[str, Any]:
    """Load the protocol's CLIP variant from --detector (or its default folder) and score --fake."""
    from flexgen.metrics import clip

    # local folder only; its architecture must be the protocol's variant (else a ValueError naming both)
    detector = clip.CLIPDetector(path=args.detector, device=args.device, batch_size=args.batch_size,
                                 variant=protocol.clip_variant)
    return evaluate_clipscore(protocol, args.fake, detector, batch_size=args.batch_size, progress=args.progress)
