"""PixArt-α transformers from local folders: a pipeline folder or a transformer folder, dense (diffusers' class),
FlexDiT or DyDiT (ours, by the `_class_name` their config.json records)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import PixArtTransformer2DModel

from flexgen.autoencoder import local_load_options
from flexgen.policies import DyDiT, FlexDiT, Policy, compose
from flexgen.policies.flexdit import DensityConfig
from flexgen.t2i.dy_pixart import DyPixArtTransformer2DModel
from flexgen.t2i.pixart import FlexPixArtTransformer2DModel, architecture_arguments, density_config_entries

# Beside a transformer folder's config.json: what our safetensors record in their metadata about the policy
# (`Policy.metadata`: DyDiT's λ and whether its routers were trained), which diffusers' config has no place for.
POLICY_FILE = "flexgen_policy.json"
WEIGHT_SOURCES = ("a diffusers PixArt-α folder: PixArt-alpha/PixArt-XL-2-256x256, PixArt-XL-2-512x512 or "
                  "PixArt-XL-2-1024-MS on the Hugging Face hub, downloaded on a machine with internet access")



def transformer_folder(path: str | Path) -> Path:
    """The transformer folder of a diffusers PixArt-α pipeline folder, or the path itself if it is one."""
    path = Path(path)
    for folder in (path / "transformer", path):
        if (folder / "config.json").is_file():
            return folder
    what = "no such folder" if not path.exists() else "no config.json in it or in its transformer/ subfolder"
    raise FileNotFoundError(f"no PixArt-α transformer at {path} ({what}); expected a pipeline folder with "
                            f"transformer/config.json and weights, or a transformer folder, e.g. {WEIGHT_SOURCES}")


def load_transformer(path: str | Path, density: DensityConfig | None = None, *, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32,
                     num_train_timesteps: int = 1000) -> PixArtTransformer2DModel:
    """A dense, FlexDiT or DyDiT PixArt-α transformer from a local folder (pipeline or transformer folder). With a
    `density` whose layout is set, a dense model is converted (FlexDiT fine-tuning starts here)."""
    folder = transformer_folder(path)
    saved = json.loads((folder / "config.json").read_text())
    classes = {c.__name__: c for c in (FlexPixArtTransformer2DModel, DyPixArtTransformer2DModel)}
    cls = classes.get(saved.get("_class_name"), PixArtTransformer2DModel)
    flex = cls is not PixArtTransformer2DModel
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise FileNotFoundError(f"{folder} has a config.json but no weights (*.safetensors or *.bin); copy the "
                                f"weights of {WEIGHT_SOURCES}")
    model = cls.from_pretrained(folder, torch_dtype=dtype, **local_load_options()).to(device)
    policy_of(model).check_metadata(policy_metadata(folder), folder)      # (DyDiT: trained, or a conversion)
    if density is not None and density.layout:
        if flex and model.roles:
            if density_config_entries(density) != density_config_entries(model.density):
                raise ValueError(f"{folder} holds a FlexDiT model with layout {model.config.layout!r}; it cannot be "
                                 "converted again (load it without a density section, or start from a dense one)")
            return model
        model = FlexPixArtTransformer2DModel.from_dense(model, density, num_train_timesteps)
    return model


def pixart_network(arguments: dict, policy: Policy) -> FlexPixArtTransformer2DModel:
    """The PixArt-α transformer of `PixArtTransformer2DModel` arguments running `policy` (dense, FlexDiT, DyDiT or
    both); a DyDiT part keeps its whole config section (λ schedule, loss weight, strata) for training."""
    flex, dy = policy.part(FlexDiT), policy.part(DyDiT)
    extra = {} if flex is None else {**density_config_entries(flex.density), "num_train_timesteps": flex.num_timesteps}
    if dy is None:
        net = FlexPixArtTransformer2DModel(**arguments, **extra)
    else:
        net = DyPixArtTransformer2DModel(**arguments, **extra, dydit_target=dy.config.target,
                                         route_cross_attention=dy.config.cross_attention)   # (its folders' name)
        net.policy.part(DyDiT).config = dy.config
    unsaved = [p for p in policy.parts if p.section and net.policy.part(type(p)) is None]   # no config key: a cache
    if unsaved:
        kept = [p for p in net.policy.parts if not p.dense]                      # (the dense model is no part)
        net.policy = compose(sorted([*unsaved, *kept], key=lambda p: p.order))
        for part in unsaved:
            part.attach(net)
    return net


def with_step_cache(transformer: torch.nn.Module, config: Any) -> FlexPixArtTransformer2DModel:
    """The same transformer (weights, FlexDiT / DyDiT settings, device, dtype) running a step cache (`CacheConfig`)
    around its policy; diffusers' dense class becomes flexgen's, whose forward calls the policy."""
    from flexgen.policies.cache.policy import StepCache

    parts = [p for p in policy_of(transformer).parts if p.section != StepCache.section]   # (any step cache)
    cache = StepCache.from_section(config, None)                   # (diffusers' methods: their hooks' policy)
    net = pixart_network(architecture_arguments(transformer.config), compose([*parts, *([cache] if cache else [])]))
    weight = next(transformer.parameters())
    net.load_state_dict(transformer.state_dict())
    return net.to(device=weight.device, dtype=weight.dtype).eval()


def policy_metadata(folder: Path) -> dict[str, str]:
    """The policy metadata an export wrote beside the transformer's config (empty for other folders)."""
    path = Path(folder) / POLICY_FILE
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not readable JSON ({e}); export the model again") from None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError(f"{path} is not a mapping of strings (policy metadata); export the model again")
    return meta


def policy_of(transformer: torch.nn.Module) -> Policy:
    """The policy a PixArt-α transformer runs (diffusers' own class: the dense model)."""
    return transformer.policy if isinstance(transformer, FlexPixArtTransformer2DModel) else Policy()
