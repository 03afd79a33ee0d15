"""FlexDiT on PixArt-α: diffusers' `PixArtTransformer2DModel` whose blocks play the roles of a FlexDiT layout.

The model is a subclass, so a dense PixArt-α folder's weights, `save_pretrained` / `from_pretrained`, attention
processors and the diffusers `PixArtAlphaPipeline` all keep working. What changes is the walk over the blocks:
`flexgen.policies.flexdit.run_layout` (the same engine as the video models) drives them through the block protocol
`block(x, cond, context=None, text=..., text_mask=...)` (`pixart_block` below):

- the self-attention takes the FlexDiT role: Poolingformer (P, attention = token mean of V, Q/K dropped), sparse
  generation (G, sparse queries read the dense tokens), sparse (S), dense recovery (R, fused dense queries read the
  sparse tokens), dense (D) and top (T) blocks; keys/values are normed and modulated like the queries;
- the text cross-attention and the MLP run on whatever token set the block carries;
- the adaLN-single tables are reused: one shared (B, 6·D) modulation per sample, each block adding its own
  `scale_shift_table`, for dense and sparse tokens alike.

The density keys `layout`, `schedule`, `fusion_init` and `num_train_timesteps` are config entries, written by
`save_pretrained` and restored by `from_pretrained`. The schedule reads the `timestep` the pipeline passes (the
scheduler's training timestep, identical for both CFG halves), so any scheduler and step count maps to the grids
of its own timesteps. The schedule's side is for the model's base token grid (`sample_size / patch_size`); another
grid (another resolution or aspect ratio) is pooled to the same fraction per axis.
"""

from __future__ import annotations

import dataclasses
import inspect
from functools import partial
from typing import NamedTuple

import torch
from diffusers import (
    ModelMixin,  # noqa: F401  (diffusers looks up a saved component's base classes on its module)
    PixArtTransformer2DModel,
)
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn
from torch.utils.checkpoint import checkpoint

from flexgen.attention import attention_with_key_bias
from flexgen.flops import FlopReport, count_macs
from flexgen.policies import DyDiT, FlexDiT, Policy, compose
from flexgen.policies.cost import CountedCost, SpatialSequence
from flexgen.policies.dydit.config import DyDiTConfig
from flexgen.policies.flexdit import (
    DensityConfig,
    ScheduleConfig,
)
from flexgen.presets import PIXART_PRESETS as PRESETS  # noqa: F401  (re-exported)
from flexgen.presets import TEXT_TOKENS
from flexgen.t2i.pixart_protocol import PixArtPolicyHooks

# ----------------------------------------------------------------------------------------------------------
# One block of PixArt-α in the density engine's block protocol.


def pixart_block(block: nn.Module, x: torch.Tensor, cond: torch.Tensor, context: torch.Tensor | None = None, *,
                 text: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
    """A diffusers `BasicTransformerBlock` (norm_type "ada_norm_single") on tokens x (B, N, D): self-attention with
    queries from x and keys/values from `context` (default x), text cross-attention, MLP. cond: (B, 6·D)."""
    # Restates the "ada_norm_single" branch of diffusers 0.42 `BasicTransformerBlock.forward` (norm1 +
    # scale_shift_table, attn1, attn2 without norm or gate, ff); guarded by
    # tests/t2i/test_pixart.py::test_full_grid_without_poolingformers_equals_dense.
    B = x.shape[0]
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
        block.scale_shift_table[None] + cond.reshape(B, 6, -1)).chunk(6, dim=1)           # each (B, 1, D)

    def modulated(tokens):
        return block.norm1(tokens) * (1 + scale_msa) + shift_msa

    h = modulated(x)                                                                       # (B, N, D)
    attn = block.attn1
    if attn.to_q is None:          # Poolingformer: uniform attention weights -> every token gets the mean of V
        a = attn.to_out[1](attn.to_out[0](attn.to_v(h.mean(dim=1, keepdim=True)))).expand_as(h)
    else:
        a = attn(h, encoder_hidden_states=None if context is None else modulated(context))  # (B, N, D)
    x = x + gate_msa * a
    x = x + block.attn2(x, encoder_hidden_states=text, attention_mask=text_mask)           # no norm, no gate
    x = x + gate_mlp * block.ff(block.norm2(x) * (1 + scale_mlp) + shift_mlp)
    return x


class FlexPixArtBlock(BasicTransformerBlock):
    """diffusers' PixArt block (same parameters and names), also callable in the density engine's protocol:
    `block(x, cond=..., context=..., text=..., text_mask=...)` runs `pixart_block` (or `run`, same arguments).
    Going through the module call (not a free function) keeps module hooks working, e.g. FSDP2's parameter
    gathering."""

    def forward(self, hidden_states: torch.Tensor, *args, cond: torch.Tensor | None = None,
                context: torch.Tensor | None = None, text: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None, run=None, **kwargs):
        if cond is None:                                          # diffusers' own call (the dense forward)
            return super().forward(hidden_states, *args, **kwargs)
        run = pixart_block if run is None else run                # DyDiT: the block at partial width
        return run(self, hidden_states, cond, context, text=text, text_mask=text_mask)


class BlockInputs(NamedTuple):
    """What every block of one forward reads beside its tokens."""
    cond: torch.Tensor                      # (B, 6·D) adaLN-single's modulation
    text: torch.Tensor                      # (B, L, D) projected caption tokens
    text_mask: torch.Tensor | None          # (B, 1, L) diffusers' additive key bias
    token_grid: tuple[int, int]             # (height, width) of the image tokens


class FlexgenAttnProcessor:
    """A diffusers attention processor that runs `flexgen.attention` (xformers where its kernels load, SDPA
    otherwise; it reports which ran). Text cross-attention with a padding mask packs each sample's valid text
    tokens, block-diagonally, as the original PixArt-α code does (xformers `BlockDiagonalMask`), instead of adding
    diffusers' −10000 bias over all padded positions: the work follows the real caption lengths."""

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        # Restates diffusers 0.42 `AttnProcessor2_0.__call__` for PixArt-α's plain attention (it reads the same
        # `Attention` attributes); guarded by
        # tests/t2i/test_pixart.py::test_flexgen_attention_processor_matches_diffusers.
        if attn.residual_connection or attn.rescale_output_factor != 1.0 or attn.norm_cross is not None or \
                attn.group_norm is not None or attn.spatial_norm is not None or attn.norm_q is not None:
            raise ValueError("FlexgenAttnProcessor runs PixArt-α's plain attention only (no residual, rescale, "
                             "group / spatial / cross / q-k norms)")
        B, N, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states

        def heads(t: torch.Tensor) -> torch.Tensor:                                   # (B, L, H·Dh) -> (B, L, H, Dh)
            return t.reshape(t.shape[0], t.shape[1], attn.heads, -1)

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(context)), heads(attn.to_v(context))
        out = attention_with_key_bias(q, k, v, attention_mask)                        # (B, N, H, Dh)
        return attn.to_out[1](attn.to_out[0](out.reshape(B, N, -1)))


def use_flexgen_attention(model: nn.Module) -> nn.Module:
    """Every attention of a (Flex)PixArt transformer through `FlexgenAttnProcessor`; returns the model."""
    model.set_attn_processor(FlexgenAttnProcessor())
    return model


# ----------------------------------------------------------------------------------------------------------
# The model.


class FlexPixArtTransformer2DModel(PixArtPolicyHooks, PixArtTransformer2DModel):
    """PixArt-α running a policy (`flexgen.policies`) built from its config keys: FlexDiT with a `layout`, DyDiT
    with `route_cross_attention` set (True / False: the text cross-attention's heads routed or whole), both
    composed; with neither, exactly the dense diffusers model."""

    _no_split_modules = ["FlexPixArtBlock", "BasicTransformerBlock", "PatchEmbed"]

    @register_to_config
    def __init__(self, num_attention_heads: int = 16, attention_head_dim: int = 72, in_channels: int = 4,
                 out_channels: int | None = 8, num_layers: int = 28, dropout: float = 0.0, norm_num_groups: int = 32,
                 cross_attention_dim: int | None = 1152, attention_bias: bool = True, sample_size: int = 128,
                 patch_size: int = 2, activation_fn: str = "gelu-approximate", num_embeds_ada_norm: int | None = 1000,
                 upcast_attention: bool = False, norm_type: str = "ada_norm_single",
                 norm_elementwise_affine: bool = False, norm_eps: float = 1e-6, interpolation_scale: int | None = None,
                 use_additional_conditions: bool | None = None, caption_channels: int | None = None,
                 attention_type: str | None = "default",
                 # FlexDiT (policies.flexdit): the layout's role letters or preset, the timestep -> grid schedule
                 # (ScheduleConfig fields), the recovery fusion's initialisation, training timesteps T.
                 layout: str = "", schedule: dict | None = None, fusion_init: str = "paper",
                 num_train_timesteps: int = 1000,
                 # DyDiT (policies.dydit): routers on when set; its λ (informational: what it was trained for)
                 route_cross_attention: bool | None = None, dydit_target: float | None = None):
        super().__init__(num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim,
                         in_channels=in_channels, out_channels=out_channels, num_layers=num_layers, dropout=dropout,
                         norm_num_groups=norm_num_groups, cross_attention_dim=cross_attention_dim,
                         attention_bias=attention_bias, sample_size=sample_size, patch_size=patch_size,
                         activation_fn=activation_fn, num_embeds_ada_norm=num_embeds_ada_norm,
                         upcast_attention=upcast_attention, norm_type=norm_type,
                         norm_elementwise_affine=norm_elementwise_affine, norm_eps=norm_eps,
                         interpolation_scale=interpolation_scale, use_additional_conditions=use_additional_conditions,
                         caption_channels=caption_channels, attention_type=attention_type)
        from flexgen.schema import ConfigError, build_dataclass

        try:
            schedule_config = build_dataclass(ScheduleConfig, dict(schedule or {}), "schedule")
        except ConfigError as e:
            raise ValueError(str(e)) from None
        self.density = DensityConfig(layout=layout, schedule=schedule_config, fusion_init=fusion_init)
        self.base_grid = sample_size // patch_size
        for block in self.transformer_blocks:
            block.__class__ = FlexPixArtBlock                     # same module, protocol-callable
        if route_cross_attention is None and self.routes_by_default:
            route_cross_attention = True
            self.register_to_config(route_cross_attention=True)
        self.route_cross = bool(route_cross_attention)
        self.last_token_grid, self.last_text_tokens = (self.base_grid, self.base_grid), TEXT_TOKENS
        parts: list[Policy] = []
        if layout:
            parts.append(FlexDiT(self.density, num_train_timesteps))
        if route_cross_attention is not None:
            parts.append(DyDiT(DyDiTConfig(target=dydit_target, cross_attention=route_cross_attention)))
        self.policy = compose(parts)
        self.fusions = nn.ModuleList()
        self.policy.attach(self)                                  # fusions, routers; Q/K of Poolingformers dropped

    routes_by_default = False       # DyPixArtTransformer2DModel (the name DyDiT folders record): routers by default

    # ---- conversion -------------------------------------------------------------------------------------

    @classmethod
    def from_dense(cls, dense: PixArtTransformer2DModel, density: DensityConfig,
                   num_train_timesteps: int = 1000) -> FlexPixArtTransformer2DModel:
        """Conversion: the dense model's weights, Q/K dropped for Poolingformers, fusions initialised by
        `density.fusion_init`; same device, dtype and train / eval mode as `dense`."""
        if dense.config.get("layout"):
            raise ValueError(f"the model already has a FlexDiT layout ({dense.config.layout!r}); convert a dense one")
        if density.pool_frames:
            raise ValueError("pool_frames is for video models; an image model has one frame")
        config = architecture_arguments(dense.config)
        config.update(density_config_entries(density), num_train_timesteps=num_train_timesteps)
        weight = next(dense.parameters())
        flex = cls(**config).to(device=weight.device)
        if next(flex.parameters()).dtype != weight.dtype:   # (diffusers warns on every dtype cast)
            flex = flex.to(dtype=weight.dtype)
        flex.load_state_dict(flex.flex_state_dict(dense.state_dict()), strict=True)
        return flex.train(dense.training)

    # ---- forward ----------------------------------------------------------------------------------------

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                timestep: torch.Tensor | None = None, added_cond_kwargs: dict | None = None,
                cross_attention_kwargs: dict | None = None, attention_mask: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None, return_dict: bool = True, **step):
        """As `PixArtTransformer2DModel.forward`; `step`: the policy's arguments (FlexDiT: `grid`, default the
        schedule's side at `timestep`, and `record`; DyDiT: `complete`). The dense policy is diffusers' forward."""
        if self.policy.dense and not step:
            return super().forward(hidden_states, encoder_hidden_states, timestep, added_cond_kwargs,
                                   cross_attention_kwargs, attention_mask, encoder_attention_mask, return_dict)
        if attention_mask is not None:
            raise ValueError("a policy changes or routes the image tokens between blocks; an image-side "
                             "attention_mask cannot follow them")
        if cross_attention_kwargs:
            raise ValueError(f"cross_attention_kwargs {sorted(cross_attention_kwargs)} are not supported with a "
                             "policy")
        if self.use_additional_conditions and added_cond_kwargs is None:
            raise ValueError("`added_cond_kwargs` (resolution, aspect_ratio) are needed by this model's adaLN-single")
        if encoder_attention_mask is not None and encoder_attention_mask.ndim == 2:     # 1 keep / 0 drop -> bias
            encoder_attention_mask = ((1 - encoder_attention_mask.to(hidden_states.dtype)) * -10000.0).unsqueeze(1)
        B, p = hidden_states.shape[0], self.config.patch_size
        height, width = hidden_states.shape[-2] // p, hidden_states.shape[-1] // p
        t = torch.as_tensor(timestep, device=hidden_states.device).reshape(-1).expand(B)
        self.policy.begin(self, t, **step)
        try:
            x = self.pos_embed(hidden_states)                                              # (B, N, D)
            cond, embedded_timestep = self.adaln_single(timestep, added_cond_kwargs, batch_size=B,
                                                        hidden_dtype=x.dtype)              # (B, 6·D), (B, D)
            self.last_token_grid = (height, width)
            self.policy.embedded(embedded_timestep)
            text = encoder_hidden_states
            if text is not None:
                self.last_text_tokens = text.shape[1]
            if self.caption_projection is not None:
                text = self.caption_projection(text).view(B, -1, x.shape[-1])              # (B, L, D)
            ctx = BlockInputs(cond, text, encoder_attention_mask, (height, width))
            x = self.policy.walk(self, x, ctx)                                             # (B, N, D)
        finally:
            self.policy.end()
        output = self._unpatchify(x, embedded_timestep, height, width)                     # (B, C_out, H, W)
        return Transformer2DModelOutput(sample=output) if return_dict else (output,)

    def walk(self, x: torch.Tensor, ctx: BlockInputs) -> torch.Tensor:
        """Every block on the dense tokens."""
        for block in self._blocks():
            x = block(x, ctx.cond, text=ctx.text, text_mask=ctx.text_mask)
        return x

    def _blocks(self) -> list:
        """Each block as `block(x, cond, context=None, text=, text_mask=)` (the block protocol), via `run_block`."""
        return [partial(self.run_block, i) for i in range(len(self.transformer_blocks))]

    def run_block(self, index, x, cond, context=None, *, text, text_mask):
        """Block `index` through its module call (FSDP's hooks, gradient checkpointing); the policy may run part of
        it (DyDiT's partial width)."""
        block = self.transformer_blocks[index]

        def call(run):
            kwargs = {"cond": cond, "context": context, "text": text, "text_mask": text_mask, "run": run}
            if self.gradient_checkpointing and torch.is_grad_enabled():
                return checkpoint(block, x, use_reentrant=False, **kwargs)
            return block(x, **kwargs)

        return self.policy.run_block(self, index, call)

    def _unpatchify(self, x, embedded_timestep, height, width):
        """PixArt-α's final layer: adaLN-single shift/scale from its own table, LayerNorm, linear, unpatchify."""
        # Restates the end of diffusers 0.42 `PixArtTransformer2DModel.forward`; guarded by
        # tests/t2i/test_pixart.py::test_full_grid_without_poolingformers_equals_dense.
        shift, scale = (self.scale_shift_table[None] + embedded_timestep[:, None]).chunk(2, dim=1)
        x = self.proj_out(self.norm_out(x) * (1 + scale) + shift)                          # (B, N, p·p·C)
        p, C = self.config.patch_size, self.out_channels
        x = x.reshape(-1, height, width, p, p, C).permute(0, 5, 1, 3, 2, 4)                # (B, C, h, p, w, p)
        return x.reshape(-1, C, height * p, width * p)


def architecture_arguments(config) -> dict:
    """The `PixArtTransformer2DModel` arguments in a transformer's config: without diffusers' private keys, our
    density keys, and the legacy Transformer2DModel keys (use_linear_projection, ...) the hub's PixArt-α configs
    carry, which the PixArt class ignores."""
    accepted = inspect.signature(PixArtTransformer2DModel.__init__).parameters
    return {k: v for k, v in dict(config).items() if k in accepted and k != "self"}


def density_config_entries(density: DensityConfig) -> dict:
    """The model-config entries of a DensityConfig (what `save_pretrained` writes to config.json)."""
    return {"layout": density.layout, "schedule": dataclasses.asdict(density.schedule),
            "fusion_init": density.fusion_init}


# ----------------------------------------------------------------------------------------------------------
# Cost: MACs of one image's forward (with TEXT_TOKENS T5 tokens) on the meta device.


@dataclasses.dataclass(frozen=True)
class PixArtCost(CountedCost):
    """`flexgen.policies.cost.CostModel` of a PixArt-α transformer (`PixArtTransformer2DModel` arguments)."""
    arguments: dict
    density: DensityConfig | None = None    # None for the dense model
    num_timesteps: int = 1000
    text_tokens: int = TEXT_TOKENS
    _counted: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)   # grid -> FlopReport

    @classmethod
    def of(cls, transformer: nn.Module) -> PixArtCost:
        """The cost of a built (Flex)PixArt transformer, from its config."""
        density = transformer.density if transformer.config.get("layout") else None
        return cls(architecture_arguments(transformer.config), density,
                   transformer.config.get("num_train_timesteps", 1000))

    @property
    def num_blocks(self) -> int:
        return self.arguments["num_layers"]

    def _count(self, grid: int | None) -> FlopReport:
        config, dense = self.arguments, self.density is None or grid is None

        def build():
            extra = {} if dense else {**density_config_entries(self.density), "num_train_timesteps": self.num_timesteps}
            return FlexPixArtTransformer2DModel(**config, **extra)

        def inputs():
            side = config["sample_size"]
            kwargs = {"encoder_attention_mask": torch.ones(1, self.text_tokens)}
            conditions = config.get("use_additional_conditions")
            if conditions or (conditions is None and side == 128):          # 1024-MS: resolution, aspect ratio
                kwargs["added_cond_kwargs"] = {"resolution": torch.ones(1, 2), "aspect_ratio": torch.ones(1, 1)}
            if not dense:
                kwargs["grid"] = grid
            x = torch.zeros(1, config.get("in_channels", 4), side, side)
            text = torch.zeros(1, self.text_tokens, config["caption_channels"])
            return (x, text, torch.zeros(1, dtype=torch.long)), kwargs

        return count_macs(build, inputs)

    def spatial_sequence(self) -> SpatialSequence:
        a = self.arguments
        width = a["num_attention_heads"] * a["attention_head_dim"]
        return SpatialSequence(1, a["sample_size"] // a["patch_size"], width, a["num_layers"])
