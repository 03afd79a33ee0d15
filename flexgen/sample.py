"""The `flexgen sample` command (Latte / DiT): its arguments, and the run (`flexgen.sampling.run.sample_run`).

    flexgen sample --config configs/video/ffs/latte-xl2.yaml --ckpt ffs.pt --num-samples 2048 --out samples/ffs
    torchrun --nproc_per_node 8 -m flexgen sample --config ... --ckpt ... --out ...     (one shard per rank)

Output: DIR/{index:04d}.mp4 (fps 8) for video models or DIR/{index:04d}.png for one-frame models, DIR/grid.png and
DIR/samples.json; seeds, labels, sharding and guidance are `flexgen.sampling`'s (its modules' docstrings). torch and
the models are imported by the run, so `add_sample_arguments` builds the `flexgen` parser without loading them.
"""

from __future__ import annotations

import argparse
from typing import Any

from flexgen.arguments import COUNT, NON_NEGATIVE, POSITIVE

DTYPES = ("float32", "bfloat16", "float16", "float64")


def add_sample_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of `flexgen sample` to `parser` and set `func=sample_main`; returns the parser."""
    parser.add_argument("--config", required=True, help="run config of the model, e.g. "
                        "configs/video/ffs/latte-xl2.yaml")
    parser.add_argument("--ckpt", required=True, help="weights: our .safetensors or an official .pt (EMA preferred); "
                        "a FlexDiT config with dense weights converts on load")
    parser.add_argument("--out", required=True, help="output folder for the samples, grid.png and samples.json")
    parser.add_argument("--num-samples", type=POSITIVE, default=None, help="samples over all ranks "
                        "(default sample.num_samples)")
    parser.add_argument("--sampler", default=None, help="ddpm | ddim | dpm-solver++ (default sample.sampler)")
    parser.add_argument("--steps", type=POSITIVE, default=None, help="sampling steps (default sample.steps)")
    parser.add_argument("--cfg-scale", type=NON_NEGATIVE, default=None, help="classifier-free guidance scale, 1 = off "
                        "(default sample.cfg_scale)")
    parser.add_argument("--seed", type=COUNT, default=None, help="sample i uses seed + i (default sample.seed)")
    parser.add_argument("--batch-size", type=POSITIVE, default=None, help="samples per forward on each rank "
                        "(default sample.batch_size)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda:LOCAL_RANK if available)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="model and sampler dtype")
    parser.add_argument("--fps", type=POSITIVE, default=8, help="frame rate of the mp4 files")
    parser.add_argument("--sha256", default=None, help="expected sha256 of the checkpoint file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--npz", action="store_true", help="one-frame models: also write DIR/samples.npz (arr_0 "
                        "uint8 N×H×W×3, arr_1 labels) for ADM's evaluation suite once every sample exists")
    parser.add_argument("--overwrite", action="store_true", help="draw every sample again (default: a re-run with "
                        "the same settings keeps the samples already written and draws the rest; another run's "
                        "folder is refused)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. sample.seed=1")
    parser.set_defaults(func=sample_main)
    return parser


def _config_overrides(args: argparse.Namespace) -> list[str]:
    """The command's `sample.*` options as config overrides, after the KEY=VALUE ones (so the options win)."""
    options = {"num_samples": args.num_samples, "sampler": args.sampler, "steps": args.steps,
               "cfg_scale": args.cfg_scale, "seed": args.seed, "batch_size": args.batch_size}
    return [*args.overrides, *(f"sample.{key}={value!r}" if isinstance(value, str) else f"sample.{key}={value}"
                               for key, value in options.items() if value is not None)]


def sample_main(args: argparse.Namespace) -> dict[str, Any] | None:
    """Run `flexgen sample`; returns the samples.json record on rank 0 (None on other ranks)."""
    from flexgen.config import load_config
    from flexgen.sampling.run import sample_run

    overrides = _config_overrides(args)
    return sample_run(load_config(args.config, overrides), args.ckpt, args.out, config=str(args.config),
                      overrides=overrides, device=args.device, dtype=args.dtype, fps=args.fps, sha256=args.sha256,
                      progress=not args.no_progress, overwrite=args.overwrite, npz=getattr(args, "npz", False))
