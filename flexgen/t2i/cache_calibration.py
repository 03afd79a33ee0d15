"""`flexgen calibrate --model PIPELINE --prompts FILE`: TeaCache's calibration on PixArt-α, through the diffusers
pipeline `flexgen generate` runs (`flexgen.policies.cache.calibrate` is the procedure; this is its PixArt-α side).

The transformer runs TeaCache at threshold 0 around its own policy (dense, FlexDiT, DyDiT), so every step computes
and the cache traces the first block's modulated-input change; a forward hook records each call's output (both CFG
halves in one batch, as the pipeline calls it) and its MACs as run and as they would be with the blocks skipped.
One pipeline call of `--batch-size` prompts is one run. MACs are counted at the model's native size with 120 text
tokens (as `flexgen generate` counts them).

    flexgen calibrate --model pixart-512/ --prompts prompts.txt --num-samples 64 --out calib.json
    flexgen generate --model pixart-512/ --prompts prompts.txt --cache teacache:0.1 --cache-calibration calib.json ...
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from flexgen.policies.cache.calibrate import (
    Recorder,
    parse_thresholds,
    recording_cache,
    summarise,
    write_calibration,
    write_mag,
)
from flexgen.policies.cache.config import CacheConfig


def record_pipeline_runs(pipe, prompts: list[str], *, steps: int, guidance: float, batch_size: int, seed: int = 0,
                         max_length: int = 120) -> list[dict[str, list[float]]]:
    """`Recorder.finish` of each pipeline call of up to `batch_size` prompts (image i: seed + i); `pipe.transformer`
    runs TeaCache at threshold 0."""
    from flexgen.t2i.pixart import PixArtCost

    transformer = pipe.transformer
    cache, cost = recording_cache(transformer.policy), PixArtCost.of(transformer)
    recorder: Recorder | None = None

    def hook(module, args, kwargs, output):
        out = output[0] if isinstance(output, tuple) else output.sample                 # (rows, C, h, w)
        recorder.record(out, module.policy.forward_macs(cost), cost, module.policy.grid(), module.policy.signature())

    handle = transformer.register_forward_hook(hook, with_kwargs=True)
    runs = []

    def start(count: int) -> None:
        nonlocal recorder
        recorder = Recorder(cache, count)

    try:
        for _ in _pipeline_runs(pipe, prompts, steps=steps, guidance=guidance, batch_size=batch_size, seed=seed,
                                max_length=max_length, before=start):
            runs.append(recorder.finish())
    finally:
        handle.remove()
    return runs


def _pipeline_runs(pipe, prompts: list[str], *, steps: int, guidance: float, batch_size: int, seed: int,
                   max_length: int, before=None, after=None):
    """One pipeline call per `batch_size` prompts (image i: seed + i); `before(count)` ahead of each, yields
    `after(transformer)` (None without) after each."""
    from flexgen.sampling.prompts import image_records
    from flexgen.t2i.generate import iter_generate

    records = image_records(prompts, 1, seed)
    for first in range(0, len(records), batch_size):
        batch = records[first:first + batch_size]
        if before is not None:
            before(len(batch))
        with torch.no_grad():
            for _ in iter_generate(pipe, batch, steps=steps, guidance=guidance, batch_size=len(batch),
                                   max_sequence_length=max_length, progress=False):
                pass
        yield None if after is None else after(pipe.transformer)


def pixart_calibrate_main(args: argparse.Namespace) -> dict[str, Any]:
    """`flexgen calibrate` with --model and --prompts."""
    from flexgen.files import file_sha256
    from flexgen.policies.cache.provenance import uncached_label
    from flexgen.sampling.prompts import read_prompts
    from flexgen.t2i.generate import GUIDANCE, load_pipeline
    from flexgen.t2i.pixart import PixArtCost
    from flexgen.t2i.pixart_io import policy_of, transformer_folder, with_step_cache

    if args.config or args.ckpt or args.overrides:
        raise ValueError("--config, --ckpt and KEY=VALUE overrides calibrate a Latte / DiT run; PixArt-α takes "
                         "--model (and --transformer, --text-encoder) with --prompts")
    if not args.model:
        raise ValueError("--prompts calibrates PixArt-α: give its pipeline folder with --model")
    thresholds = parse_thresholds(args)
    prompts = read_prompts(args.prompts)[:args.num_samples]
    if not prompts:
        raise ValueError(f"{args.prompts}: no prompts in it")
    sampler, steps = args.sampler or "dpm-solver", args.steps or 20
    guidance = GUIDANCE if args.cfg_scale is None else args.cfg_scale
    pipe = load_pipeline(args.model, transformer=args.transformer, text_encoder=args.text_encoder,
                         scheduler=sampler)
    resolution = pipe.transformer.config.sample_size * pipe.vae_scale_factor
    weights = sorted(transformer_folder(args.transformer or args.model).glob("*.safetensors"))
    fitted_on = {"pipeline": str(args.model), "transformer": str(args.transformer or Path(args.model) / "transformer"),
                 "checkpoint_sha256": file_sha256(weights[0]) if len(weights) == 1 else "",
                 "resolution": resolution, "policy": uncached_label(policy_of(pipe.transformer)),
                 "sampler": sampler, "steps": steps, "cfg_scale": guidance, "prompts": str(args.prompts),
                 "seeds": [args.seed, args.seed + len(prompts) - 1], "config": str(args.model)}
    if args.method == "mag":
        pipe.transformer = with_step_cache(pipe.transformer, CacheConfig(
            "mag", diffusers={"calibrate": True, "num_inference_steps": steps}))
        ratios = list(_pipeline_runs(pipe, prompts, steps=steps, guidance=guidance, batch_size=args.batch_size,
                                     seed=args.seed, max_length=args.max_length, after=_mag_ratios))
        return write_mag(args.out, ratios, fitted_on)
    pipe.transformer = with_step_cache(pipe.transformer, CacheConfig("teacache", threshold=0.0))
    runs = record_pipeline_runs(pipe, prompts, steps=steps, guidance=guidance, batch_size=args.batch_size,
                                seed=args.seed, max_length=args.max_length)
    passes = 2 if guidance > 1 else 1
    dense = passes * steps * PixArtCost.of(pipe.transformer).forward_macs(None).gmacs
    fitted = summarise(runs, steps, dense, args.degree, thresholds)
    return write_calibration(args.out, fitted, {**fitted_on, "runs": fitted["runs"]})


def _mag_ratios(transformer) -> list[float]:
    return list(next(p for p in transformer.policy.parts if p.section == "cache").mag_ratios)
