"""Sampling: batched generation with per-sample seeds and rank sharding, and the `flexgen sample` command.

    flexgen sample --config configs/video/ffs/latte-xl2.yaml --ckpt ffs.pt --num-samples 2048 --out samples/ffs
    torchrun --nproc_per_node 8 -m flexgen sample --config ... --ckpt ... --out ...     (one shard per rank)

Reproducibility contract (what `generate` guarantees):

- Sample i is drawn with seed `seed + i`: its initial noise and every DDPM step noise come from a CPU generator
  seeded with it (`flexgen.diffusion.sample`), so a sample does not depend on the batch size, its position in a
  batch, the rank that draws it or the number of ranks (up to floating-point rounding of batched matmuls).
- The class label of sample i (class-conditional models) is uniform in [0, num_classes), drawn from a numpy PCG64
  stream keyed by (seed + i, LABEL_STREAM): a function of the sample's seed alone, and a stream separate from the
  torch noise stream of the same seed. This is Latte's UCF101 protocol (uniformly random labels) made
  reproducible per sample.
- Sharding: rank r of W draws the indices i ≡ r (mod W), in increasing order (the interleaving of Latte's
  sample_ddp.py, index = k·W + r): every index in [0, N) is drawn exactly once over all ranks, and the shards
  differ in size by at most one sample.
- Classifier-free guidance (Ho & Salimans 2022) uses the null class `num_classes` through
  `flexgen.diffusion.classifier_free_guidance`; at cfg_scale 1 the conditional model runs alone (no doubled
  batch). Guidance on an unconditional model is an error.

Output of `flexgen sample`: DIR/{index:04d}.mp4 (fps 8) for video models or DIR/{index:04d}.png for one-frame
models, DIR/grid.png (a preview of the first samples) and DIR/samples.json (a `flexgen.manifest.SampleManifest`:
checkpoint hash, seeds, labels, sampler, cost per sample, model and density configuration). Samples are written
as they are made: re-running the command draws only the missing ones; another run's folder is refused unless
--overwrite.

torch, diffusers and the models are imported inside the functions that use them, so that `add_sample_arguments`
can build the `flexgen` parser without loading them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import torch

    from flexgen.autoencoder import Autoencoder
    from flexgen.backbones.latte import LatteDenoiser
from flexgen.sampling.labels import LABEL_STREAM, resolve_labels, sample_label  # noqa: F401  (re-exported)

GRID_SAMPLES = 16                 # samples shown in grid.png
DTYPES = ("float32", "bfloat16", "float16", "float64")


# ----------------------------------------------------------------------------------------------------------
# Which samples a rank draws, and with which labels.




# ----------------------------------------------------------------------------------------------------------
# Batched generation.


class SampleBatch(NamedTuple):
    """One batch from `generate`; unpacks as (indices, labels, videos)."""
    indices: list[int]              # global sample indices
    labels: list[int] | None        # class label per sample (None for an unconditional model)
    videos: torch.Tensor            # uint8 on the CPU: (B, F, 3, H, W) for video models, (B, 3, H, W) for DiT


def check_options(model: LatteDenoiser, cfg_scale: float, batch_size: int, cfg_channels: int | None = None) -> None:
    """Options `generate` refuses, checked before anything is written."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if cfg_channels is not None and cfg_channels > model.config.in_channels:
        raise ValueError(f"sample.cfg_channels = {cfg_channels} exceeds the model's {model.config.in_channels} "
                         "ε channels")
    if cfg_scale != 1 and not model.config.num_classes:
        raise ValueError(f"classifier-free guidance (cfg_scale = {cfg_scale}) needs a class-conditional model; "
                         "this one is unconditional: use cfg_scale 1")


def generate(model: LatteDenoiser, autoencoder: Autoencoder, *, num_samples: int, seed: int = 0, sampler: str = "ddpm",
             steps: int = 250, cfg_scale: float = 1.0, batch_size: int = 1,
             labels: int | Sequence[int] | None = None, rank: int = 0, world_size: int = 1,
             indices: Sequence[int] | None = None,
             betas: torch.Tensor | None = None, clip_denoised: bool = False, device: torch.device | str = "cpu",
             dtype: torch.dtype | None = None, progress: bool = False, cfg_channels: int | None = None,
             meter: Any = None) -> Iterator[SampleBatch]:
    """Draw this rank's share of `num_samples` samples in batches of up to `batch_size` and decode them.

    `model` (the Denoiser of a Latte / DiT / FlexLatte, in eval mode) and `autoencoder` must already be on `device`; the
    diffusion runs in `dtype` (default: the model's). Latents have the model's shape per sample, (F, C, h, w)
    for video models and (C, h, w) for DiT. `betas` defaults to the linear DDPM schedule of 1000 steps.
    `labels`: None draws a label per sample from its seed; an int or one label per index fixes them. `indices`
    (default: this rank's shard) are the samples to draw. `cfg_channels` guides only the first k ε channels
    (DiT's release: 3). `meter` (a DyDiT `RoutedCostMeter` of `model`) runs in its place and adds
    up the MACs of a DyDiT model's forwards. See the module docstring for seeds, labels and sharding."""
    import torch
    from tqdm.auto import tqdm

    from flexgen.autoencoder import to_uint8
    from flexgen.diffusion import classifier_free_guidance, sample
    from flexgen.manifest import shard_indices

    config = model.config
    check_options(model, cfg_scale, batch_size, cfg_channels)
    mine = shard_indices(num_samples, rank, world_size) if indices is None else list(indices)
    all_labels = resolve_labels(num_samples, seed, config.num_classes, labels)
    shape = model.latent_shape()
    dtype = dtype if dtype is not None else next(model.parameters()).dtype

    with tqdm(total=len(mine), desc=f"sampling ({sampler}, {steps} steps)", unit="sample",
              disable=not progress) as bar:
        for start in range(0, len(mine), batch_size):
            indices = mine[start:start + batch_size]
            batch_labels = None if all_labels is None else [all_labels[i] for i in indices]
            net = model if meter is None else meter
            if batch_labels is not None:
                cond = {"y": torch.tensor(batch_labels, dtype=torch.long, device=device)}        # (B,)
                net = classifier_free_guidance(net, cfg_scale, cond, model.null_condition(cond), cfg_channels)
            latents = sample(net, shape, [seed + i for i in indices], sampler=sampler, steps=steps, betas=betas,
                             learned_sigma=config.learn_sigma, clip_denoised=clip_denoised,
                             prediction=model.run.diffusion.prediction, device=device,
                             dtype=dtype)                                                      # (B, *shape)
            videos = to_uint8(autoencoder.decode(latents)).cpu()        # (B, F, 3, H, W) or (B, 3, H, W)
            bar.update(len(indices))
            yield SampleBatch(indices, batch_labels, videos)


# ----------------------------------------------------------------------------------------------------------
# FLOPs per sample, counted on the meta device.


def flops_per_sample(model, sampler: str, steps: int, cfg_scale: float,
                     betas: torch.Tensor | None = None) -> dict[str, Any]:
    """Network MACs (×1e-9; papers call them FLOPs) to draw one sample with `sampler` (`flexgen.policies.cost`):
    one forward per sampler timestep at its grid, two with classifier-free guidance (the doubled batch). The
    autoencoder's decoding is not included."""
    from flexgen.diffusion import linear_betas, make_scheduler
    from flexgen.policies.cost import sampling_cost

    betas = linear_betas() if betas is None else betas
    learned_sigma = model.run.model.learn_sigma
    timesteps = [int(t) for t in make_scheduler(sampler, betas, steps, learned_sigma=learned_sigma).timesteps]
    passes = 2 if cfg_scale != 1 and model.conditional else 1
    return sampling_cost(model.cost(), timesteps, passes)


def routed_cost(model, meter, num_samples: int) -> dict[str, Any]:
    """A DyDiT model's measured cost over `num_samples` samples of a run (`RoutedCostMeter.cost`)."""
    return meter.cost(num_samples, model.cost().forward_macs(None).gmacs, model.policy.patterns())


# ----------------------------------------------------------------------------------------------------------
# Files of one sample and the preview grid.


def sample_file(out: Path, index: int, video_model: bool) -> Path:
    """DIR/{index:04d}.mp4 for video models, DIR/{index:04d}.png for one-frame models."""
    return out / f"{index:04d}.{'mp4' if video_model else 'png'}"


def write_sample(path: Path, pixels: torch.Tensor, fps: int = 8) -> None:
    """One uint8 sample: a video (F, 3, H, W) as mp4, or an image (3, H, W) (or a one-frame video) as png; written
    to a hidden temporary name, then renamed (an interrupted run never leaves a truncated file; `write_video`
    does the same for mp4)."""
    from PIL import Image

    from flexgen.data.media import write_video
    from flexgen.files import atomic_write

    if path.suffix == ".mp4":
        write_video(path, pixels, fps=fps)
        return
    with atomic_write(path) as tmp:
        image = pixels.reshape(pixels.shape[-3:]).permute(1, 2, 0).numpy()                  # (H, W, 3)
        Image.fromarray(image).save(str(tmp), format="PNG")


def read_sample(path: Path):
    """A written sample back as uint8 frames (F, H, W, 3) (an image is one frame)."""
    import numpy as np
    from PIL import Image

    from flexgen.data.media import read_video

    if path.suffix == ".mp4":
        return read_video(path)
    return np.asarray(Image.open(path).convert("RGB"))[None]


ADM_NPZ = "samples.npz"


def write_adm_npz(path: Path, files: Sequence[Path], labels: Sequence[int] | None = None) -> Path:
    """The batch file ADM's evaluator (guided-diffusion `evaluations/evaluator.py`) reads: `arr_0` uint8 (N, H, W, 3)
    in sample-index order (and `arr_1` the labels, as DiT's sample_ddp.py omits but ADM's own sampler writes),
    streamed image by image into the zip so 50k samples never sit in memory; written atomically."""
    import zipfile

    import numpy as np

    from flexgen.files import atomic_write

    first = read_sample(files[0])[0]
    shape = (len(files), *first.shape)
    with atomic_write(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("arr_0.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                                                     "fortran_order": False, "shape": shape})
            for file in files:
                image = read_sample(file)[0]
                if image.shape != first.shape:
                    raise ValueError(f"{file}: shape {image.shape}, expected {first.shape} like {files[0]}")
                f.write(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
        if labels is not None:
            with zf.open("arr_1.npy", "w") as f:
                np.lib.format.write_array(f, np.asarray(labels, dtype=np.int64))
    return path


# ----------------------------------------------------------------------------------------------------------
# The `flexgen sample` command: arguments.


def add_sample_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of `flexgen sample` to `parser` and set `func=sample_main`; returns the parser."""
    parser.add_argument("--config", required=True, help="run config of the model, e.g. "
                        "configs/video/ffs/latte-xl2.yaml")
    parser.add_argument("--ckpt", required=True, help="weights: our .safetensors or an official .pt (EMA preferred); "
                        "a FlexDiT config with dense weights converts on load")
    parser.add_argument("--out", required=True, help="output folder for the samples, grid.png and samples.json")
    parser.add_argument("--num-samples", type=int, default=None, help="samples over all ranks "
                        "(default sample.num_samples)")
    parser.add_argument("--sampler", default=None, help="ddpm | ddim | dpm-solver++ (default sample.sampler)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default sample.steps)")
    parser.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance scale, 1 = off "
                        "(default sample.cfg_scale)")
    parser.add_argument("--seed", type=int, default=None, help="sample i uses seed + i (default sample.seed)")
    parser.add_argument("--batch-size", type=int, default=None, help="samples per forward on each rank "
                        "(default sample.batch_size)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda:LOCAL_RANK if available)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="model and sampler dtype")
    parser.add_argument("--fps", type=int, default=8, help="frame rate of the mp4 files")
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


# ----------------------------------------------------------------------------------------------------------
# The `flexgen sample` command: ranks and process group (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK).


def sample_main(args: argparse.Namespace) -> dict[str, Any] | None:
    """Run `flexgen sample`; returns the samples.json record on rank 0 (None on other ranks)."""
    import torch
    import torch.distributed as dist

    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(args.device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    own_group = world_size > 1 and not dist.is_initialized()
    if own_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return _run_sampling(args, rank, world_size, device)
    finally:
        if own_group:
            dist.destroy_process_group()


def _barrier(world_size: int, device: torch.device) -> None:
    import torch.distributed as dist

    if world_size > 1:
        dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)


# ----------------------------------------------------------------------------------------------------------
# The `flexgen sample` command: load, generate this rank's shard, then (rank 0) the grid and the record.


def _run_sampling(args: argparse.Namespace, rank: int, world_size: int, device: torch.device) -> dict | None:
    import time

    import numpy as np
    import torch

    from flexgen import manifest as mf
    from flexgen.autoencoder import Autoencoder
    from flexgen.config import config_to_dict, load_config
    from flexgen.data.media import save_grid, video_codec
    from flexgen.diffusion import linear_betas
    from flexgen.files import file_sha256
    from flexgen.registry import build_denoiser, family_of

    overrides = _config_overrides(args)
    run = load_config(args.config, overrides)
    s, diffusion = run.sample, run.diffusion
    family = family_of(run.model.preset)
    if family.sample_command != "flexgen sample":
        raise ValueError(f"model.preset {run.model.preset} is sampled with `{family.sample_command}`, "
                         "not `flexgen sample`")
    dtype = getattr(torch, args.dtype)
    model = build_denoiser(run)
    model.load_pretrained(args.ckpt, sha256=args.sha256, routers_required=True)
    model = model.eval().to(device=device, dtype=dtype)
    autoencoder = Autoencoder.from_config(run.autoencoder).to(device).eval()
    betas = linear_betas(diffusion.num_timesteps, diffusion.beta_start, diffusion.beta_end)
    video_model = model.config.temporal and model.config.num_frames > 1
    out = Path(args.out)
    labels = resolve_labels(s.num_samples, s.seed, model.config.num_classes)
    record = mf.SampleManifest(
        command="flexgen sample", family="latte" if video_model else "dit", model=run.model.preset,
        method=model.policy.label(),
        checkpoint=str(args.ckpt), checkpoint_sha256=file_sha256(args.ckpt), sampler=s.sampler, steps=s.steps,
        cfg_scale=s.cfg_scale, seed=s.seed, storage="mp4" if video_model else "png", world_size=world_size,
        samples=mf.entries(s.num_samples, s.seed, lambda i: sample_file(out, i, video_model).name, labels),
        settings={"config": str(args.config), "overrides": overrides, "clip_denoised": s.clip_denoised,
                  "batch_size": s.batch_size, "dtype": args.dtype, "fps": args.fps if video_model else None,
                  "codec": video_codec() if video_model else "png", "model_class": type(model.net).__name__,
                  "model": dataclasses.asdict(model.config),
                  "density": model.policy.sections().get("density"), "dydit": model.policy.sections().get("dydit"),
                  "cfg_channels": s.cfg_channels, "run_config": config_to_dict(run)},
        identity={"model": dataclasses.asdict(model.config), "clip_denoised": s.clip_denoised, "dtype": args.dtype,
                  "density": model.policy.sections().get("density")})
    check_options(model, s.cfg_scale, s.batch_size, s.cfg_channels)
    if getattr(args, "npz", False) and video_model:
        raise ValueError("--npz writes ADM's image batch: it is for one-frame (DiT) models")
    path = out / "samples.json"
    if rank == 0:
        mf.start_run(record, path, overwrite=args.overwrite)
    _barrier(world_size, device)

    mine = mf.todo(record, out, rank, world_size, overwrite=args.overwrite)
    meter = model.policy.meter(model)              # a measured policy (DyDiT) adds up what each forward ran
    started = time.perf_counter()
    for batch in generate(model, autoencoder, num_samples=s.num_samples, seed=s.seed, sampler=s.sampler,
                          steps=s.steps, cfg_scale=s.cfg_scale, batch_size=s.batch_size, indices=mine,
                          betas=betas, clip_denoised=s.clip_denoised, device=device, dtype=dtype,
                          progress=rank == 0 and not args.no_progress, cfg_channels=s.cfg_channels, meter=meter):
        for index, pixels in zip(batch.indices, batch.videos, strict=True):
            write_sample(sample_file(out, index, video_model), pixels, fps=args.fps)
    seconds = time.perf_counter() - started
    _barrier(world_size, device)
    if rank != 0:
        return None

    shown = [read_sample(sample_file(out, i, video_model)) for i in range(min(s.num_samples, GRID_SAMPLES))]
    if shown:
        save_grid(out / "grid.png", np.stack(shown), nrow=4)
        record.grid = "grid.png"
    record.cost = flops_per_sample(model, s.sampler, s.steps, s.cfg_scale, betas)
    if mine:
        record.cost["seconds_per_sample"] = seconds / len(mine)           # rank 0's wall time, batch_size samples
    if meter is not None and mine:                                       # DyDiT: the cost of rank 0's samples
        record.cost.update(routed_cost(model, meter, len(mine)))
    mf.finish_run(record, path)
    if getattr(args, "npz", False):
        write_adm_npz(out / ADM_NPZ, [sample_file(out, i, video_model) for i in range(s.num_samples)], labels)
        print(f"wrote {out / ADM_NPZ} ({s.num_samples} samples, ADM's arr_0 layout)")
    grid = ", grid.png" if record.grid else ""
    print(f"wrote {s.num_samples} samples ({len(mine)} drawn now on rank 0){grid} and samples.json to {out}")
    return dataclasses.asdict(record)
