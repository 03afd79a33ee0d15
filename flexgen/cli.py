"""The `flexgen` command line.

    flexgen bench flops --model DiT-XL/2 --image-size 256 --json
    flexgen bench flops --model DiT-XL/2 --image-size 512 --layout DiT-XL/2 --grid-min 12 --grid-max 20
    flexgen bench flops --config configs/t2i/pixart/flexpixart-xl2-512.yaml
    flexgen bench latency --model PixArt-XL/2-256 --layout PixArt-XL/2 --grid-min 5 --grid-max 8 --cfg-scale 4.5
    flexgen bench latency --config configs/video/ffs/flexlatte-xl2.yaml model.preset=Latte-B/2
    flexgen bench flops --model DiT-XL/2 --target 0.5
    flexgen bench latency --model DiT-XL/2 --target 0.5 --cfg-scale 1.5
    flexgen bench plan --model DiT-XL/2 --budget 0.5 --sampler ddim --steps 50
    flexgen bench suite                                   # CPU: small models within 540 s
    flexgen bench suite --device cuda --dtype bfloat16    # the full table at batch 8
    flexgen config configs/video/ucf101/latte-xl2.yaml sample.cfg_scale=4.0
    flexgen convert --from ffs.pt --config configs/video/ffs/latte-xl2.yaml --out ffs.safetensors
    flexgen calibrate --config configs/demo/demo-dense.yaml --ckpt results/demo/dense/ema.safetensors --out calib.json
    flexgen demo
    flexgen generate "a red cat on a tree" --model /models/PixArt-XL-2-512x512 --out cat.png
    flexgen generate --prompts prompts.txt --num-images 4 --model /models/PixArt-XL-2-512x512 \\
        --transformer runs/flexdit-512/export --text-encoder /models/t5-v1_1-xxl --out samples/flex.png
    flexgen data cache-text --root /data/pokemon --text-encoder /models/PixArt-XL-2-512x512 --cache /cache/t5
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from flexgen import __version__

# ----------------------------------------------------------------------------------------------------------
# config, convert, demo (bench: flexgen/bench/commands.py)


def show_config(args: argparse.Namespace) -> None:
    import yaml

    from flexgen.config import config_to_dict, load_config
    print(yaml.safe_dump(config_to_dict(load_config(args.path, args.overrides)), sort_keys=False), end="")


def convert(args: argparse.Namespace) -> None:
    """Weights of the config's model family (official or ours) -> its exchange format; a config with a density
    layout converts dense -> FlexDiT on load, one with a dydit section dense -> DyDiT (fresh routers, importance
    ordering)."""
    from flexgen.config import load_config
    from flexgen.registry import build_denoiser

    run = load_config(args.config, args.overrides)
    model = build_denoiser(run)
    model.load_pretrained(args.src, sha256=args.sha256)
    written = model.export(args.out)
    policy = model.policy.describe()
    print(f"wrote {written} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"{model.describe()}{', ' + policy if policy else ''})")


def default_run_dir(config_path: str, overrides: list[str], results_dir: str) -> Path:
    """results_dir/<config name>, or results_dir/<config name>-<hash> when the overrides change the run's identity
    (`flexgen.train.run_identity`: the resolved config without the resumable keys). The same run finds the same
    directory whatever the order of its overrides, and extending `train.total_samples` resumes it."""
    from flexgen.config import load_config
    from flexgen.train import run_identity

    name = Path(config_path).stem
    identity = run_identity(load_config(config_path, overrides))
    if identity != run_identity(load_config(config_path)):
        name += "-" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    return Path(results_dir) / name


def train_command(args: argparse.Namespace) -> None:
    from flexgen.config import load_config
    from flexgen.train import train

    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(args.config, args.overrides,
                                                                      cfg.train.results_dir)
    summary = train(cfg, run_dir, device=args.device, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        state = "finished" if summary["finished"] else "stopped"
        print(f"{state} at {summary['samples']} clips ({summary['step']} steps); run directory {run_dir}")


def cache_text_command(args: argparse.Namespace) -> None:
    from flexgen.data.prepare import cache_text_main

    cache_text_main(args)


def eval_command(args: argparse.Namespace) -> object:
    """`flexgen eval`: the SynthMotion yardstick (`metrics.synthmotion_eval`, which builds on `metrics.evaluate`),
    or `eval_command.eval_main` for every other metric."""
    if args.metric == "synthmotion":
        from flexgen.metrics.synthmotion_eval import synthmotion_main

        return synthmotion_main(args)
    from flexgen.metrics.eval_command import eval_main

    return eval_main(args)


def calibrate_command(args: argparse.Namespace) -> object:
    """`flexgen calibrate`: a Latte / DiT run (`policies.cache.calibrate`), or PixArt-α with --prompts
    (`t2i.cache_calibration`, which builds on it)."""
    if args.prompts:
        from flexgen.t2i.cache_calibration import pixart_calibrate_main

        return pixart_calibrate_main(args)
    from flexgen.policies.cache.calibrate import calibrate_main

    return calibrate_main(args)


def demo(args: argparse.Namespace) -> None:
    from flexgen.demo import run_demo, summary_markdown

    result = run_demo(args.out, quick=args.quick, progress=not args.no_progress)
    print()
    print(summary_markdown(result), end="")
    print(f"the board (leaderboard.md / .html / .png), samples.png, records.jsonl, samples and checkpoints in "
          f"{args.out}")


# ----------------------------------------------------------------------------------------------------------
# Parser.


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose "arguments are required" error also names the options it did not recognise (a
    typo such as `--confg` otherwise reads as "--config is required"); the subcommands' parsers are of this class."""

    argv: list[str] = []                        # the command line being parsed (set by `main`)

    def error(self, message: str):
        if message.startswith("the following arguments are required"):
            import difflib

            known = [o for o in self._option_string_actions if o.startswith("--")] + ["--debug"]
            unknown = [a.split("=")[0] for a in self.argv if a.startswith("--") and a.split("=")[0] not in known]
            for option in unknown:                 # a typo of one of this parser's options
                close = difflib.get_close_matches(option, known, n=1)
                if close:
                    message += f"; unrecognized {option} (did you mean {close[0]}?)"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="flexgen", description="Token-density control for diffusion transformers.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or set "
                        "FLEXGEN_DEBUG=1)")
    parser.add_argument("--version", action="version", version=f"flexgen {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from flexgen.bench.commands import add_parsers as add_bench_parsers
    from flexgen.t2i.generate import add_generate_arguments

    add_bench_parsers(commands)

    cfg = commands.add_parser("config", help="validate a config file and print it resolved")
    cfg.add_argument("path", help="YAML file, e.g. configs/video/ffs/latte-xl2.yaml")
    cfg.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. train.lr=2e-4")
    cfg.set_defaults(func=show_config)

    conv = commands.add_parser("convert", help="Latte/DiT checkpoint (official or ours) -> flexgen safetensors "
                               "with its config, or a PixArt-α diffusers folder -> a transformer folder; a config "
                               "with a density layout converts dense -> FlexDiT")
    conv.add_argument("--from", dest="src", required=True, help="checkpoint (.pt or .safetensors); PixArt-α: a "
                      "pipeline or transformer folder")
    conv.add_argument("--config", required=True, help="run config whose model the checkpoint fits")
    conv.add_argument("--out", required=True, help="output .safetensors file; PixArt-α: output folder")
    conv.add_argument("--sha256", default=None, help="expected sha256 of the checkpoint file")
    conv.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    conv.set_defaults(func=convert)

    tr = commands.add_parser("train", help="train or fine-tune (re-run the same command to resume; DDP under "
                             "torchrun)")
    tr.add_argument("--config", required=True, help="run config, e.g. configs/video/ffs/latte-xl2.yaml")
    tr.add_argument("--run-dir", default=None, help="run directory (default: train.results_dir/<config name>)")
    tr.add_argument("--device", default=None, help="cpu, cuda (default: cuda:LOCAL_RANK if available)")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar (the resume / start line and "
                    "stats.jsonl are written all the same)")
    tr.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.lr=2e-4")
    tr.set_defaults(func=train_command)

    from flexgen.sample import add_sample_arguments
    add_sample_arguments(commands.add_parser("sample", help="generate videos (images for DiT) from a checkpoint: "
                                             "mp4 files, grid.png, samples.json; sharded under torchrun"))

    from flexgen.metrics.eval_command import add_eval_arguments
    add_eval_arguments(commands.add_parser("eval", help="FVD / KID of generated videos, FID of images (clean-fid "
                                           "Inception), CLIP score, under a named protocol; verified detectors")
                       ).set_defaults(func=eval_command)
    from flexgen.metrics.leaderboard import add_leaderboard_arguments
    add_leaderboard_arguments(commands.add_parser("leaderboard", help="render evaluation records and the published "
                                                  "anchors: Markdown, HTML, FLOPs-vs-metric plot"))

    add_generate_arguments(commands.add_parser(
        "generate", help="text-to-image with PixArt-α (dense or FlexDiT) from local folders: PNG image(s), a grid, "
        "and a JSON record of prompts, seeds and settings"))

    from flexgen.policies.cache.calibrate import add_calibrate_arguments
    add_calibrate_arguments(commands.add_parser(
        "calibrate", help="fit TeaCache's rescaling polynomial for a model (uncached runs) and report the steps and "
        "GMACs each threshold would compute")).set_defaults(func=calibrate_command)

    dem = commands.add_parser("demo", help="the whole loop on embedded synthetic data, on a CPU: train dense, "
                              "convert to FlexDiT and fine-tune, sample, measure, leaderboard")
    dem.add_argument("--out", default="results/demo", help="output folder")
    dem.add_argument("--quick", action="store_true", help="tiny budgets (seconds, not minutes): a smoke test")
    dem.add_argument("--no-progress", action="store_true", help="no progress bars")
    dem.set_defaults(func=demo)

    data = commands.add_parser("data", help="datasets").add_subparsers(dest="data", required=True, metavar="WHAT")
    from flexgen.data.prepare import add_prepare_arguments, prepare_main
    prep = data.add_parser("prepare", help="check and index a downloaded dataset; convert videos to frame "
                           "folders for FVD reference sets")
    add_prepare_arguments(prep)
    prep.set_defaults(func=prepare_main)
    from flexgen.data.prepare import add_cache_text_arguments
    cache = data.add_parser("cache-text", help="encode every caption of an image–caption folder with T5 once into "
                            "a cache of text embeddings for PixArt-α fine-tuning",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_cache_text_arguments(cache)
    cache.set_defaults(func=cache_text_command)
    from flexgen.data.latents import add_encode_arguments, encode_main
    enc = data.add_parser("encode", help="encode an image dataset (ImageNet layout) with the run's VAE once into a "
                          "sharded latent store (data.dataset latents), resumable, under torchrun across GPUs",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_encode_arguments(enc)
    enc.set_defaults(func=encode_main)
    _no_abbreviations(parser)
    return parser


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """Every parser of the tree takes its options whole: `--num-sam` is not silently `--num-samples`, and a typo
    (`--confg`) is named as unrecognized (argparse reads `allow_abbrev` when parsing, so it is set on each)."""
    parser.allow_abbrev = False
    for action in parser._actions:                          # (argparse keeps the subparsers there)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _no_abbreviations(sub)


@contextlib.contextmanager
def _data_warnings_as_lines(command: str) -> Iterator[None]:
    """While a command runs, bad input that is skipped (a DataWarning) is reported as `flexgen CMD: warning: ...`,
    without the source line Python's default format adds; other warnings keep that format."""
    import warnings

    from flexgen.data.base import DataWarning

    default = warnings.formatwarning

    def format_warning(message, category, filename, lineno, line=None):
        if issubclass(category, DataWarning):
            return f"flexgen {command}: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = format_warning
    try:
        yield
    finally:
        warnings.formatwarning = default


def expected_errors() -> tuple[type[BaseException], ...]:
    """What bad input raises (a missing, corrupt or wrong file, a bad value, a wrong layout): reported as one line
    `flexgen COMMAND: error: ...`, exit status 2. Anything else is a bug and keeps its traceback."""
    from flexgen.attention import BackendUnavailableError
    from flexgen.data.base import VideoDecodeError
    return (ValueError, OSError, VideoDecodeError, BackendUnavailableError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    Parser.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, extra = parser.parse_known_args(argv)
    finally:
        Parser.argv = []
    # KEY=VALUE overrides may follow options too (argparse takes one run of positionals only); in order.
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    debug = args.debug or os.environ.get("FLEXGEN_DEBUG", "") not in ("", "0")
    # xformers logs six lines at import where its kernels do not match this torch (diffusers imports it too);
    # flexgen.attention keeps that reason for every error that needs xformers, and runs SDPA meanwhile
    logging.getLogger("xformers").setLevel(logging.ERROR)
    command = " ".join(filter(None, (args.command, getattr(args, "bench", None), getattr(args, "data", None))))
    try:
        with _data_warnings_as_lines(command):
            args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"flexgen {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug or not isinstance(e, expected_errors()):
            raise
        print(f"flexgen {command}: error: {e}", file=sys.stderr)
        return 2
    return 0
