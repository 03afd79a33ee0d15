"""The `flexgen` command line.

    flexgen bench flops --model DiT-XL/2 --image-size 256 --json
    flexgen config configs/video/ucf101/latte-xl2.yaml sample.cfg_scale=4.0
    flexgen convert --from ffs.pt --config configs/video/ffs/latte-xl2.yaml --out ffs.safetensors
    flexgen demo
"""

from __future__ import annotations

import argparse
import json
import sys

# ----------------------------------------------------------------------------------------------------------
# bench flops


def bench_flops(args: argparse.Namespace) -> dict:
    from flexgen.flops import latte_macs
    from flexgen.video.latte import PRESETS, latte_config

    if args.config:
        from flexgen.config import load_config
        from flexgen.video.latte import latte_config_from_run
        config = latte_config_from_run(load_config(args.config, args.overrides))
    else:
        if args.model not in PRESETS:
            raise SystemExit(f"unknown model {args.model!r}; choose one of: {', '.join(PRESETS)}")
        temporal = PRESETS[args.model]["temporal"]
        if args.image_size % args.vae_factor:
            raise SystemExit(f"--image-size {args.image_size} is not divisible by --vae-factor {args.vae_factor}")
        num_classes = args.num_classes if args.num_classes is not None else (0 if temporal else 1000)
        frames = args.frames if args.frames is not None else (16 if temporal else 1)
        config = latte_config(args.model, input_size=args.image_size // args.vae_factor, num_frames=frames,
                              in_channels=args.in_channels, num_classes=num_classes)

    report = latte_macs(config)
    return {"model": args.model if not args.config else args.config,
            "image_size": config.input_size * args.vae_factor if not args.config else None,
            "latent": [config.num_frames, config.in_channels, config.input_size, config.input_size],
            "num_classes": config.num_classes, **report.to_dict()}


def run_bench_flops(args: argparse.Namespace) -> None:
    result = bench_flops(args)
    if args.json:
        print(json.dumps(result))
    else:
        print_flops(result)


def print_flops(result: dict) -> None:
    print(f"{result['model']}: latent (F, C, H, W) = {tuple(result['latent'])}, classes = {result['num_classes']}")
    print(f"  parameters  {result['params'] / 1e6:10.2f} M (trainable)")
    print(f"  MACs        {result['gmacs']:10.2f} G per forward, one sample (papers call these FLOPs)")
    for name, gmacs in result["breakdown"].items():
        print(f"    {name:<18} {gmacs:10.2f} G  {100 * gmacs / result['gmacs']:5.1f}%")
    print("  by operation: " + ", ".join(f"{op} {g:.2f} G" for op, g in result["by_op"].items()))


# ----------------------------------------------------------------------------------------------------------
# config, convert, demo


def show_config(args: argparse.Namespace) -> None:
    import yaml

    from flexgen.config import config_to_dict, load_config
    print(yaml.safe_dump(config_to_dict(load_config(args.path, args.overrides)), sort_keys=False), end="")


def convert(args: argparse.Namespace) -> None:
    from flexgen.checkpoint import load_weights, save_weights
    from flexgen.config import load_config
    from flexgen.video import FlexLatte, build_model

    model = build_model(load_config(args.config, args.overrides))
    load_weights(model, args.src, sha256=args.sha256)
    save_weights(model, args.out)
    layout = f", FlexDiT layout {model.roles}" if isinstance(model, FlexLatte) else ""
    print(f"wrote {args.out} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"{model.config.num_spatial} spatial + {model.config.num_temporal} temporal blocks{layout})")


DEMO_PLAN = """\
flexgen demo: the main job on embedded data. It will
  1. generate a small synthetic clip set (moving shapes, a few motion classes) as real mp4 files,
  2. train a small dense Latte on it on the CPU,
  3. convert it to FlexDiT and fine-tune briefly,
  4. sample videos from both (mp4 + a preview grid) and evaluate them,
  5. print and write a leaderboard with FLOPs per sample, latency and held-out loss.
The data pipeline, training loop and FlexDiT conversion are not built yet (issues 3 and 4); today this
command only prints this plan. What already runs: `flexgen bench flops --model Latte-XL/2 --json`.
"""


def demo(args: argparse.Namespace) -> None:
    print(DEMO_PLAN, end="")


# ----------------------------------------------------------------------------------------------------------
# Parser.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flexgen", description="Token-density control for diffusion transformers.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench = commands.add_parser("bench", help="measure models: FLOPs").add_subparsers(dest="bench", required=True,
                                                                                        metavar="WHAT")
    flops = bench.add_parser("flops", help="parameters and MACs per forward, counted on the meta device (no weights)",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    flops.add_argument("--model", default="Latte-XL/2", help="preset name, e.g. Latte-XL/2, DiT-XL/2")
    flops.add_argument("--image-size", type=int, default=256, help="image side in pixels")
    flops.add_argument("--frames", type=int, default=None, help="video frames (default 16 for Latte, 1 for DiT)")
    flops.add_argument("--vae-factor", type=int, default=8, help="autoencoder downsampling (1 = pixel space)")
    flops.add_argument("--in-channels", type=int, default=4, help="latent channels")
    flops.add_argument("--num-classes", type=int, default=None, help="classes (default 0 for Latte, 1000 for DiT)")
    flops.add_argument("--config", default=None, help="take the model from a run config instead of --model")
    flops.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of --config")
    flops.add_argument("--json", action="store_true", help="print one JSON object")
    flops.set_defaults(func=run_bench_flops)

    cfg = commands.add_parser("config", help="validate a config file and print it resolved")
    cfg.add_argument("path", help="YAML file, e.g. configs/video/ffs/latte-xl2.yaml")
    cfg.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. train.lr=2e-4")
    cfg.set_defaults(func=show_config)

    conv = commands.add_parser("convert", help="Latte/DiT checkpoint (official or ours) -> flexgen safetensors "
                               "with its config; a config with a density layout converts dense -> FlexDiT")
    conv.add_argument("--from", dest="src", required=True, help="checkpoint (.pt or .safetensors)")
    conv.add_argument("--config", required=True, help="run config whose model the checkpoint fits")
    conv.add_argument("--out", required=True, help="output .safetensors file")
    conv.add_argument("--sha256", default=None, help="expected sha256 of the checkpoint file")
    conv.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    conv.set_defaults(func=convert)

    dem = commands.add_parser("demo", help="the main job on embedded data (prints its plan until built)")
    dem.set_defaults(func=demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from flexgen.checkpoint import CheckpointError
    from flexgen.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, CheckpointError) as e:
        print(f"flexgen {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0
