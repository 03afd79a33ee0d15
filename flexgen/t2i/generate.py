"""Text-to-image sampling with PixArt-α (dense, FlexDiT, DyDiT or both) through diffusers' `PixArtAlphaPipeline`.

    flexgen generate "a red cat on a tree" --model /models/PixArt-XL-2-512x512 --out cat.png
    flexgen generate --prompts prompts.txt --num-images 4 --model /models/PixArt-XL-2-512x512 \\
        --transformer runs/flexdit-512/export --text-encoder /models/t5-v1_1-xxl --out samples/flex.png

    pipe = load_pipeline("/models/PixArt-XL-2-512x512", scheduler="dpm-solver")
    images, records = generate(pipe, ["a red cat"], num_images=4, seed=0)          # (4, 3, 512, 512) uint8

Everything comes from local folders (nothing is downloaded): `model`, a diffusers PixArt-α pipeline folder,
assembled from its components so each missing piece is named (the transformer read by
`flexgen.t2i.pixart_io.load_transformer`: its policy from its config); `transformer`, a folder replacing the
pipeline's (e.g. a fine-tuned FlexDiT export); `text_encoder`, a T5 folder for pipelines kept without theirs.
The policy reads the `timestep` the pipeline passes (FlexDiT's grids, DyDiT's per-step masks, whose cost is
measured from the kept counts of the forwards it made).

Reproducibility: image i (prompts in order, `num_images` consecutive images per prompt) is drawn with seed
`seed + i` (a CPU generator of its own), so an image does not depend on the batch size or its place in a batch.
Prompts are used as written (`clean_caption=False`).

Output of `--out FILE.png`: one image, or a grid with the images FILE-000.png, ... beside it; FILE.json lists each
image's file, prompt and seed and the settings. diffusers is imported inside the functions that use it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from flexgen.arguments import COUNT, NON_NEGATIVE, POSITIVE
from flexgen.registry import FAMILIES
from flexgen.sampling.prompts import image_records, read_prompts

if TYPE_CHECKING:
    from diffusers import PixArtAlphaPipeline

# The family's sampler names (flexgen.registry), each a diffusers class of flexgen.diffusion.SCHEDULERS
# built from the pipeline folder's scheduler config, so the betas and training timesteps are the model's.
# PixArt-α samples with DPM-Solver, 20 steps.
SCHEDULERS: tuple[str, ...] = FAMILIES["pixart"].samplers
DPM_ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BINNING_SAMPLE_SIZES = (32, 64, 128)      # PixArt-α 256 / 512 / 1024 latents: the pipeline's aspect-ratio bins
PIPELINE_CLASS = "PixArtAlphaPipeline"
GUIDANCE = 4.5                  # PixArt-α's classifier-free guidance scale (its pipeline's default)

PIPELINE_SOURCES = ("a diffusers PixArt-α pipeline folder (model_index.json, transformer/, vae/, scheduler/, "
                    "text_encoder/ + tokenizer/), e.g. PixArt-alpha/PixArt-XL-2-512x512 from the Hugging Face hub, "
                    "downloaded on a machine with internet access")
TEXT_ENCODER_HINT = ("give --text-encoder PATH: a T5 v1.1 XXL folder with config.json, its weights and tokenizer "
                     "files (DeepFloyd/t5-v1_1-xxl, or the text_encoder/ + tokenizer/ folders of "
                     "PixArt-alpha/PixArt-XL-2-512x512), or a PixArt-α pipeline folder that has them (in Python: "
                     "load_pipeline(..., text_encoder=PATH))")


class NonFiniteWarning(UserWarning):
    """Generated images with NaN or infinite pixels (typically float16 overflow)."""


# ----------------------------------------------------------------------------------------------------------
# Loading.


def scheduler_class(name: str) -> type:
    """The diffusers scheduler class of a name in SCHEDULERS."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
    import diffusers

    from flexgen.diffusion import SCHEDULERS as CLASSES

    return getattr(diffusers, CLASSES[name])


def build_scheduler(name: str, config: dict) -> Any:
    """Scheduler `name` from another scheduler's config (betas, training timesteps, prediction type carried over).

    `algorithm_type` means different things to DPM-Solver ("dpmsolver++", ...) and SA-Solver ("data_prediction" /
    "noise_prediction"): a value the target does not know is replaced by the target's data-prediction form."""
    cls = scheduler_class(name)
    config = dict(config)
    algorithm = config.get("algorithm_type")
    if name == "sa-solver" and algorithm not in ("data_prediction", "noise_prediction"):
        config["algorithm_type"] = "data_prediction"
    elif name in ("dpm-solver", "dpm-solver++") and algorithm not in DPM_ALGORITHMS:
        config["algorithm_type"] = "dpmsolver++"
    return cls.from_config(config)


def set_scheduler(pipe: PixArtAlphaPipeline, name: str) -> PixArtAlphaPipeline:
    """Replace the pipeline's scheduler by `name`, built from the current scheduler's config (same betas)."""
    pipe.scheduler = build_scheduler(name, pipe.scheduler.config)
    return pipe


def _check_pipeline_folder(root: Path) -> None:
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise FileNotFoundError(f"model folder {root} {what}; --model expects {PIPELINE_SOURCES}")
    missing = [name for name, ok in (("model_index.json", (root / "model_index.json").is_file()),
                                     ("vae/config.json", (root / "vae" / "config.json").is_file()),
                                     ("scheduler/scheduler_config.json",
                                      (root / "scheduler" / "scheduler_config.json").is_file())) if not ok]
    if missing:
        raise FileNotFoundError(f"model folder {root} has no {', no '.join(missing)}; --model expects "
                                f"{PIPELINE_SOURCES}")
    index_file = root / "model_index.json"
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{index_file} is not valid JSON ({e})") from None
    name = index.get("_class_name")
    if name != PIPELINE_CLASS:
        raise ValueError(f"{index_file} describes a {name!r} pipeline; flexgen generate runs {PIPELINE_CLASS} "
                         f"folders ({PIPELINE_SOURCES})")
    vae_dir = root / "vae"
    if not any(vae_dir.glob("*.safetensors")) and not any(vae_dir.glob("*.bin")):
        raise FileNotFoundError(f"{vae_dir} has a config.json but no weights (*.safetensors or *.bin); copy the "
                                f"vae/ folder of {PIPELINE_SOURCES}")


def _has_text_encoder(root: Path) -> bool:
    return (root / "text_encoder").is_dir() or (root / "tokenizer").is_dir()


def load_pipeline(model: str | Path, *, transformer: str | Path | None = None,
                  text_encoder: str | Path | None = None, scheduler: str = "dpm-solver",
                  device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> PixArtAlphaPipeline:
    """A `PixArtAlphaPipeline` from local folders (see the module docstring), on `device` in `dtype`.

    FileNotFoundError names what is missing and how to supply it: the model folder, its model_index.json, vae/ or
    scheduler/, the transformer's config or weights, or a text encoder (neither text_encoder/ + tokenizer/ in the
    pipeline folder nor `text_encoder`)."""
    from diffusers import AutoencoderKL, PixArtAlphaPipeline

    from flexgen.autoencoder import local_load_options
    from flexgen.t2i.pixart_io import load_transformer
    from flexgen.text_encoder import load_text_encoder

    root = Path(model).expanduser()
    _check_pipeline_folder(root)
    scheduler_class(scheduler)                                     # an unknown name fails before any loading
    if text_encoder is None and not _has_text_encoder(root):
        raise FileNotFoundError(f"no text encoder: the model folder {root} has no text_encoder/ and tokenizer/ "
                                f"(PixArt-α reads prompts with T5 v1.1 XXL); {TEXT_ENCODER_HINT}")
    net = load_transformer(root if transformer is None else transformer, device=device, dtype=dtype)
    tokenizer, encoder = load_text_encoder(root if text_encoder is None else text_encoder, device=device, dtype=dtype)
    vae = AutoencoderKL.from_pretrained(root / "vae", torch_dtype=dtype, **local_load_options()).to(device).eval()
    sampler = build_scheduler(scheduler, json.loads((root / "scheduler" / "scheduler_config.json").read_text()))
    pipe = PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=vae, transformer=net.eval(),
                               scheduler=sampler)
    return pipe.to(device)


# ----------------------------------------------------------------------------------------------------------
# Generation.


def check_options(pipe: PixArtAlphaPipeline, *, steps: int, batch_size: int, max_sequence_length: int,
                  height: int | None, width: int | None) -> None:
    """Options `iter_generate` refuses, checked before anything is written."""
    for name, value in (("steps", steps), ("batch_size", batch_size), ("max_sequence_length", max_sequence_length)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    num_train = pipe.scheduler.config.get("num_train_timesteps", 1000)
    if steps > num_train:
        raise ValueError(f"steps must be at most the scheduler's {num_train} training timesteps, got {steps}")
    config = pipe.transformer.config
    unit = math.lcm(8, pipe.vae_scale_factor * config.patch_size)      # the pipeline checks 8; patches need more
    for name, value in (("height", height), ("width", width)):
        if value is not None and (value < unit or value % unit):
            raise ValueError(f"{name} {value} must be a positive multiple of {unit} (autoencoder factor "
                             f"{pipe.vae_scale_factor} × patch {config.patch_size}, and 8)")


def iter_generate(pipe: PixArtAlphaPipeline, records: list[dict[str, Any]], *, steps: int = 20,
                  guidance: float = GUIDANCE, height: int | None = None, width: int | None = None, batch_size: int = 4,
                  negative_prompt: str = "", max_sequence_length: int = 120, progress: bool = True
                  ) -> Iterator[tuple[list[dict[str, Any]], torch.Tensor]]:
    """Batches (records, uint8 images (b, 3, H, W) on the CPU) for `records` ({prompt, seed, index}, see
    `image_records`), in order; each image is drawn with its record's seed (its own CPU generator), whatever
    `batch_size` or which records are asked for, so a run can be sharded over ranks or resumed."""
    from tqdm.auto import tqdm

    from flexgen.t2i.pixart_io import policy_of

    check_options(pipe, steps=steps, batch_size=batch_size, max_sequence_length=max_sequence_length, height=height,
                  width=width)
    config = pipe.transformer.config
    binning = height is None and width is None and config.sample_size in BINNING_SAMPLE_SIZES
    pipe.set_progress_bar_config(disable=True)
    with tqdm(total=len(records), desc=f"generate ({steps} steps)", unit="image", disable=not progress) as bar:
        for start in range(0, len(records), batch_size):
            batch = records[start:start + batch_size]
            generators = [torch.Generator("cpu").manual_seed(r["seed"]) for r in batch]
            policy_of(pipe.transformer).new_run(steps)                 # (a step cache starts over)
            out = pipe(prompt=[r["prompt"] for r in batch], negative_prompt=negative_prompt,
                       num_inference_steps=steps, guidance_scale=guidance, num_images_per_prompt=1, height=height,
                       width=width, generator=generators, output_type="pt", clean_caption=False,
                       use_resolution_binning=binning, max_sequence_length=max_sequence_length).images
            out = out.float()                                                               # (b, 3, H, W) in [0, 1]
            bad = [r["index"] for r, ok in zip(batch, torch.isfinite(out).flatten(1).all(1).tolist(), strict=True)
                   if not ok]
            if bad:
                warnings.warn(f"images {bad} have NaN or infinite pixels (NaN written as 0): in float16 the "
                              "autoencoder or the model can overflow; try --dtype bfloat16 or float32",
                              NonFiniteWarning, stacklevel=2)
            yield batch, out.nan_to_num(0.0).mul(255).round().clamp(0, 255).to(torch.uint8).cpu()
            bar.update(len(batch))


def generate(pipe: PixArtAlphaPipeline, prompts: list[str], *, num_images: int = 1, steps: int = 20,
             guidance: float = GUIDANCE, seed: int = 0, height: int | None = None, width: int | None = None,
             batch_size: int = 4, negative_prompt: str = "", max_sequence_length: int = 120,
             progress: bool = True) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Images (N, 3, H, W) uint8 on the CPU and their records {prompt, seed, index}, N = len(prompts) · num_images.

    Image i uses seed + i (its own CPU generator), whatever `batch_size`. height / width default to the model's
    native size; the pipeline's aspect-ratio binning is used only then, and only for PixArt-α's sample sizes.
    `guidance` <= 1 runs the conditional model alone. The pipeline's own progress bar is switched off (one bar
    over the images instead). For many images, `iter_generate` streams batches instead of holding them all."""
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    records = image_records(prompts, num_images, seed)
    chunks = [images for _, images in iter_generate(
        pipe, records, steps=steps, guidance=guidance, height=height, width=width, batch_size=batch_size,
        negative_prompt=negative_prompt, max_sequence_length=max_sequence_length, progress=progress)]
    return torch.cat(chunks), records


def gmacs_per_image(transformer, guidance: float, scheduler_timesteps: list[int]) -> dict[str, Any]:
    """Cost of one image at the model's native size, counted on the meta device (`flexgen.policies.cost`): GMACs of
    one forward (dense, or the FlexDiT time average over t) and of the whole sampling run (each step at its
    timestep's grid, doubled by classifier-free guidance)."""
    from flexgen.policies.cost import sampling_cost
    from flexgen.t2i.pixart import PixArtCost

    return sampling_cost(PixArtCost.of(transformer), scheduler_timesteps, passes=2 if guidance > 1 else 1)


def _meter_routed_forwards(transformer):
    """The policy's meter fed by a forward hook on a DyDiT transformer: every forward the pipeline makes adds the
    MACs its rows ran, from the kept counts, counted at the model's native size with 120 text tokens (as
    `gmacs_per_image`)."""
    from flexgen.t2i.pixart import PixArtCost

    meter, cost = transformer.policy.meter(None), PixArtCost.of(transformer)     # (a DyDiT transformer)

    def hook(module, args, kwargs, output):
        timestep = kwargs["timestep"] if "timestep" in kwargs else args[2]
        meter.add(int(torch.as_tensor(timestep).reshape(-1)[0]), module.policy.forward_macs(cost))

    transformer.register_forward_hook(hook, with_kwargs=True)
    return meter


# ----------------------------------------------------------------------------------------------------------
# The `flexgen generate` command.


def image_files(out: Path, count: int) -> list[Path]:
    """Where the images go: `out` itself for one image, else out-000.png, out-001.png, ... beside it."""
    if count == 1:
        return [out]
    digits = max(3, len(str(count - 1)))
    return [out.with_name(f"{out.stem}-{i:0{digits}d}.png") for i in range(count)]


def _folder(path: str | Path | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


GRID_IMAGES = 64                 # the grid shows the first images only (a 30k-image run writes them all as files)
# Settings that must match to resume into a folder (with the manifest's run fields).
RUN_KEYS = ("text_encoder", "transformer_class", "layout", "schedule", "requested_size", "negative_prompt",
            "max_length", "dtype", "cache")


def _save_png(image: torch.Tensor, path: Path) -> None:
    """uint8 (3, H, W) -> PNG, written to a temporary name first (an interrupted run leaves no broken file)."""
    from PIL import Image

    from flexgen.files import atomic_write

    with atomic_write(path) as tmp:
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp, format="PNG")


def add_generate_arguments(gen: argparse.ArgumentParser) -> None:
    """The options of `flexgen generate` (its words are `flexgen sample`'s: --sampler, --cfg-scale)."""
    gen.add_argument("prompt", nargs="*", help="prompts (each gives --num-images images)")
    gen.add_argument("--prompts", dest="prompts_file", default=None, metavar="FILE",
                     help="more prompts, one per line (blank lines and #comments ignored)")
    gen.add_argument("--model", required=True, help="diffusers PixArt-α pipeline folder (model_index.json, vae/, "
                     "scheduler/, transformer/, text_encoder/ + tokenizer/)")
    gen.add_argument("--out", required=True, help="output .png: the image, or the grid when there are several "
                     "(images FILE-000.png, ... beside it); FILE.json records prompts, seeds and settings")
    gen.add_argument("--transformer", default=None, help="transformer or pipeline folder replacing the pipeline's "
                     "(e.g. a fine-tuned FlexDiT export)")
    gen.add_argument("--text-encoder", default=None, help="T5 v1.1 XXL folder (or a pipeline folder with "
                     "text_encoder/ + tokenizer/), for a --model folder kept without its text encoder")
    gen.add_argument("--sampler", "--scheduler", dest="scheduler", choices=list(SCHEDULERS), default="dpm-solver",
                     help="sampler, the word `flexgen sample` uses (--scheduler: the older spelling; default: "
                     "%(default)s)")
    gen.add_argument("--steps", type=POSITIVE, default=20, help="sampling steps (default: %(default)s)")
    gen.add_argument("--cfg-scale", "--guidance", dest="guidance", type=NON_NEGATIVE, default=GUIDANCE,
                     help="classifier-free guidance scale; <= 1: none (--guidance: the older spelling; default: "
                     "%(default)s)")
    gen.add_argument("--seed", type=COUNT, default=0, help="image i uses seed + i (default: %(default)s)")
    gen.add_argument("--num-images", type=POSITIVE, default=1, help="images per prompt (default: %(default)s)")
    gen.add_argument("--height", type=POSITIVE, default=None, help="image height in pixels (default: the model's)")
    gen.add_argument("--width", type=POSITIVE, default=None, help="image width in pixels (default: the model's)")
    gen.add_argument("--negative-prompt", default="", help="negative prompt (the unconditional branch of CFG)")
    gen.add_argument("--batch-size", type=POSITIVE, default=4, help="images per pipeline call (default: %(default)s)")
    gen.add_argument("--device", default="cpu", help="cpu, cuda (under torchrun: each rank's GPU) or cuda:i "
                     "(default: %(default)s)")
    gen.add_argument("--dtype", choices=list(DTYPES), default="float32", help="model precision (default: %(default)s)")
    gen.add_argument("--max-length", type=POSITIVE, default=120, help="T5 tokens per prompt (default: %(default)s, as "
                     "PixArt-α)")
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")
    gen.add_argument("--attention", choices=("diffusers", "flexgen"), default="diffusers",
                     help="attention processors: diffusers' SDPA, or flexgen.attention (xformers where its kernels "
                     "load; text cross-attention packed to each caption's tokens); same results (default: "
                     "%(default)s)")
    gen.add_argument("--cache", default=None, metavar="METHOD:SETTING",
                     help="a training-free step cache around the model: fora:N (the blocks every N-th step), "
                     "teacache:THRESHOLD (with --cache-calibration, the polynomial `flexgen calibrate` fitted), or "
                     "diffusers' first_block:THRESHOLD, mag:THRESHOLD (with --cache-calibration from flexgen "
                     "calibrate --method mag), taylorseer:INTERVAL, pab:RANGE, fastercache:RANGE")
    gen.add_argument("--cache-calibration", default=None, metavar="FILE",
                     help="teacache / mag: the JSON `flexgen calibrate` wrote (its coefficients / ratios; one "
                     "fitted on another transformer or resolution is refused)")
    gen.add_argument("--overwrite", action="store_true", help="draw every image again (default: a re-run with the "
                     "same settings keeps the images already written and draws the rest)")
    gen.set_defaults(func=main)


def main(args: argparse.Namespace) -> dict[str, Any] | None:
    """`flexgen generate`: images written as they are made (resumable: a re-run with the same settings draws only the
    missing files; under torchrun rank r draws images i ≡ r mod W), then the grid and FILE.json on rank 0. The
    output folder is held from the record's start to the end (a second generate into it is refused)."""
    import contextlib

    with contextlib.ExitStack() as hold:
        return _generate(args, hold)


def _generate(args: argparse.Namespace, hold: Any) -> dict[str, Any] | None:
    import time

    import numpy as np
    from PIL import Image

    from flexgen import dist
    from flexgen.data.media import save_grid
    from flexgen.files import file_sha256
    from flexgen.policies.cache.base import check_batch_bound
    from flexgen.sampling import manifest as mf
    from flexgen.sampling.cost import resumed_cost
    from flexgen.t2i.pixart_io import policy_of, transformer_folder

    prompts = list(args.prompt) + (read_prompts(args.prompts_file) if args.prompts_file else [])
    if not prompts:
        raise ValueError("no prompts: give them as arguments (flexgen generate \"a red cat\" ...) or in a file with "
                         "--prompts FILE (one per line)")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {out} must be a .png file (the image, or the grid when there are several)")
    if args.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {args.dtype!r}; choose one of: {', '.join(DTYPES)}")
    if args.num_images < 1 or args.seed < 0:
        raise ValueError(f"--num-images must be >= 1 and --seed >= 0, got {args.num_images} and {args.seed}")
    env = dist.init(None if args.device == "cuda" else args.device)    # "cuda": this rank's GPU under torchrun

    pipe = load_pipeline(args.model, transformer=args.transformer, text_encoder=args.text_encoder,
                         scheduler=args.scheduler, device=env.device, dtype=DTYPES[args.dtype])
    if getattr(args, "attention", "diffusers") == "flexgen":
        from flexgen.t2i.pixart import use_flexgen_attention

        use_flexgen_attention(pipe.transformer)
    if args.cache:
        from flexgen.policies.cache.config import from_spec
        from flexgen.t2i.pixart_io import with_step_cache

        pipe.transformer = with_step_cache(pipe.transformer, from_spec(args.cache, args.cache_calibration))
    config = pipe.transformer.config
    layout = config.get("layout", "")
    policy = policy_of(pipe.transformer)
    meter = _meter_routed_forwards(pipe.transformer) if policy.measured else None
    settings = {"model": _folder(args.model), "transformer": _folder(args.transformer or args.model),
                "text_encoder": _folder(args.text_encoder or args.model),
                "transformer_class": type(pipe.transformer).__name__,
                "layout": layout, "schedule": config.get("schedule") if layout else None,
                "dydit_target": (policy.sections().get("dydit") or {}).get("target"),
                "scheduler": args.scheduler, "steps": args.steps, "guidance": args.guidance, "seed": args.seed,
                "num_images": args.num_images, "requested_size": [args.height, args.width],
                "negative_prompt": args.negative_prompt, "max_length": args.max_length, "dtype": args.dtype,
                "attention": getattr(args, "attention", "diffusers"), "cache": policy.sections().get("cache")}
    records = image_records(prompts, args.num_images, args.seed)
    files = image_files(out, len(records))
    weights = sorted(transformer_folder(args.transformer or args.model).glob("*.safetensors"))
    if args.cache_calibration:                  # fitted on another transformer or size: refused; another run: warned
        from flexgen.policies.cache.provenance import check_fitted_on, uncached_label

        check_fitted_on(args.cache_calibration, {
            "checkpoint_sha256": file_sha256(weights[0]) if len(weights) == 1 else "",
            "resolution": config.sample_size * pipe.vae_scale_factor, "policy": uncached_label(policy),
            "sampler": args.scheduler, "steps": args.steps, "cfg_scale": args.guidance})
    manifest = mf.SampleManifest(
        command="flexgen generate", family="pixart-alpha", model=Path(settings["transformer"]).name,
        method=policy.label(), checkpoint=settings["transformer"],
        checkpoint_sha256=file_sha256(weights[0]) if len(weights) == 1 else "", sampler=args.scheduler,
        steps=args.steps, cfg_scale=args.guidance, seed=args.seed, world_size=env.world_size,
        samples=mf.entries(len(records), args.seed, lambda i: files[i].name, prompts=[r["prompt"] for r in records]),
        settings=settings, identity={k: settings[k] for k in RUN_KEYS})
    check_options(pipe, steps=args.steps, batch_size=args.batch_size, max_sequence_length=args.max_length,
                  height=args.height, width=args.width)
    json_file = out.with_suffix(".json")
    mine = [records[i] for i in mf.todo(manifest, out.parent, env.rank, env.world_size, overwrite=args.overwrite)]
    shard = mf.shard_indices(len(records), env.rank, env.world_size)
    before, had = mf.previous_cost(mf.previous(json_file, args.overwrite),            # (what start_run replaces)
                                   len(shard) - len(mine))
    check_batch_bound(policy, env.world_size, 0 < len(mine) < len(shard))
    if env.is_main:
        mf.start_run(manifest, json_file, overwrite=args.overwrite, hold=hold)
    dist.barrier()

    started, drawn = time.perf_counter(), 0
    for batch, images in iter_generate(pipe, mine, steps=args.steps, guidance=args.guidance, height=args.height,
                                       width=args.width, batch_size=args.batch_size,
                                       negative_prompt=args.negative_prompt, max_sequence_length=args.max_length,
                                       progress=not args.no_progress and env.is_main):
        for record, image in zip(batch, images, strict=True):
            _save_png(image, files[record["index"]])
        drawn += len(batch)
    seconds = time.perf_counter() - started
    dist.barrier()
    if not env.is_main:
        dist.shutdown()
        return None

    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) were not written (e.g. {missing[0]}); run the command "
                                "again")
    shown = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files[:GRID_IMAGES]])
    grid = None
    if len(files) > 1:
        nrow = args.num_images if args.num_images > 1 else math.ceil(math.sqrt(len(shown)))   # a row per prompt
        save_grid(out, shown, nrow=nrow)
        grid = out.name
    height, width = shown.shape[1:3]
    settings.update(height=int(height), width=int(width), batch_size=args.batch_size, device=str(env.device))
    counted, now = {}, {}
    if (height, width) == (config.sample_size * pipe.vae_scale_factor,) * 2:      # counted at the native size
        scheduler = build_scheduler(args.scheduler, pipe.scheduler.config)
        scheduler.set_timesteps(args.steps)
        counted = gmacs_per_image(pipe.transformer, args.guidance, [int(t) for t in scheduler.timesteps])
        if meter is not None and drawn:           # DyDiT: the MACs of the forwards this run made, from kept counts
            now.update(meter.cost(drawn, counted["gmacs_per_forward_dense"], policy.patterns()))
    if drawn:
        now["seconds_per_sample"] = seconds / drawn                   # this rank's wall time, batch_size images
    cost = resumed_cost(counted, now, drawn, before, had)
    manifest.grid, manifest.cost, manifest.settings = grid, cost, settings
    mf.finish_run(manifest, json_file)
    record = dataclasses.asdict(manifest)
    dist.shutdown()
    if grid is None:
        print(f"wrote {out} and {json_file}")
    else:
        print(f"wrote {len(files)} images {files[0].name} … {files[-1].name}, the grid {out} (the first "
              f"{len(shown)}) and {json_file}; {drawn} drawn now, {len(files) - drawn} were there")
    return record

