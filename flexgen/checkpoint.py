"""Reading and writing model weights.

- Our format: safetensors, with the model configuration as JSON in the file's metadata, so a weights file
  rebuilds its model alone.
- Official checkpoints: Latte's `ffs.pt`, `skytimelapse.pt`, `taichi-hd.pt`, `ucf101.pt` (a dict with "ema" and
  sometimes "model") and DiT's `DiT-XL-2-256x256.pt` (a bare state dict). Loaded with `weights_only=True`, the EMA
  entry preferred, the flat `blocks.{i}` list mapped onto our `spatial_blocks` / `temporal_blocks`, and loaded
  strictly: missing keys, unexpected keys and shape mismatches are one error that lists them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from flexgen import policies
from flexgen.files import atomic_write, file_sha256
from flexgen.video.latte import Latte, LatteConfig, sincos_1d, sincos_2d

# Where the released weights come from (no sha256 is published by either project; `file_sha256` prints the
# hash of the file you have, and every loader accepts an expected hash to check against).
OFFICIAL_CHECKPOINTS = {
    "ffs.pt": "Latte-XL/2, FaceForensics: huggingface.co/maxin-cn/Latte (file ffs.pt)",
    "skytimelapse.pt": "Latte-XL/2, SkyTimelapse: huggingface.co/maxin-cn/Latte (file skytimelapse.pt)",
    "taichi-hd.pt": "Latte-XL/2, Taichi-HD: huggingface.co/maxin-cn/Latte (file taichi-hd.pt)",
    "ucf101.pt": "Latte-XL/2, UCF101 (101 classes): huggingface.co/maxin-cn/Latte (file ucf101.pt)",
    "DiT-XL-2-256x256.pt": "DiT-XL/2, ImageNet 256: dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt",
    "DiT-XL-2-512x512.pt": "DiT-XL/2, ImageNet 512: dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-512x512.pt",
}

CONFIG_KEY = "flexgen_model_config"         # beside it, what the model's policy records (`Policy.metadata`)


# A model field as a run config names it, where the names differ (the rest are model.FIELD).
KEY_NAMES = {"input_size": "latent side (data.image_size / autoencoder.downsample)", "num_frames": "data.num_frames"}


class CheckpointError(ValueError):
    """A weights file that is missing, corrupt, or does not fit the model."""


def _require_file(path: Path, sha256: str | None) -> None:
    if path.is_dir():
        diffusers = any((path / name).exists() for name in ("model_index.json", "config.json", "transformer"))
        hint = " (it looks like a diffusers folder: a PixArt-α one loads with a PixArt config)" if diffusers else ""
        raise CheckpointError(f"{path} is a folder, not a weights file{hint}; this model reads one .pt or "
                              ".safetensors file")
    if not path.is_file():
        source = OFFICIAL_CHECKPOINTS.get(path.name)
        known = ", ".join(OFFICIAL_CHECKPOINTS)
        where = f"It is the released {source}." if source else f"Known released files: {known}."
        expected = f"expected sha256 {sha256}" if sha256 else "no sha256 is published for it"
        raise CheckpointError(f"weights file not found: {path} ({expected}). {where} "
                              f"Download it on a machine with internet access and put it at {path.resolve()}, "
                              "or pass the path where it lies.")
    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256.lower():
            raise CheckpointError(f"{path}: sha256 {actual} does not match the expected {sha256}; "
                                  "the file is corrupt or a different release")


# ----------------------------------------------------------------------------------------------------------
# Reading.


def read_state_dict(path: str | Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or of a torch checkpoint (no pickled code: weights_only=True); from a
    training checkpoint, the "ema" entry is preferred over "model" (flexgen's own `latest.pt`: the network's keys
    under the Denoiser's `net.`, so an unfinished run can be sampled or fine-tuned from)."""
    path = Path(path)
    _require_file(path, sha256)
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except SafetensorError as e:
            raise _unreadable_safetensors(path, e) from e
    obj = load_torch_checkpoint(path)
    for key in ("ema", "model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict (expected tensors, or an 'ema'/'model' entry of tensors)")
    if obj and all(k.startswith("net.") for k in obj):     # flexgen's own latest.pt: the Denoiser's keys
        obj = {k.removeprefix("net."): v for k, v in obj.items()}
    return obj


def load_torch_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", hint: str = "") -> Any:
    """`torch.load(path, weights_only=True)`, its failures as one CheckpointError naming the file: a damaged or
    truncated file, or one that carries objects other than tensors and plain containers (which weights_only
    refuses to unpickle: it could run code). `hint` says what to do about it."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:       # weights_only refused a global: the file would run code when loaded
        lines = [line for line in str(e).splitlines() if "GLOBAL" in line] or [_first_sentence(e)]
        raise CheckpointError(f"{path} holds objects other than tensors and is not loaded (weights_only=True: it "
                              f"could run code): {lines[0].strip()}{hint}") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:     # torch's zip reader, a short pickle stream
        raise CheckpointError(f"{path} is not a readable torch checkpoint (truncated or damaged: "
                              f"{_first_sentence(e)}){hint}") from e


# Plain data that released training checkpoints pickle beside the tensors: DiT's and DyDiT's train.py save
# {"model", "ema", "opt", "args"} with `args` an argparse.Namespace. Everything else that could run code is refused.
SAFE_GLOBALS = [argparse.Namespace]


def _first_sentence(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text.split(". ")[0].rstrip(".")


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file (empty for other files)."""
    if Path(path).suffix != ".safetensors":
        return {}
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except SafetensorError as e:
        raise _unreadable_safetensors(path, e) from e


def _unreadable_safetensors(path: Path, error: Exception) -> CheckpointError:
    return CheckpointError(f"{path} is not a readable safetensors file ({error}): truncated or damaged; copy it "
                           "again")


def convert_official_state_dict(sd: dict[str, torch.Tensor], config: LatteConfig) -> dict[str, torch.Tensor]:
    """Map the released Latte / DiT key layout onto ours. The fixed sin-cos tables in the file are checked
    against ours (a mismatch means the wrong input size or frame count) and dropped."""
    keys = {_unwrapped(k) for k in sd}
    if config.temporal and config.num_frames > 1 and "pos_embed" in keys and "temp_embed" not in keys:
        raise CheckpointError("this released checkpoint has a pos_embed and no temp_embed: it is a DiT (image) "
                              "checkpoint, and this "
                              f"config is a video model ({config.num_frames} frames, temporal blocks); load it with a "
                              "DiT config")
    out = {}
    for key, value in sd.items():
        key = _unwrapped(key)
        if key in ("pos_embed", "temp_embed"):
            ours = (sincos_2d(config.hidden_size, config.grid_size) if key == "pos_embed"
                    else sincos_1d(config.hidden_size, torch.arange(config.num_frames))).float()[None]
            if value.shape != ours.shape or not torch.allclose(value.float(), ours, atol=1e-4):
                raise CheckpointError(f"checkpoint {key} of shape {tuple(value.shape)} does not match this model's "
                                      f"{tuple(ours.shape)} sin-cos table: wrong input_size or num_frames?")
            continue
        match = re.match(r"blocks\.(\d+)\.(.*)", key)
        if match:
            i, rest = int(match.group(1)), match.group(2)
            if config.temporal:   # Latte walks one flat list in pairs: blocks[2i] spatial, blocks[2i+1] temporal
                key = f"{'temporal' if i % 2 else 'spatial'}_blocks.{i // 2}.{rest}"
            else:
                key = f"spatial_blocks.{i}.{rest}"
        out[key] = value
    return out


def _unwrapped(key: str) -> str:
    """A key without the prefixes DDP ("module.") and torch.compile ("_orig_mod.") add to a wrapped model's."""
    while key.startswith(("module.", "_orig_mod.")):
        key = key.removeprefix("module.").removeprefix("_orig_mod.")
    return key


def load_weights(model: Latte, path: str | Path, sha256: str | None = None, *, routers_required: bool = False) -> None:
    """Load our safetensors or an official checkpoint into `model`, strictly. The model's policy maps its own keys
    (DyDiT: the released layout) and converts a file without its modules: a FlexDiT model loads its dense model's
    weights, a DyDiT model a dense file (fresh routers, every block's heads and MLP groups in importance order),
    which `routers_required` refuses. A file with a policy's modules the model lacks is refused by name."""
    sd = {_unwrapped(k): v for k, v in read_state_dict(path, sha256).items()}
    if any(k.startswith(("blocks.", "pos_embed")) for k in sd):
        sd = convert_official_state_dict(sd, model.config)
    try:
        policies.check_file_fits(sd, model.policy, path)
        model.policy.check_metadata(read_metadata(path), path)
        sd, converting = model.policy.load_state_dict(sd, path, routers_required=routers_required)
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or shapes:
        def show(items):
            return ", ".join(items[:4]) + (f" … ({len(items)} in all)" if len(items) > 4 else "")
        problems = [f"{name}: {show(items)}" for name, items in
                    (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if items]
        raise CheckpointError(f"{path} does not fit the model of this config ({_differences(path, model.config)}): "
                              + "; ".join(problems))
    model.load_state_dict(sd, strict=True)
    if converting:
        model.policy.converted()


def _differences(path: Path, config: LatteConfig) -> str:
    """The model fields in which the file's recorded configuration differs from `config` (the config's key names),
    or the config's sizes where the file records none (an official checkpoint)."""
    recorded = read_metadata(path).get(CONFIG_KEY)
    ours = dataclasses.asdict(config)
    if recorded:
        theirs = json.loads(recorded)
        changed = [f"{KEY_NAMES.get(k, 'model.' + k)} {theirs[k]} in the file, {v} here" for k, v in ours.items()
                   if k in theirs and theirs[k] != v]
        if changed:
            return ", ".join(changed)
    return ", ".join(f"{KEY_NAMES.get(k, 'model.' + k)} {ours[k]}" for k in ("depth", "hidden_size", "num_heads",
                                                                          "input_size", "num_frames", "in_channels"))


# ----------------------------------------------------------------------------------------------------------
# Writing.


def save_weights(model: Latte, path: str | Path) -> None:
    """Model weights as safetensors, with the model configuration and what its policy records in the metadata."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {CONFIG_KEY: json.dumps(dataclasses.asdict(model.config)), **model.policy.metadata()}
    with atomic_write(path) as tmp:                   # a killed write never leaves a truncated file under `path`
        save_file(tensors, str(tmp), metadata=metadata)


def load_model(path: str | Path, sha256: str | None = None) -> Latte:
    """Rebuild a model (dense, FlexDiT, DyDiT or composed) from one of our safetensors files alone."""
    path = Path(path)
    _require_file(path, sha256)
    meta = read_metadata(path)
    if CONFIG_KEY not in meta:
        raise CheckpointError(f"{path} carries no flexgen model configuration; build the model from its preset "
                              "and use load_weights")
    config = LatteConfig(**json.loads(meta[CONFIG_KEY]))
    try:
        policy = policies.from_metadata(meta, path)
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    model = Latte(config, policy=policy)
    load_weights(model, path)
    return model
