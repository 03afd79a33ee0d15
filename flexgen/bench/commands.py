"""`flexgen bench flops | latency | plan | suite`: each command's arguments beside what it runs, and `add_parsers`,
which puts them under the command line. A command's module (and with it diffusers and torch._dynamo) is imported
when the command runs, not when the parser is built."""

from __future__ import annotations

import argparse
import json

from flexgen.arguments import COUNT, NON_NEGATIVE, POSITIVE, device
from flexgen.bench.options import add_model_arguments


def _report(args: argparse.Namespace, result: dict, show) -> None:
    """`result` as one JSON object with --json, else as `show` prints it."""
    if args.json:
        print(json.dumps(result))
    else:
        show(result)


# ----------------------------------------------------------------------------------------------------------
# flops


def add_flops_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--num-samples", type=POSITIVE, default=8, help="DyDiT --ckpt: seeds whose sampling runs are "
                        "counted (sample i: seed sample.seed + i and its label)")


def flops_command(args: argparse.Namespace) -> None:
    from flexgen.bench.flops import bench_flops, print_flops
    _report(args, bench_flops(args), print_flops)


# ----------------------------------------------------------------------------------------------------------
# latency


def add_latency_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--batch", type=POSITIVE, default=1, help="samples per forward")
    parser.add_argument("--repeats", type=POSITIVE, default=3, help="timed repeats (median)")
    parser.add_argument("--warmup", type=COUNT, default=1, help="untimed repeats first")
    parser.add_argument("--cfg-scale", type=NON_NEGATIVE, default=None,
                        help="also time a sampling step with CFG at this "
                        "scale, and a whole sampling run (a run with a step cache: whole runs only, at the run's "
                        "sample.cfg_scale unless given)")
    parser.add_argument("--sampler", default=None, help="sampler of the timed run, one the model's family offers: "
                        "ddpm | ddim | dpm-solver++ for Latte / DiT (default ddpm), dpm-solver++ | dpm-solver | "
                        "sa-solver | ddim | euler | ddpm for PixArt-α (default dpm-solver++; with a step cache: the "
                        "run's sample.sampler)")
    parser.add_argument("--steps", type=POSITIVE, default=None,
                        help="its steps (default: the family's, 250 for ddpm on "
                        "Latte / DiT, 20 for PixArt-α; with a step cache: the run's sample.steps)")
    parser.add_argument("--compile", action="store_true", help="torch.compile dense and dynamic models alike (one "
                        "graph per grid or mask pattern)")
    parser.add_argument("--attention", choices=("diffusers", "flexgen"), default="diffusers",
                        help="PixArt-α: diffusers' attention processors or flexgen.attention (packed text)")


def latency_command(args: argparse.Namespace) -> None:
    from flexgen.bench.latency import bench_latency, print_latency
    _report(args, bench_latency(args), print_latency)


# ----------------------------------------------------------------------------------------------------------
# plan


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget", type=NON_NEGATIVE, required=True,
                        help="fraction of the dense model's MACs per sample")
    parser.add_argument("--sampler", default=None, help="the sampler whose timesteps count (default: the family's)")
    parser.add_argument("--steps", type=POSITIVE, default=None, help="its steps (default: the family's)")
    parser.add_argument("--top", type=POSITIVE, default=20, help="schedules listed")
    parser.add_argument("--calibration", default=None, help="a flexgen calibrate file: the TeaCache threshold that "
                        "meets the budget on its recorded runs (instead of the FlexDiT / DyDiT plan)")
    parser.add_argument("--num-samples", type=POSITIVE, default=4, help="with --ckpt (a trained DyDiT): seeds per "
                        "sampler whose kept counts give its realised FLOPs fraction")
    add_model_arguments(parser)


def plan_command(args: argparse.Namespace) -> None:
    from flexgen.bench.plan import bench_plan, print_plan
    _report(args, bench_plan(args), print_plan)


# ----------------------------------------------------------------------------------------------------------
# suite


def add_suite_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", type=device, default="cpu", help="cpu, cuda (this rank's GPU) or cuda:N")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--batch", type=POSITIVE, default=None,
                        help="samples per forward (default 8 on CUDA, 1 on CPU)")
    parser.add_argument("--set", choices=("full", "small"), default=None, help="the models: full (DiT-XL/2 256 / "
                        "512, Latte-XL/2, PixArt-α 256 / 512 / 1024-MS) or small (default: full on CUDA, small on CPU)")
    parser.add_argument("--models", nargs="+", default=None, metavar="KEY", help="these models instead, e.g. "
                        "dit-xl2-512 pixart-512 (see flexgen.bench.suite.MODELS)")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds for the whole suite: rows whose "
                        "estimated time does not fit are skipped and listed (default 540 on CPU, none on CUDA; 0: "
                        "none)")
    parser.add_argument("--repeats", type=POSITIVE, default=2, help="timed repeats (median)")
    parser.add_argument("--warmup", type=COUNT, default=1, help="untimed repeats first")
    parser.add_argument("--compile", action="store_true", help="torch.compile dense and dynamic models alike")
    parser.add_argument("--out", default=None, help="output folder (default results/bench-suite-<device>-<dtype>)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every model")


def suite_command(args: argparse.Namespace) -> None:
    from flexgen.bench.suite import bench_suite, print_suite
    _report(args, bench_suite(args), print_suite)


# ----------------------------------------------------------------------------------------------------------
# The `bench` command.

COMMANDS = (
    ("flops", "parameters and MACs per forward, counted on the meta device (no weights); dense vs FlexDiT with "
     "--layout, vs DyDiT with --target or --ckpt", add_flops_arguments, flops_command),
    ("latency", "dense vs FlexDiT or DyDiT latency in one process, beside the MAC ratio", add_latency_arguments,
     latency_command),
    ("plan", "FlexDiT schedules that meet a MACs budget under a sampler (most tokens first), and the DyDiT λ for it; "
     "with --calibration, the TeaCache threshold for it",
     add_plan_arguments, plan_command),
    ("suite", "the standard speed table: dense vs FlexDiT vs DyDiT vs both on the papers' models, with latency, "
     "memory and TFLOP/s; writes suite.json, suite.md, suite.svg", add_suite_arguments, suite_command),
)


def add_parsers(commands) -> None:
    """`flexgen bench WHAT` under `commands` (the command line's subparsers)."""
    bench = commands.add_parser("bench", help="measure models: FLOPs, latency").add_subparsers(
        dest="bench", required=True, metavar="WHAT")
    for name, help_, add_arguments, run in COMMANDS:
        parser = bench.add_parser(name, help=help_, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        add_arguments(parser)
        parser.set_defaults(func=run)
