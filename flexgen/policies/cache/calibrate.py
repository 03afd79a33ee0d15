"""`flexgen calibrate`: fit TeaCache's rescaling polynomial for the user's own model, and say what each threshold
would skip.

    flexgen calibrate --config configs/demo/demo-dense.yaml --ckpt results/demo/dense/ema.safetensors \
        --out calib.json --num-samples 16 --steps 50          # then: cache.method=teacache cache.coefficients=[...]

TeaCache's procedure (Liu et al. 2025, §3.4, and its repository's calibration notes): sample the model uncached,
record at every step the relative L1 change of the first block's modulated input (the indicator, `x`) and of the
model's output (`y`), and fit `numpy.polyfit(x, y, 4)` over all steps. Here the model runs with `cache.method=
teacache`, `threshold=0` (every step computes, the policy records `x`), and a wrapper records the outputs (both
CFG halves, as the sampler calls the model). The file stores the coefficients with what they were fitted on (config,
checkpoint sha256, sampler, steps, CFG, seeds), the fit's error, and for each threshold the steps and GMACs per
sample TeaCache would compute on these runs' indicators (an estimate from the uncached trajectory and the batch's
mean change, where the cache decides per sample; `flexgen sample` with the cache measures the real count).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flexgen.arguments import COUNT, NON_NEGATIVE, POSITIVE
from flexgen.policies.cache.config import CacheConfig

THRESHOLDS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)


# ---------------------------------------------------------------------------------------------------------------
# Pure parts: the change between consecutive outputs, the fit, the simulated decisions
# ---------------------------------------------------------------------------------------------------------------
def relative_change(current: torch.Tensor, previous: torch.Tensor) -> float:
    """mean |current − previous| / mean |previous| (TeaCache's relative L1 distance)."""
    return float((current - previous).abs().mean() / previous.abs().mean().clamp(min=1e-12))


def fit_rescale(x: Sequence[float], y: Sequence[float], degree: int = 4) -> dict[str, Any]:
    """The least-squares polynomial y ≈ p(x) (numpy.polyfit, highest degree first) and its error:
    {"coefficients", "rms_error", "relative_rms_error" (over the mean |y|), "points"}."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) != len(y) or len(x) <= degree:
        raise ValueError(f"a degree-{degree} fit needs more than {degree} (x, y) pairs, got {len(x)} and {len(y)}")
    coefficients = np.polyfit(x, y, degree)
    residual = y - np.polyval(coefficients, x)
    rms = float(np.sqrt(np.mean(residual ** 2)))
    return {"coefficients": [float(c) for c in coefficients], "rms_error": rms,
            "relative_rms_error": rms / max(float(np.mean(np.abs(y))), 1e-12), "points": int(len(x))}


def decisions(changes: Sequence[float], config: CacheConfig, keys: Sequence[str] | None = None) -> list[bool]:
    """Which forwards of one run TeaCache computes, given the run's indicator changes (one per forward after the
    first): the first and the last always, the others once the rescaled changes add up to the threshold, and with
    `keys` (one per forward: what the blocks depend on besides their input, e.g. DyDiT's width pattern) every
    forward whose key differs from the last computed one's (its residual is not reused there; the sums restart)."""
    from flexgen.policies.cache.policy import teacache_step

    due, accumulated, last = [True], torch.zeros(1, dtype=torch.float64), 0
    for i, change in enumerate(changes):
        now, accumulated = teacache_step(config, accumulated, torch.tensor([change], dtype=torch.float64),
                                         i == len(changes) - 1)
        if keys is not None and keys[i + 1] != keys[last]:
            now, accumulated = True, torch.zeros_like(accumulated)
        due.append(bool(now))
        last = i + 1 if now else last
    return due


def computed_steps(changes: Sequence[float], config: CacheConfig, keys: Sequence[str] | None = None) -> int:
    """How many forwards of one run TeaCache computes (`decisions`)."""
    return sum(decisions(changes, config, keys))


# ---------------------------------------------------------------------------------------------------------------
# Recording an uncached run
# ---------------------------------------------------------------------------------------------------------------
class Recorder:
    """One sampling run's forwards as they happen: each output (the sampler's view: both CFG halves in one batch)
    and its MACs per sample as it ran and as it would with the blocks skipped; `finish` pairs them with the
    indicator changes the cache traced (the model runs TeaCache at threshold 0)."""

    def __init__(self, cache: Any, samples: int):
        self.cache, self.samples, self.first = cache, samples, len(cache.trace)
        self.outputs, self.computed_macs, self.skipped_macs, self.keys = [], [], [], []

    def record(self, out: torch.Tensor, macs: torch.Tensor, cost: Any, grid: int | None, signature: Any) -> None:
        """A forward's output (rows, ...), MACs per row (rows,) at FlexDiT grid `grid`, and the policy's
        `signature()` (a cached residual is reused only under the same one)."""
        self.keys.append(hashlib.sha1(repr((tuple(out.shape), signature)).encode()).hexdigest()[:16])
        self.outputs.append(out.detach().float())
        self.computed_macs.append(float(macs.sum()) / self.samples)
        self.skipped_macs.append(out.shape[0] / self.samples * self.cache.skipped_macs(cost, grid))

    def around(self, model: Any):
        """`model` (a Denoiser) as a sampler's `model(x, t, **cond)` that records every call."""
        def call(x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            out = model(x, t, **kwargs)
            self.record(out, model.forward_macs(), model.cost(), model.policy.grid(), model.policy.signature())
            return out
        return call

    def finish(self) -> dict[str, list[float]]:
        """{"x": indicator changes, "y": output changes (one per forward after the first), "computed_macs",
        "skipped_macs", "keys" (one per forward)}."""
        x = self.cache.trace[self.first:]
        y = [relative_change(b, a) for a, b in zip(self.outputs, self.outputs[1:], strict=False)]
        if len(x) != len(self.outputs) or x[0] is not None or any(v is None for v in x[1:]):
            raise RuntimeError(f"the indicator was recorded at {len(x)} forwards for {len(self.outputs)} model "
                               "calls; a run must be one uninterrupted sequence of forwards")
        return {"x": x[1:], "y": y, "computed_macs": self.computed_macs, "skipped_macs": self.skipped_macs,
                "keys": self.keys}


def recording_cache(policy) -> Any:
    """The TeaCache part at threshold 0 that a calibration records through."""
    from flexgen.policies.cache.policy import StepCache

    cache = policy.part(StepCache)
    if cache is None or cache.config.method != "teacache" or cache.config.threshold != 0:
        raise ValueError("calibration records a TeaCache run at threshold 0 (every step computes)")
    return cache


def record_runs(model, seeds: Sequence[int], *, sampler: str, steps: int, cfg_scale: float, batch_size: int,
                options: dict[str, Any]) -> list[dict[str, list[float]]]:
    """`Recorder.finish` of each sampling run (a batch of `batch_size` seeds) of `model` (TeaCache at threshold 0)."""
    from flexgen.sampling.draw import draw

    cache = recording_cache(model.policy)
    runs = []
    for chunk, cond in batches(model, seeds, batch_size):
        recorder = Recorder(cache, len(chunk))
        with torch.no_grad():
            draw(model, chunk, cond, sampler=sampler, steps=steps, cfg_scale=cfg_scale, meter=recorder.around(model),
                 **options)
        runs.append(recorder.finish())
    return runs


def batches(model, seeds: Sequence[int], batch_size: int):
    """(seeds, condition) of each sampling run: `batch_size` seeds at a time, each with its label (`flexgen
    sample`'s: a function of the seed)."""
    cond = model.sampling_condition(len(seeds), seeds[0])
    for start in range(0, len(seeds), batch_size):
        chunk = list(seeds[start:start + batch_size])
        yield chunk, {k: v[start:start + len(chunk)] for k, v in cond.items()}


def mag_ratios(model, seeds: Sequence[int], *, sampler: str, steps: int, cfg_scale: float, batch_size: int,
               options: dict[str, Any]) -> list[list[float]]:
    """MagCache's ratios of each sampling run of `model`, which runs diffusers' mag hook in calibration mode
    (`cache.diffusers.calibrate: true`; it skips nothing)."""
    from flexgen.sampling.draw import draw

    cache = next(p for p in model.policy.parts if p.section == "cache")
    runs = []
    for chunk, cond in batches(model, seeds, batch_size):
        with torch.no_grad():
            draw(model, chunk, cond, sampler=sampler, steps=steps, cfg_scale=cfg_scale, **options)
        runs.append(list(cache.mag_ratios))
    return runs


# ---------------------------------------------------------------------------------------------------------------
# flexgen calibrate
# ---------------------------------------------------------------------------------------------------------------
def add_calibrate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", default=None, help="Latte / DiT: run config of the model (any policy; its cache "
                        "section is replaced by TeaCache at threshold 0 while recording)")
    parser.add_argument("--ckpt", default=None, help="Latte / DiT: weights (as flexgen sample takes them)")
    parser.add_argument("--model", default=None, help="PixArt-α: diffusers pipeline folder (as flexgen generate)")
    parser.add_argument("--transformer", default=None, help="PixArt-α: another transformer folder (FlexDiT, DyDiT)")
    parser.add_argument("--text-encoder", default=None, help="PixArt-α: T5 folder when the pipeline has none")
    parser.add_argument("--prompts", default=None, metavar="FILE", help="PixArt-α: prompts, one per line (one image "
                        "each, the first --num-samples of them)")
    parser.add_argument("--max-length", type=POSITIVE, default=120, help="PixArt-α: T5 tokens per prompt")
    parser.add_argument("--out", required=True, help="JSON file to write: coefficients, what they were fitted on, "
                                                     "the fit's error, steps and GMACs per threshold")
    parser.add_argument("--method", choices=("teacache", "mag"), default="teacache", help="teacache: fit its "
                        "rescaling polynomial; mag: diffusers' MagCache calibration mode, its ratios (dense models)")
    parser.add_argument("--num-samples", type=POSITIVE, default=16, help="samples recorded (TeaCache used ~70 prompts)")
    parser.add_argument("--batch-size", type=POSITIVE, default=8, help="samples per sampling run")
    parser.add_argument("--sampler", default=None, help="default sample.sampler (PixArt-α: flexgen generate's)")
    parser.add_argument("--steps", type=POSITIVE, default=None, help="default sample.steps (PixArt-α: 20)")
    parser.add_argument("--cfg-scale", type=NON_NEGATIVE, default=None, help="default sample.cfg_scale (PixArt-α: 4.5)")
    parser.add_argument("--seed", type=COUNT, default=0, help="sample i uses seed + i")
    parser.add_argument("--degree", type=int, default=4, help="degree of the polynomial (TeaCache: 4)")
    parser.add_argument("--thresholds", default=",".join(f"{t:g}" for t in THRESHOLDS),
                        help="comma-separated thresholds to report")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    return parser


def calibrate(model, run, seeds: Sequence[int], *, sampler: str, steps: int, cfg_scale: float, batch_size: int,
              degree: int = 4, thresholds: Sequence[float] = THRESHOLDS) -> dict[str, Any]:
    """Record uncached runs of `model` (TeaCache at threshold 0, `run` its config) and `summarise` them."""
    from flexgen.sampling.cost import cfg_passes
    from flexgen.sampling.draw import run_options

    runs = record_runs(model, seeds, sampler=sampler, steps=steps, cfg_scale=cfg_scale, batch_size=batch_size,
                       options=run_options(run))
    dense = cfg_passes(model, cfg_scale) * steps * model.cost().forward_macs(None).gmacs
    return summarise(runs, steps, dense, degree, thresholds)


def summarise(runs: Sequence[dict], steps: int, dense_gmacs: float, degree: int = 4,
              thresholds: Sequence[float] = THRESHOLDS) -> dict[str, Any]:
    """Fit the polynomial on recorded runs and estimate each threshold's computed steps and GMACs per sample:
    {**fit_rescale(...), "thresholds", "runs", "uncached_gmacs_per_sample", "dense_gmacs_per_sample", "recorded"}."""
    fit = fit_rescale([v for r in runs for v in r["x"]], [v for r in runs for v in r["y"]], degree)
    table = []
    for threshold in thresholds:
        gmacs, computed = estimate(runs, fit["coefficients"], threshold)
        table.append({"threshold": threshold, "steps_computed": computed, "fraction": computed / steps,
                      "gmacs_per_sample": gmacs})
    return {**fit, "degree": degree, "runs": len(runs), "thresholds": table,
            "uncached_gmacs_per_sample": float(np.mean([sum(r["computed_macs"]) for r in runs])) / 1e9,
            "dense_gmacs_per_sample": dense_gmacs, "recorded": list(runs)}


def threshold_for_budget(calibration: dict, budget: float, iterations: int = 40) -> dict[str, Any]:
    """A TeaCache threshold whose estimated cost on a calibration's recorded runs is within `budget` (a fraction of
    the dense model's MACs per sample): the edge bisection finds between 0 and a threshold no run's changes reach
    (the cost falls as the threshold grows, nearly always: a forced step where DyDiT's pattern or FlexDiT's grid
    changes can break that, so a smaller one may exist), given with the fewest digits that still meet the budget:
    {"budget", "threshold" (None when even the steps it must compute exceed it), "gmacs_per_sample",
    "fraction_of_dense", "steps_computed"}."""
    runs, dense, coefficients = calibration["recorded"], calibration["dense_gmacs_per_sample"], \
        calibration["coefficients"]

    def fits(threshold: float) -> bool:
        return estimate(runs, coefficients, threshold)[0] <= budget * dense

    def answer(threshold: float | None, at: float) -> dict[str, Any]:
        gmacs, steps = estimate(runs, coefficients, at)
        return {"budget": budget, "threshold": threshold, "gmacs_per_sample": gmacs,
                "fraction_of_dense": gmacs / dense, "steps_computed": steps}

    rescaled = CacheConfig("teacache", coefficients=coefficients)
    low, high = 0.0, 1.0 + max(sum(rescaled.rescale(v) for v in r["x"]) for r in runs)   # reached by no run
    if not fits(high):
        return answer(None, high)
    if fits(low):
        return answer(0.0, 0.0)
    for _ in range(iterations):
        if high - low < 1e-6:
            break
        middle = (low + high) / 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    for digits in range(2, 9):                          # the edge rounded up, as short as still fits
        scale = 10 ** (digits - 1 - math.floor(math.log10(high)))
        shown = math.ceil(high * scale) / scale
        if fits(shown):
            return answer(shown, shown)
    return answer(high, high)


def estimate(runs: Sequence[dict], coefficients: Sequence[float], threshold: float) -> tuple[float, float]:
    """(GMACs per sample, computed steps) TeaCache at `threshold` with `coefficients` would spend on recorded runs
    (`record_runs`), the mean over runs: each forward's MACs as run where it computes, with the blocks skipped where
    it reuses."""
    config = CacheConfig("teacache", threshold=threshold, coefficients=list(coefficients))
    gmacs, steps = [], []
    for r in runs:
        due = decisions(r["x"], config, r.get("keys"))
        gmacs.append(sum(on if ran else off for ran, on, off in zip(due, r["computed_macs"], r["skipped_macs"],
                                                                    strict=True)) / 1e9)
        steps.append(sum(due))
    return float(np.mean(gmacs)), float(np.mean(steps))


def calibrate_main(args: argparse.Namespace) -> dict[str, Any]:
    from flexgen.config import config_to_dict, load_config
    from flexgen.files import file_sha256
    from flexgen.policies.cache.provenance import uncached_label
    from flexgen.registry import build_denoiser
    from flexgen.sampling.draw import run_options

    thresholds = parse_thresholds(args)
    if not args.config or not args.ckpt:
        raise ValueError("give --config and --ckpt (a Latte / DiT run), or --model and --prompts (PixArt-α)")
    run = load_config(args.config, args.overrides)
    s = run.sample
    sampler, steps = args.sampler or s.sampler, args.steps or s.steps
    cfg_scale = s.cfg_scale if args.cfg_scale is None else args.cfg_scale
    run = dataclasses.replace(run, cache=recording(args.method, steps))
    model = build_denoiser(run)
    model.load_pretrained(args.ckpt, routers_required=True)
    model = model.eval()
    seeds = list(range(args.seed, args.seed + args.num_samples))
    fitted_on = {"config": str(args.config), "overrides": list(args.overrides), "checkpoint": str(args.ckpt),
                 "checkpoint_sha256": file_sha256(args.ckpt), "model": run.model.preset,
                 "image_size": run.data.image_size, "num_frames": model.config.num_frames,
                 "policy": uncached_label(model.policy),
                 "sampler": sampler, "steps": steps, "cfg_scale": cfg_scale, "seeds": [seeds[0], seeds[-1]],
                 "run_config": config_to_dict(run)}
    if args.method == "mag":
        ratios = mag_ratios(model, seeds, sampler=sampler, steps=steps, cfg_scale=cfg_scale,
                            batch_size=args.batch_size, options=run_options(run))
        return write_mag(args.out, ratios, fitted_on)
    fitted = calibrate(model, run, seeds, sampler=sampler, steps=steps, cfg_scale=cfg_scale,
                       batch_size=args.batch_size, degree=args.degree, thresholds=thresholds)
    return write_calibration(args.out, fitted, {**fitted_on, "runs": fitted["runs"]})


def recording(method: str = "teacache", steps: int | None = None) -> CacheConfig:
    """The cache section a calibration records under (it replaces the run's): TeaCache at threshold 0, or
    diffusers' mag hook in its calibration mode for `steps` steps (both compute every step)."""
    if method == "mag":
        return CacheConfig("mag", diffusers={"calibrate": True, "num_inference_steps": steps})
    return CacheConfig("teacache", threshold=0.0)


def write_mag(out: str | Path, runs: Sequence[Sequence[float]], fitted_on: dict[str, Any]) -> dict[str, Any]:
    """Write MagCache's ratios (the mean over runs of each step's, and each run's) as `out` (JSON) and print them."""
    from flexgen.files import atomic_write_text

    ratios = np.mean(np.asarray(runs, dtype=np.float64), axis=0)
    spread = float(np.max(np.std(np.asarray(runs, dtype=np.float64), axis=0))) if len(runs) > 1 else 0.0
    result = {"method": "mag", "mag_ratios": [float(r) for r in ratios], "ratios_per_run": [list(r) for r in runs],
              "runs": len(runs), "largest_std_over_runs": spread, "fitted_on": {**fitted_on, "runs": len(runs)},
              "use": f"cache.method=mag cache.calibration={out} cache.diffusers.threshold=<e.g. 0.06>"}
    atomic_write_text(Path(out), json.dumps(result, indent=2))
    print(f"MagCache ratios of {len(ratios)} steps over {len(runs)} runs (largest std over runs {spread:.4f}); "
          f"wrote {out}")
    print("  " + " ".join(f"{r:.3f}" for r in ratios))
    print(f"use: {result['use']}")
    return result


def write_calibration(out: str | Path, fitted: dict[str, Any], fitted_on: dict[str, Any]) -> dict[str, Any]:
    """Write `summarise`'s result with what it was fitted on as `out` (JSON) and print the table."""
    from flexgen.files import atomic_write_text

    result = {"method": "teacache", **fitted, "fitted_on": fitted_on,
              "use": f"cache.method=teacache cache.calibration={out} cache.threshold=<one of the thresholds> (or "
                     f"{coefficients_override(fitted['coefficients'])})"}
    atomic_write_text(Path(out), json.dumps(result, indent=2))
    print(f"fitted a degree-{fitted['degree']} polynomial on {fitted['points']} steps of {fitted['runs']} runs "
          f"(relative RMS error {fitted['relative_rms_error']:.3f}); wrote {out}")
    for row in fitted["thresholds"]:
        print(f"  threshold {row['threshold']:g}: {row['steps_computed']:.1f} of {fitted_on['steps']} steps "
              f"computed, {row['gmacs_per_sample']:.3f} GMACs per sample")
    print(f"use: {result['use']}")
    return result


def parse_thresholds(args: argparse.Namespace) -> list[float]:
    """--thresholds as floats, after checking --num-samples and --batch-size."""
    if args.num_samples < 1 or args.batch_size < 1:
        raise ValueError(f"--num-samples and --batch-size must be >= 1, got {args.num_samples}, {args.batch_size}")
    try:
        return [float(t) for t in str(args.thresholds).split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--thresholds {args.thresholds}: expected comma-separated numbers") from None


def coefficients_override(coefficients: Sequence[float]) -> str:
    """The config override that sets them: cache.coefficients=[a, b, ...] (full precision)."""
    return f"cache.coefficients=[{', '.join(repr(float(c)) for c in coefficients)}]"
