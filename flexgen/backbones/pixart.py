"""The PixArt-α family (`flexgen.t2i.pixart.FlexPixArtTransformer2DModel`, dense or FlexDiT) behind the
`Denoiser` interface.

Its exchange format is a diffusers transformer folder (config.json with the density keys + weights), which
`flexgen generate --transformer` and `load_transformer` read; pretrained weights come from a local PixArt-α
pipeline or transformer folder. It trains on image–caption folders with cached T5 embeddings.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flexgen import policies
from flexgen.backbones.base import Denoiser
from flexgen.presets import PIXART_PRESETS as PRESETS
from flexgen.presets import TEXT_TOKENS
from flexgen.t2i.pixart import PixArtCost


def transformer_arguments(run: Any) -> dict:
    """PixArtTransformer2DModel arguments of a run configuration: the preset, the size overrides, the latent size."""
    model = run.model
    args = dict(PRESETS[model.preset])
    if model.depth is not None:
        args["num_layers"] = model.depth
    if model.num_heads is not None:
        args["num_attention_heads"] = model.num_heads
    if model.hidden_size is not None:
        heads = args["num_attention_heads"]
        if model.hidden_size % heads:
            raise ValueError(f"model.hidden_size {model.hidden_size} is not divisible by {heads} heads")
        args["attention_head_dim"] = model.hidden_size // heads
        args["cross_attention_dim"] = model.hidden_size
    if model.caption_channels is not None:
        args["caption_channels"] = model.caption_channels
    latent, rest = divmod(run.data.image_size, run.autoencoder.downsample)
    if rest or latent % args["patch_size"]:
        raise ValueError(f"data.image_size {run.data.image_size} must be a multiple of autoencoder.downsample "
                         f"({run.autoencoder.downsample}) × patch size ({args['patch_size']})")
    args.update(sample_size=latent, in_channels=model.in_channels,
                out_channels=model.in_channels * (2 if model.learn_sigma else 1))
    return args


# ----------------------------------------------------------------------------------------------------------
# The family's Denoiser.


class PixArtDenoiser(Denoiser):
    """ε-and-variance prediction `denoiser(x_t, t, text=, text_mask=)` around a (Flex)PixArt transformer, for
    `flexgen.diffusion` and the shared training loop."""

    family = "pixart"

    def __init__(self, net: nn.Module, run: Any):
        super().__init__(net, run)
        self.vae_factor = run.autoencoder.downsample        # pixels per latent, for 1024-MS's resolution conditions
        self.null_text: tuple[torch.Tensor, torch.Tensor] | None = None      # T5("") and its mask, for CFG dropout

    @classmethod
    def from_run(cls, run: Any) -> PixArtDenoiser:
        """The transformer running the run's policy (`flexgen.policies.from_run`: its density and dydit sections)."""
        from flexgen.t2i.pixart_io import pixart_network

        if run.density.pool_frames:
            raise ValueError("density.pool_frames is for video models; PixArt-α images have one frame")
        return cls(pixart_network(transformer_arguments(run), policies.from_run(run)), run)

    # ---- weights ----------------------------------------------------------------------------------------

    def load_pretrained(self, path: str | Path, sha256: str | None = None, *, routers_required: bool = False) -> None:
        """Weights from a local PixArt-α folder (pipeline or transformer), converted to this model's FlexDiT layout
        when the folder holds a dense model, and to DyDiT (fresh routers, every unit on, heads and MLP groups in
        importance order) when this model has routers and the folder none (`routers_required` refuses that)."""
        from flexgen.t2i.pixart import FlexPixArtTransformer2DModel
        from flexgen.t2i.pixart_io import load_transformer, policy_metadata, policy_of, transformer_folder

        if sha256:
            raise ValueError("a sha256 checks one weights file; a PixArt-α source is a diffusers folder")
        t = self.net
        source = load_transformer(path, dtype=next(t.parameters()).dtype)
        shape_keys = ("num_layers", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels",
                      "patch_size", "cross_attention_dim", "caption_channels", "use_additional_conditions")
        ours = {k: getattr(t, k) if k == "use_additional_conditions" else t.config[k] for k in shape_keys}
        theirs = {k: getattr(source, k) if k == "use_additional_conditions" else source.config[k] for k in shape_keys}
        differ = [f"{k}: {theirs[k]} there, {ours[k]} here" for k in shape_keys if ours[k] != theirs[k]]
        if differ:
            raise ValueError(f"{path} does not fit the configured model (model.preset and its overrides): "
                             + "; ".join(differ))
        policies.check_file_fits(source.state_dict(), self.policy, path)     # (before converting it)
        source_layout = source.config.get("layout", "")
        if self.layout and not source_layout:
            source = FlexPixArtTransformer2DModel.from_dense(source, t.density, t.config.num_train_timesteps)
        elif source_layout and source.roles != self.layout:
            raise ValueError(f"{path} holds a FlexDiT model with layout {source_layout!r}; the run's layout is "
                             f"{self.layout or 'dense'}: start from a dense folder or use its layout")
        sd = source.state_dict()
        ours, theirs = self.policy.sections().get("dydit"), policy_of(source).sections().get("dydit")
        if ours and theirs and ours["cross_attention"] != theirs["cross_attention"]:
            raise ValueError(f"{path} routes the cross-attention's heads: {theirs['cross_attention']}; the run's "
                             f"dydit.cross_attention is {ours['cross_attention']}")
        self.policy.check_metadata(policy_metadata(transformer_folder(path)), path)   # (DyDiT: λ, trained)
        sd, converting = self.policy.load_state_dict(sd, path, routers_required=routers_required)
        t.load_state_dict(sd)
        if converting:
            self.policy.converted()        # DyDiT: importance order, function-preserving, routers all on

    export_name = "transformer"

    def export(self, path: str | Path) -> Path:
        """A diffusers transformer folder (config.json with the density keys + weights), for `flexgen generate
        --transformer` and `load_transformer`. Written into a hidden folder beside `path`, renamed into place when
        complete (`flexgen.files.atomic_directory`): a killed export never leaves a half-written folder to load. An
        existing transformer folder (with a config.json) is replaced whole; any other non-empty folder is refused
        rather than deleted."""
        from flexgen.files import atomic_directory, atomic_write_text
        from flexgen.t2i.pixart_io import POLICY_FILE, policy_of

        path = Path(path)
        if path.is_dir() and any(path.iterdir()) and not (path / "config.json").is_file():
            raise FileExistsError(f"{path} is a non-empty folder that is not a transformer folder (no config.json); "
                                  "the export replaces its folder whole: choose a new or empty folder")
        with atomic_directory(path) as tmp:
            self.net.save_pretrained(tmp)
            metadata = policy_of(self.net).metadata()      # (diffusers' own class: the dense model, none)
            if metadata:
                atomic_write_text(tmp / POLICY_FILE, json.dumps(metadata, indent=1) + "\n")
        return path

    def describe(self) -> str:
        return (f"{self.net.config.num_layers} blocks; use it with flexgen generate --transformer")

    def converted(self, density: Any) -> PixArtDenoiser:
        from flexgen.t2i.pixart import FlexPixArtTransformer2DModel

        run = dataclasses.replace(self.run, density=density)
        return PixArtDenoiser(FlexPixArtTransformer2DModel.from_dense(self.net, density, self.num_timesteps), run)

    # ---- training ---------------------------------------------------------------------------------------

    @classmethod
    def training_dataset(cls, run: Any, *, is_main: bool, device: torch.device, progress: bool = True):
        """Images with cached T5 embeddings: rank 0 encodes the missing captions first, then the others read."""
        from flexgen import dist
        from flexgen.data.captions import build_caption_dataset

        dataset = None
        if is_main:
            dataset = build_caption_dataset(run.data, run.train.seed, fill=True, progress=progress, device=device)
        dist.barrier()
        if not is_main:
            dataset = build_caption_dataset(run.data, run.train.seed, fill=False)
        return dataset

    def use_dataset(self, dataset: Any) -> None:
        """Captions drop to the dataset's T5("") (classifier-free guidance)."""
        self.null_text = dataset.null_text()

    def shard_units(self) -> list[nn.Module]:
        return list(self.net.transformer_blocks)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        if enabled:
            self.net.enable_gradient_checkpointing()
        else:
            self.net.disable_gradient_checkpointing()

    def prepare_batch(self, batch: dict, device: torch.device, generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, dict]:
        """Images (B, 3, H, W) and the T5 states and masks; a caption drops to T5("") at rate class_dropout_prob."""
        text, mask = batch["text"].to(device), batch["text_mask"].to(device)
        p = self.run.model.class_dropout_prob
        if generator is not None and p > 0:
            if self.null_text is None:
                raise ValueError("caption dropout needs T5(\"\"): call use_dataset(dataset) first")
            drop = (torch.rand(text.shape[0], generator=generator) < p).to(device)
            text = torch.where(drop[:, None, None], self.null_text[0].to(device, text.dtype), text)
            mask = torch.where(drop[:, None], self.null_text[1].to(device, mask.dtype), mask)
        return batch["image"].to(device, non_blocking=True), {"text": text, "text_mask": mask}

    # ---- cost and inputs ----------------------------------------------------------------------------------

    def cost(self) -> PixArtCost:
        """The network's cost model, made once (it caches each grid's count)."""
        if self._cost is None:
            self._cost = PixArtCost.of(self.net)
        return self._cost

    _cost: PixArtCost | None = None

    def latent_shape(self) -> tuple[int, ...]:
        side = self.net.config.sample_size
        return (self.net.config.in_channels, side, side)

    @property
    def conditional(self) -> bool:
        return True

    def example_condition(self, batch: int, device: torch.device | str = "cpu",
                          dtype: torch.dtype = torch.float32) -> dict:
        text = torch.randn(batch, TEXT_TOKENS, self.net.config.caption_channels, device=device, dtype=dtype)
        return {"text": text, "text_mask": torch.ones(batch, TEXT_TOKENS, device=device, dtype=torch.long)}

    def example_batch(self, batch: int, generator: torch.Generator | None = None, text_tokens: int = 8) -> dict:
        """Images (B, 3, S, S) in [-1, 1] with cached-T5-like states (B, L, C) and masks (the last 2 tokens padding),
        as the caption datasets give them."""
        S, C = self.run.data.image_size, self.net.config.caption_channels
        mask = torch.ones(batch, text_tokens, dtype=torch.long)
        mask[:, -2:] = 0
        return {"image": torch.rand(batch, 3, S, S, generator=generator) * 2 - 1,
                "text": torch.randn(batch, text_tokens, C, generator=generator), "text_mask": mask}

    def condition_summary(self) -> dict:
        return {"text_tokens": TEXT_TOKENS}

    @classmethod
    def preset_overrides(cls, preset: str, *, image_size: int | None, frames: int | None, num_classes: int | None,
                         in_channels: int, vae_factor: int) -> list[str]:
        """PixArt-α: the preset's resolution unless image_size is given; 120 T5 tokens."""
        arguments = PRESETS[preset]
        if image_size is None:
            image_size = arguments["sample_size"] * vae_factor
        elif image_size % (vae_factor * arguments["patch_size"]):
            raise ValueError(f"--image-size {image_size} is not divisible by --vae-factor × patch size")
        return [f"model.preset={preset}", f"data.image_size={image_size}", f"model.in_channels={in_channels}",
                f"autoencoder.downsample={vae_factor}", "data.dataset=captions"]

    def set_attention(self, kind: str) -> None:
        super().set_attention(kind)
        if kind == "flexgen":
            from flexgen.t2i.pixart import use_flexgen_attention

            use_flexgen_attention(self.net)

    def attention_processors(self) -> dict | None:
        from flexgen.t2i.pixart import FlexgenAttnProcessor

        processors = [type(p).__name__ for p in self.net.attn_processors.values()]
        if FlexgenAttnProcessor.__name__ in processors:
            return None
        return {f"diffusers {name} modules": processors.count(name) for name in set(processors)}

    def null_condition(self, cond: dict) -> dict:
        if self.null_text is not None:
            text, mask = (v.to(cond["text"].device) for v in self.null_text)
            return {"text": text.to(cond["text"].dtype).expand_as(cond["text"]),
                    "text_mask": mask.to(cond["text_mask"].dtype).expand_as(cond["text_mask"])}
        return {"text": torch.zeros_like(cond["text"]), "text_mask": cond["text_mask"]}

    def forward(self, x: torch.Tensor, t: torch.Tensor, *, text: torch.Tensor, text_mask: torch.Tensor,
                **kwargs) -> torch.Tensor:
        """x: (B, C, h, w) noisy latents, t: (B,) timesteps, text: (B, L, C_text) T5 states, text_mask: (B, L)."""
        if self.net.use_additional_conditions:                # 1024-MS: (height, width) and aspect ratio
            h, w = x.shape[-2] * self.vae_factor, x.shape[-1] * self.vae_factor
            kwargs["added_cond_kwargs"] = {"resolution": x.new_tensor([[h, w]]).expand(x.shape[0], 2),
                                           "aspect_ratio": x.new_tensor([[h / w]]).expand(x.shape[0], 1)}
        return self.net(x, text, t, encoder_attention_mask=text_mask, return_dict=False, **kwargs)[0]
