"""Typed run configuration: dataclasses loaded from YAML, with `key=value` overrides.

Every key is checked against the dataclass fields: an unknown or misspelled key is an error naming the key, the
file and the closest valid name, never silently ignored. Values are type-checked (ints are accepted where floats
are expected). `save_config` writes the resolved configuration that every run directory and checkpoint keeps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flexgen.files import atomic_write_text
from flexgen.policies.cache.config import CacheConfig
from flexgen.policies.dydit.config import DyDiTConfig
from flexgen.policies.flexdit import DensityConfig
from flexgen.registry import PRESET_FAMILY, family_of
from flexgen.schema import ConfigError, build_dataclass, check_range, choice

DATASETS = ("ffs", "sky", "ucf101", "taichi", "synthetic", "captions", "imagenet", "latents")
AUTOENCODERS = ("sd-vae", "pixel")
# What the network's first C output channels predict (diffusers' prediction_type names): the noise ε (DDPM, DiT,
# Latte) or v = sqrt(ᾱ) ε - sqrt(1 - ᾱ) x_0 (Salimans & Ho 2022), whose x_0 estimate stays bounded at high noise.
PREDICTIONS = ("epsilon", "v_prediction")
# How training draws t: uniformly (DDPM) or logit-normal (Esser et al. 2024), most often at the middle noise levels.
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")

# ----------------------------------------------------------------------------------------------------------
# The schema. Defaults are the published Latte settings (Ma et al. 2024, released configs).


@dataclass
class ModelConfig:
    preset: str = "Latte-XL/2"          # paper name: flexgen.video.presets or flexgen.t2i.presets (the registry)
    num_classes: int = 0                # 0 = unconditional; UCF101: 101 (+ the null class 101 for CFG)
    class_dropout_prob: float = 0.1     # label drop rate for classifier-free guidance training
    learn_sigma: bool = True            # predict the learned-range variance beside ε
    in_channels: int = 4                # latent channels (3 in pixel space)
    depth: int | None = None            # overrides of the preset's size, for small custom models
    hidden_size: int | None = None
    num_heads: int | None = None
    caption_channels: int | None = None  # PixArt-α: width of the text encoder's states (T5-XXL: 4096)

    def __post_init__(self):
        choice("preset", self.preset, list(PRESET_FAMILY))
        check_range(self, num_classes=(0, None), class_dropout_prob=(0, 1), in_channels=(1, None), depth=(1, None),
                    hidden_size=(1, None), num_heads=(1, None), caption_channels=(1, None))


@dataclass
class AutoencoderConfig:
    kind: str = "sd-vae"                # "sd-vae": diffusers AutoencoderKL, frame by frame; "pixel": identity
    path: str = ""                      # local folder of the AutoencoderKL (sd-vae-ft-ema for Latte)
    scale_factor: float = 0.18215       # latent = scale_factor · encoder mean/sample
    downsample: int = 8                 # spatial reduction of the autoencoder (1 for pixel space)

    def __post_init__(self):
        choice("kind", self.kind, AUTOENCODERS)
        check_range(self, scale_factor=(1e-12, None), downsample=(1, None))


@dataclass
class DataConfig:
    dataset: str = "ffs"                # ffs | sky | ucf101 | taichi | synthetic | captions (image–caption, T2I)
                                        # | imagenet (class folders, DiT) | latents (a `flexgen data encode` store)
    root: str = ""                      # dataset folder
    class_list: str = ""                # imagenet: a text file of class folders to train on (labels stay global)
    num_frames: int = 16                # frames per clip (F)
    frame_interval: int = 3             # stride between sampled frames
    image_size: int = 256               # pixels; the latent side is image_size / autoencoder.downsample
    hflip: bool = True                  # random horizontal flip
    num_images: int = 0                 # extra still images per clip for joint image-video training
    num_workers: int = 4                # data-loader processes per rank
    cache_videos: bool = False          # keep each decoded video in memory (small sets such as the demo's)
    manifest: str = ""                  # captions: JSONL manifest (default: root/metadata.jsonl, else .txt files)
    text_encoder: str = ""              # captions: local T5 folder (or PixArt-α pipeline folder) for the cache
    text_cache: str = ""                # captions: folder of cached T5 embeddings (flexgen data cache-text)
    max_length: int = 120               # captions: T5 tokens (PixArt-α: 120)

    def __post_init__(self):
        choice("dataset", self.dataset, DATASETS)
        check_range(self, num_frames=(1, None), frame_interval=(1, None), image_size=(1, None), num_images=(0, None),
                    num_workers=(0, None), max_length=(1, None))


@dataclass
class DiffusionConfig:
    num_timesteps: int = 1000           # training steps T
    beta_start: float = 1e-4            # linear β schedule (Ho et al. 2020)
    beta_end: float = 0.02
    min_snr_gamma: float | None = None  # Min-SNR-γ weighting of the ε loss (Hang et al. 2023); None = off
    prediction: str = "epsilon"         # the network predicts ε (DiT, Latte) or v ("v_prediction", Salimans & Ho)
    timestep_sampling: str = "uniform"  # training t: uniform (DDPM) or logit_normal (Esser et al. 2024, SD3)
    logit_mean: float = 0.0             # logit_normal: logit(t / T) ~ N(logit_mean, logit_std²)
    logit_std: float = 1.0

    def __post_init__(self):
        choice("prediction", self.prediction, list(PREDICTIONS))
        choice("timestep_sampling", self.timestep_sampling, list(TIMESTEP_SAMPLINGS))
        check_range(self, num_timesteps=(2, None), beta_start=(1e-12, 1), beta_end=(self.beta_start, 1),
                    min_snr_gamma=(1e-12, None), logit_std=(1e-3, None))


@dataclass
class TrainConfig:
    lr: float = 1e-4                    # AdamW, constant
    weight_decay: float = 0.0
    ema_decay: float = 0.9999           # at step k the EMA uses min(ema_decay, (1 + k) / (10 + k)) (warm-up)
    batch_size: int = 5                 # per device (Latte: 5 per GPU × 8 GPUs)
    total_samples: int = 40_000_000     # training length in clips seen (Latte: ~1M steps × 40 is a cap)
    grad_clip: float = 0.1              # max gradient norm, applied once clip_after_samples clips were seen
    skip_on_spike: bool = False         # skip the update when the pre-clip norm exceeds grad_clip (DyDiT's rule)
    clip_after_samples: int = 800_000   # Latte FFS/Sky: step 20k × global batch 40
    seed: int = 3407
    bf16: bool = False                  # bf16 autocast (Latte trained in fp32)
    grad_checkpointing: bool = False
    fsdp: bool = False                  # under torchrun: shard parameters, gradients, optimizer state (FSDP2)
    log_every_samples: int = 4_000
    ckpt_every_samples: int = 400_000
    results_dir: str = "results"       # runs go to results_dir/<config name> unless --run-dir is given
    init_from: str = ""                 # weights to start from (official or ours); dense -> FlexDiT converts

    def __post_init__(self):
        check_range(self, lr=(1e-12, None), weight_decay=(0, None), ema_decay=(0, 1), batch_size=(1, None),
                    total_samples=(1, None), grad_clip=(0, None), clip_after_samples=(0, None),
                    log_every_samples=(1, None), ckpt_every_samples=(1, None))


@dataclass
class SampleConfig:
    sampler: str = "ddpm"               # ddpm | ddim | dpm-solver++ (what the family offers: the registry)
    steps: int = 250                    # DDPM respaced to 250 steps (Latte / DiT protocol)
    cfg_scale: float = 1.0              # classifier-free guidance; 1 = off (UCF101: 7.0)
    seed: int = 0                       # noise for sample i comes from seed + i
    num_samples: int = 2048             # FVD protocol: 2048 videos
    batch_size: int = 2                 # per device
    clip_denoised: bool = False         # clip predicted x_0 to [-1, 1]: for pixel-space models, not latents
    cfg_channels: int | None = None     # guide only the first k ε channels (DiT's release: 3); None = all

    def __post_init__(self):
        check_range(self, steps=(1, None), cfg_scale=(0, None), seed=(0, None), num_samples=(1, None),
                    batch_size=(1, None), cfg_channels=(1, None))



@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    density: DensityConfig = field(default_factory=DensityConfig)    # FlexDiT layout and schedule; empty = dense
    dydit: DyDiTConfig = field(default_factory=DyDiTConfig)          # DyDiT routers and budget; no target = off
    cache: CacheConfig = field(default_factory=CacheConfig)          # a training-free step cache; method none = off
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


def _check_family(config: Config, given: dict | None) -> None:
    """The run fits its model family (`flexgen.registry`): a dataset it trains on, a sampler it offers,
    and, among the keys `given` explicitly, none that means nothing for it set to anything but its default (a
    resolved config, as runs and checkpoints store it, lists every field at its default)."""
    family = family_of(config.model.preset)
    choice(f"data.dataset (for {config.model.preset})", config.data.dataset, list(family.datasets))
    choice(f"sample.sampler (for {config.model.preset})", config.sample.sampler, list(family.samplers))
    defaults = config_to_dict(Config())
    for section, values in (given or {}).items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if (section in family.unused or f"{section}.{key}" in family.unused) and \
                    value != defaults.get(section, {}).get(key):
                raise ConfigError(f"{section}.{key} has no meaning for {config.model.preset} ({family.name} "
                                  "family); remove it")


def config_from_dict(data: dict, source: str = "<dict>", *, strict_family: bool = False) -> Config:
    """Validate a nested mapping into a Config; `source` names the file in error messages. `strict_family` also
    rejects keys that mean nothing for the model's family (files and overrides a user wrote; resolved configs
    that runs and checkpoints store list every field)."""
    try:
        config = build_dataclass(Config, data or {}, "")
        _check_family(config, data if strict_family else None)
        if config.sample.steps > config.diffusion.num_timesteps:   # a sampler respaces the training steps
            raise ConfigError(f"sample.steps: must be <= diffusion.num_timesteps ({config.diffusion.num_timesteps}),"
                              f" got {config.sample.steps}")
        return config
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def apply_overrides(data: dict, overrides: list[str], source: str = "command line") -> dict:
    """Apply `section.key=value` overrides (values parsed as YAML) to a nested mapping, in place."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{source}: override {item!r} is not of the form section.key=value")
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: override {item!r}: {part!r} is not a section")
        try:
            node[leaf] = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: override {item!r}: the value is not valid YAML ({_yaml_problem(e)})") from e
    return data


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's message on one line: the problem and where (line, column, 1-based)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def _merge(base: dict, over: dict) -> dict:
    """Deep merge: mappings merge key by key, anything else in `over` replaces."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A YAML mapping; a top-level `base: other.yaml` (relative to this file) is read first and merged under it."""
    if not path.is_file():
        problem = f"{path} is not a file" if path.exists() else f"config file not found: {path}"
        raise ConfigError(problem + (f" (the `base:` of {seen[-1]})" if seen else ""))
    if path.resolve() in seen:
        raise ConfigError(f"{path}: `base` files form a cycle: {' -> '.join(map(str, seen))}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(e)}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    return _merge(_read_yaml(path.parent / base, (*seen, path.resolve())), data)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Load a YAML file (or the defaults when `path` is None), apply overrides, validate."""
    data = _read_yaml(Path(path)) if path is not None else {}
    source = str(path) if path is not None else "<defaults>"
    config_from_dict(data, source, strict_family=True)          # errors in the file name the file ...
    apply_overrides(data, list(overrides))
    return config_from_dict(data, f"{source} with overrides {' '.join(overrides)}" if overrides else source,
                            strict_family=True)


def config_to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def save_config(config: Config, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))
