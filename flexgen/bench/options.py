"""The model a bench command measures: the flags `flexgen bench flops | latency | plan` share (a preset and its
size, a FlexDiT layout and schedule, a DyDiT λ, or a run config with overrides) and the run they make."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from flexgen.arguments import device


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="Latte-XL/2", help="preset name, e.g. Latte-XL/2, DiT-XL/2, "
                        "PixArt-XL/2-512")
    parser.add_argument("--image-size", type=int, default=None, help="image side in pixels (default 256; PixArt-α: "
                        "the preset's)")
    parser.add_argument("--frames", type=int, default=None, help="video frames (default 16 for Latte, 1 for DiT)")
    parser.add_argument("--vae-factor", type=int, default=8, help="autoencoder downsampling (1 = pixel space)")
    parser.add_argument("--in-channels", type=int, default=4, help="latent channels")
    parser.add_argument("--num-classes", type=int, default=None, help="classes (default 0 for Latte, 1000 for DiT)")
    parser.add_argument("--layout", default="", help="FlexDiT layout: a preset (DiT-XL/2, Latte-XL/2, ...) or roles")
    parser.add_argument("--grid-min", type=int, default=6, help="Eq. 5 sparse side at the noisiest steps")
    parser.add_argument("--grid-max", type=int, default=10, help="Eq. 5 sparse side at the cleanest steps")
    parser.add_argument("--reading", choices=("B", "A"), default="B", help="Eq. 5 reading")
    parser.add_argument("--grid", type=int, default=0, help="a constant sparse side instead of Eq. 5")
    parser.add_argument("--pool-frames", type=int, default=0, help="pool across frames to this many (0: per frame)")
    parser.add_argument("--config", default=None, help="take model and density from a run config instead")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of --config")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--target", type=float, default=None, help="DyDiT λ: with --model, a DyDiT model; its "
                        "routers set to keep round(λ·H) heads and MLP groups and every token (no weights needed)")
    parser.add_argument("--scattered", action="store_true", help="DyDiT without --ckpt: synthetic routers set as "
                        "a trained router looks (units spread over each block, 70%% of the tokens per MLP)")
    parser.add_argument("--ckpt", default=None, help="a trained DyDiT checkpoint (with --config of a dydit run): "
                        "its real routers")
    parser.add_argument("--device", type=device, default="cpu", help="cpu, cuda (this rank's GPU) or cuda:N")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")


def bench_run(args: argparse.Namespace, whole_runs: bool = False) -> tuple[Any, str]:
    """(run configuration, name) from --config [KEY=VALUE ...] or from --model and the size / density flags; a step
    cache only for a command that times `whole_runs`."""
    from flexgen import policies

    run, name = _bench_run(args, whole_runs)
    if getattr(args, "scattered", False) and (args.ckpt or not policies.from_run(run).gated):
        raise ValueError("--scattered sets DyDiT's synthetic routers: give --target or a dydit config, without "
                         "--ckpt (a checkpoint's routers are its own)")
    return run, name


def _bench_run(args: argparse.Namespace, whole_runs: bool) -> tuple[Any, str]:
    from flexgen import policies
    from flexgen.config import load_config
    from flexgen.policies.flexdit import DensityConfig, ScheduleConfig
    from flexgen.registry import denoiser_class

    if args.config:
        run = load_config(args.config, args.overrides)
        policy = policies.from_run(run)
        if getattr(args, "target", None) is not None and not policy.gated:
            raise ValueError(f"--target is DyDiT's λ, but {args.config} has no dydit section (with a target)")
        if not policy.per_forward and not whole_runs:
            raise ValueError(f"{args.config} runs {policy.label()}: a step cache saves whole sampler steps, so one "
                             "forward's cost says nothing of it; measure it over sampling runs (flexgen bench "
                             "latency times them; flexgen sample records the MACs of the steps that ran)")
        return run, args.config
    if args.overrides:
        raise ValueError("KEY=VALUE overrides apply to --config only")
    family = denoiser_class(args.model)                  # an unknown preset: an error listing them
    overrides = family.preset_overrides(args.model, image_size=args.image_size, frames=args.frames,
                                        num_classes=args.num_classes, in_channels=args.in_channels,
                                        vae_factor=args.vae_factor)
    run = load_config(None, overrides)
    if getattr(args, "target", None) is not None:                # DyDiT at λ = --target (synthetic routers)
        run = policies.DyDiT.at_target(run, args.target)
    if args.layout:
        schedule = ScheduleConfig(kind="constant", grid=args.grid) if args.grid else ScheduleConfig(
            kind="eq5", grid_min=args.grid_min, grid_max=args.grid_max, reading=args.reading)
        run = dataclasses.replace(run, density=DensityConfig(layout=args.layout, schedule=schedule,
                                                             pool_frames=args.pool_frames))
    return run, f"{args.model} {run.data.image_size}px"
