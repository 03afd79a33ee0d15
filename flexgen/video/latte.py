"""Latte (variant 1: interleaved spatial / temporal blocks) and DiT as its one-frame case.

Tensors are frame-first, `(B, F, C, H, W)`; a model without temporal blocks (DiT) also takes images
`(B, C, H, W)`. Blocks are DiT adaLN-Zero blocks (Peebles & Xie 2023); the Latte layout follows Ma et al. 2024
(arXiv 2401.03048) and the released `Vchitect/Latte` code: spatial blocks attend within a frame, temporal blocks
across frames at one spatial location, the 1-D temporal sin-cos embedding is added once, before the first
temporal block. Joint image-video training appends still images after the video frames; they run through
the spatial blocks only.

Naming differs from the released checkpoints in one place: spatial and temporal blocks are two named lists
(`spatial_blocks`, `temporal_blocks`) instead of one flat `blocks` list walked in pairs. `load_official`
(in `flexgen.checkpoint`) maps one layout to the other.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from flexgen.attention import attention
from flexgen.policies.base import Policy
from flexgen.presets import LATTE_PRESETS as PRESETS  # noqa: F401  (re-exported)
from flexgen.video.latte_protocol import LattePolicyHooks

# ----------------------------------------------------------------------------------------------------------
# Configuration.


@dataclass(frozen=True)
class LatteConfig:
    depth: int = 28             # number of transformer blocks (Latte: spatial + temporal; DiT: spatial only)
    hidden_size: int = 1152     # token width D
    num_heads: int = 16         # attention heads
    patch_size: int = 2         # p: a p×p patch of the latent becomes one token
    temporal: bool = True       # Latte (interleaved temporal blocks) or DiT (none)
    input_size: int = 32        # latent side (image side / VAE downsampling factor)
    num_frames: int = 16        # video frames F (1 for DiT)
    in_channels: int = 4        # latent channels C
    num_classes: int = 0        # 0 = unconditional; otherwise class-conditional with a null class for CFG
    class_dropout_prob: float = 0.1  # label drop rate of CFG training (applied by LatteDenoiser.prepare_batch)
    learn_sigma: bool = True    # output 2C channels: ε and the learned-range variance value
    mlp_ratio: float = 4.0      # MLP hidden width / D

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if (self.hidden_size // 2) % 2:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of 4 for the 2-D sin-cos embedding")
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}")
        if self.temporal and self.depth % 2:
            raise ValueError(f"Latte depth must be even (spatial/temporal pairs), got {self.depth}")
        if not self.temporal and self.num_frames != 1:
            raise ValueError(f"a model without temporal blocks (DiT) has num_frames=1, got {self.num_frames}")

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size

    @property
    def num_spatial(self) -> int:
        return self.depth // 2 if self.temporal else self.depth

    @property
    def num_temporal(self) -> int:
        return self.depth // 2 if self.temporal else 0


# ----------------------------------------------------------------------------------------------------------
# Sine/cosine embeddings (MAE / DiT recipe), computed in float64 on the current default device.


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(..., ) positions -> (..., dim) with [sin | cos] halves; frequencies 1 / 10000^(2i/dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64)[..., None] * omega
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def sincos_2d(dim: int, grid_size: int) -> torch.Tensor:
    """(grid_size², dim), row-major tokens. As in MAE, the first half of the channels encodes the column index
    and the second half the row index."""
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    return torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=-1)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B,) float or int timesteps -> (B, dim) with [cos | sin] halves (DiT's order, which its checkpoints need),
    computed in `dtype` (float32 as in DiT, or float64)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=dtype, device=t.device) / half)
    angles = t.to(dtype)[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


# ----------------------------------------------------------------------------------------------------------
# Embedding layers for patches, timesteps and class labels.


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches -> tokens, per frame (Latte's "uniform frame patch embedding")."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)                        # (N, C, H, W) -> (N, T, D)


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of the diffusion step followed by a two-layer MLP."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        dtype = self.mlp[0].weight.dtype
        freq = timestep_embedding(t, self.frequency_dim, dtype=torch.promote_types(dtype, torch.float32)).to(dtype)
        return self.mlp(freq)                                                 # (B, D)


class LabelEmbedder(nn.Module):
    """Class embedding table with one extra row, index `num_classes`, for the null label of CFG. Labels are
    dropped to the null class for CFG training by the training view (`LatteDenoiser.prepare_batch`), not here."""

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)                                   # (...,) -> (..., D)


# ----------------------------------------------------------------------------------------------------------
# Transformer block with adaLN-Zero conditioning.


class Attention(nn.Module):
    """Multi-head attention with a fused qkv projection (timm layout, as in the released checkpoints).

    Queries come from `x`; keys and values from `context` when given (FlexDiT's sparse generation and dense
    recovery reuse the pretrained q and kv slices), else from `x`. After `drop_qk()` (FlexDiT's Poolingformer)
    only the value projection remains and attention is the token mean of V, computed as a mean: because V is
    affine, mean(V(h)) = V(mean(h)), so the branch costs O(N·D + D²), never N×N.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.v = None
        self.proj = nn.Linear(dim, dim)

    def drop_qk(self) -> None:
        """Keep only the value slice of qkv (weights copied), as a Linear named `v`."""
        D = self.proj.in_features
        self.v = nn.Linear(D, D, device=self.qkv.weight.device, dtype=self.qkv.weight.dtype)
        with torch.no_grad():
            self.v.weight.copy_(self.qkv.weight[2 * D:])
            self.v.bias.copy_(self.qkv.bias[2 * D:])
        self.qkv = None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                head_gates: torch.Tensor | None = None) -> torch.Tensor:
        """`head_gates` (broadcastable to (S, N, H, 1)): each head's output times its gate before `proj` (DyDiT's
        masked definition of partial width)."""
        S, N, D = x.shape
        H = self.num_heads
        if self.qkv is None:                                                  # Poolingformer: token mean of V
            if context is not None:
                raise ValueError("a Poolingformer attends to its own tokens only")
            out = self.v(x.mean(dim=1, keepdim=True))                         # (S, 1, D), broadcasts over N
            if head_gates is not None:
                out = (out.reshape(S, 1, H, D // H) * head_gates).reshape(S, 1, D)
            return self.proj(out)
        if context is None:
            q, k, v = self.qkv(x).reshape(S, N, 3, H, D // H).unbind(2)       # 3 × (S, N, H, Dh)
        else:
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(x, w[:D], b[:D]).reshape(S, N, H, D // H)             # (S, N, H, Dh)
            k, v = F.linear(context, w[D:], b[D:]).reshape(S, context.shape[1], 2, H, D // H).unbind(2)
        out = attention(q, k, v)                                              # (S, N, H, Dh)
        if head_gates is not None:
            out = out * head_gates
        return self.proj(out.reshape(S, N, D))                                # (S, N, D)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, unit_gates: torch.Tensor | None = None) -> torch.Tensor:
        """`unit_gates` (broadcastable to fc1's output): hidden units times their gate before the activation
        (GELU(0) = 0: DyDiT's masked definition of partial width)."""
        hidden = self.fc1(x)
        return self.fc2(self.act(hidden if unit_gates is None else hidden * unit_gates))


class LatteBlock(nn.Module):
    """DiT block: x + gate·f(modulate(LN(x))) for attention and MLP, with shift/scale/gate regressed from the
    condition. `cond` has one row per sequence, or one row per group of consecutive sequences (a temporal block
    gets one row per sample for its N sequences: the modulation is computed once and broadcast).

    This forward is the block protocol of the density engine: with `context`, queries come from `x` and keys and
    values from `context`, both normalised and modulated by this block's norm and (shift, scale)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.grad_checkpointing = False     # recompute activations in backward instead of storing them

    def forward(self, x: torch.Tensor, cond: torch.Tensor, context: torch.Tensor | None = None, *,
                run: Callable | None = None) -> Any:
        """`run(block, x, cond, context)` replaces the block's computation (DyDiT's partial width) inside this call,
        so module hooks (FSDP's parameter gathering) and gradient checkpointing apply to it as to the dense block."""
        compute = self._forward if run is None else (lambda x, cond, context: run(self, x, cond, context))
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(compute, x, cond, context, use_reentrant=False)
        return compute(x, cond, context)

    def modulation(self, cond: torch.Tensor, sequences: int) -> tuple[torch.Tensor, ...]:
        """(shift, scale, gate) of attention, then of the MLP, each (S, 1, D), from cond (G, D) with G | S."""
        mod = self.adaLN_modulation(cond).unsqueeze(1)                        # (G, 1, 6D)
        if mod.shape[0] != sequences:
            mod = mod.repeat_interleave(sequences // mod.shape[0], dim=0)     # (S, 1, 6D)
        return mod.chunk(6, dim=-1)

    def _forward(self, x: torch.Tensor, cond: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(cond, x.shape[0])
        h = modulate(self.norm1(x), shift_msa, scale_msa)                     # (S, N, D)
        kv = None if context is None else modulate(self.norm1(context), shift_msa, scale_msa)  # (S, M, D)
        x = x + gate_msa * self.attn(h, kv)                                   # (S, N, D)
        x = x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))    # (S, N, D)
        return x


class FinalLayer(nn.Module):
    """adaLN (shift and scale, no gate) then a linear map from D to p·p·C_out per token."""

    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(cond).unsqueeze(1).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))        # (S, N, p·p·C_out)


# ----------------------------------------------------------------------------------------------------------
# The model.


@dataclass
class Frames:
    """What the blocks need to know about a batch: B samples of `video` frames plus `images` stills."""
    batch: int
    video: int
    images: int
    cond: torch.Tensor          # (B·FI, D) one condition per frame, for spatial blocks and the final layer
    sample_cond: torch.Tensor   # (B, D) one per sample, for temporal blocks
    image_input: bool           # the input was (B, C, H, W)
    t_emb: torch.Tensor         # (B, D) the timestep embedding alone (what a policy's `embedded` reads)



class Latte(LattePolicyHooks, nn.Module):
    """Latte variant 1 (interleaved spatial and temporal blocks); with `temporal=False` it is DiT. `policy`
    (`flexgen.policies`: dense by default, FlexDiT, DyDiT or both) decides what runs at each timestep; it adds its
    modules here (`fusions`, `width_routers`, `token_routers`) and drives the blocks through `walk` / `run_block`."""

    def __init__(self, config: LatteConfig, *, policy: Policy | None = None):
        super().__init__()
        self.config = c = config
        self.x_embedder = PatchEmbed(c.patch_size, c.in_channels, c.hidden_size)
        self.t_embedder = TimestepEmbedder(c.hidden_size)
        self.y_embedder = LabelEmbedder(c.num_classes, c.hidden_size) if c.num_classes else None
        self.spatial_blocks = nn.ModuleList(LatteBlock(c.hidden_size, c.num_heads, c.mlp_ratio)
                                            for _ in range(c.num_spatial))
        self.temporal_blocks = nn.ModuleList(LatteBlock(c.hidden_size, c.num_heads, c.mlp_ratio)
                                             for _ in range(c.num_temporal))
        self.final_layer = FinalLayer(c.hidden_size, c.patch_size, c.out_channels)
        # Fixed sin-cos tables: buffers, not parameters, and not saved (they follow from the config).
        self.register_buffer("pos_embed", sincos_2d(c.hidden_size, c.grid_size).float()[None], persistent=False)
        self.register_buffer("temp_embed", sincos_1d(c.hidden_size, torch.arange(c.num_frames)).float()[None],
                             persistent=False)
        self.initialize_weights()
        self.policy = Policy() if policy is None else policy
        self.policy.attach(self)

    def initialize_weights(self):
        # Xavier-uniform for every linear layer, the patch embedding treated as one (DiT).
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        # N(0, 0.02) for the timestep MLP and the label table.
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        # Zero for every adaLN output layer and the final projection: each block starts as the identity.
        for block in [*self.spatial_blocks, *self.temporal_blocks, self.final_layer]:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Gradient checkpointing of every transformer block (memory for compute in training)."""
        for block in [*self.spatial_blocks, *self.temporal_blocks]:
            block.grad_checkpointing = enabled

    # ---- input checks -----------------------------------------------------------------------------------

    def _check_inputs(self, x, t, y, num_images, y_images):
        c = self.config
        if x.ndim != 5:
            raise ValueError(f"expected x of shape (B, F, C, H, W) (or (B, C, H, W) for DiT), got {tuple(x.shape)}")
        B, FI, C, H, W = x.shape
        if (C, H, W) != (c.in_channels, c.input_size, c.input_size):
            raise ValueError(f"expected frames of shape (C, H, W) = {(c.in_channels, c.input_size, c.input_size)}, "
                             f"got {(C, H, W)} in x of shape {tuple(x.shape)}")
        if FI - num_images != c.num_frames:
            raise ValueError(f"expected {c.num_frames} video frames (+ {num_images} images), got {FI} frames")
        if t.shape != (B,):
            raise ValueError(f"expected timesteps t of shape ({B},), got {tuple(t.shape)}")
        if self.y_embedder is None:
            if y is not None or y_images is not None:
                raise ValueError("this model is unconditional (num_classes=0) but class labels were given")
            return
        if y is None or y.shape != (B,):
            raise ValueError(f"class-conditional model: expected labels y of shape ({B},), "
                             f"got {None if y is None else tuple(y.shape)}")
        for name, labels in (("y", y), ("y_images", y_images)):
            if labels is None or labels.device.type == "meta":
                continue
            if labels.min() < 0 or labels.max() > c.num_classes:
                raise ValueError(f"{name} must lie in [0, {c.num_classes}] ({c.num_classes} is the null class)")
        if y_images is not None and y_images.shape != (B, num_images):
            raise ValueError(f"expected y_images of shape ({B}, {num_images}), got {tuple(y_images.shape)}")

    # ---- forward ----------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, *, num_images: int = 0,
                y_images: torch.Tensor | None = None, **step) -> torch.Tensor:
        """x: (B, F + num_images, C, H, W) latents (or (B, C, H, W) without temporal blocks); t: (B,) diffusion
        steps; y: (B,) class labels for a class-conditional model, `num_classes` meaning "no label".
        The last `num_images` slots are still images (joint image-video training) that skip temporal blocks;
        `y_images` (B, num_images) are their labels (default: the video's label). `step`: the policy's arguments
        (FlexDiT: `grid`, `record`; DyDiT: `complete`). Returns (B, F + num_images, C_out, H, W) (or
        (B, C_out, H, W))."""
        if num_images and not self.policy.joint_images:
            raise ValueError(f"the {self.policy.label()} model does not take still images (num_images > 0) yet")
        self.policy.begin(self, t, **step)
        try:
            x, frames = self.embed(x, t, y, num_images, y_images)             # (B·FI, N, D)
            self.policy.embedded(frames.t_emb)
            x = self.policy.walk(self, x, frames)                             # (B·FI, N, D)
        finally:
            self.policy.end()
        return self.head(x, frames)

    def walk(self, x: torch.Tensor, frames: Frames) -> torch.Tensor:
        """Every spatial block on the dense tokens, each followed by its temporal block."""
        for i, block in enumerate(self.spatial_blocks):
            x = self.run_block(block, i, x, frames.cond)                      # (B·FI, N, D)
            if i < len(self.temporal_blocks):
                x = self.temporal(x, i, frames)                               # (B·FI, N, D)
        return x

    def run_block(self, block: LatteBlock, index: int, x: torch.Tensor, cond: torch.Tensor,
                  context: torch.Tensor | None = None) -> torch.Tensor:
        """Block `index` of [*spatial_blocks, *temporal_blocks] on x (S, N, D) (keys and values from `context`
        when given), through the block's module call; the policy may run part of it (DyDiT's partial width)."""
        return self.policy.run_block(self, index, lambda run: block(x, cond, context=context, run=run))

    def embed(self, x, t, y, num_images, y_images) -> tuple[torch.Tensor, Frames]:
        """Check the inputs; patch tokens with the 2-D position embedding, and the conditions."""
        image_input = x.ndim == 4 and not self.config.temporal
        if image_input:
            x = x.unsqueeze(1)                                                # (B, C, H, W) -> (B, 1, C, H, W)
        self._check_inputs(x, t, y, num_images, y_images)
        B, FI = x.shape[:2]
        tokens = self.x_embedder(x.flatten(0, 1)) + self.pos_embed            # (B·FI, N, D)
        t_emb = self.t_embedder(t)                                            # (B, D)
        cond = t_emb if self.y_embedder is None else t_emb + self.y_embedder(y)   # (B, D)
        # Spatial blocks see one condition per frame; it differs between frames only for labelled images.
        frame_cond = cond[:, None].expand(B, FI, -1)                          # (B, FI, D)
        if y_images is not None:
            image_cond = t_emb[:, None] + self.y_embedder(y_images)           # (B, num_images, D)
            frame_cond = torch.cat([frame_cond[:, :FI - num_images], image_cond], dim=1)
        frames = Frames(B, FI - num_images, num_images, frame_cond.reshape(B * FI, -1), cond, image_input, t_emb)
        return tokens, frames

    def temporal(self, x: torch.Tensor, i: int, frames: Frames) -> torch.Tensor:
        """Temporal block i over the video frames at each token position (any number of positions); still
        images pass through unchanged. The temporal position embedding is added before the first one."""
        B, Fv, (S, N, D) = frames.batch, frames.video, x.shape
        x = x.reshape(B, S // B, N, D)                                        # (B, FI, N, D)
        video, images = x[:, :Fv], x[:, Fv:]
        seq = video.transpose(1, 2).reshape(B * N, Fv, D)                     # (B·N, Fv, D)
        if i == 0:
            seq = seq + self.temp_embed
        # One modulation per sample for its N sequences (Latte recomputes it N times).
        seq = self.run_block(self.temporal_blocks[i], len(self.spatial_blocks) + i, seq,
                             frames.sample_cond)                              # (B·N, Fv, D)
        video = seq.reshape(B, N, Fv, D).transpose(1, 2)                      # (B, Fv, N, D)
        return torch.cat([video, images], dim=1).flatten(0, 1)                # (B·FI, N, D)

    def head(self, x: torch.Tensor, frames: Frames) -> torch.Tensor:
        """Final adaLN + linear, then tokens back to frames: (B·FI, N, D) -> (B, FI, C_out, H, W)."""
        p, g = self.config.patch_size, self.config.grid_size
        x = self.final_layer(x, frames.cond)                                  # (B·FI, N, p·p·C_out)
        x = x.reshape(-1, g, g, p, p, x.shape[-1] // (p * p)).permute(0, 5, 1, 3, 2, 4)  # (B·FI, C_out, g, p, g, p)
        x = x.reshape(frames.batch, -1, x.shape[1], g * p, g * p)             # (B, FI, C_out, H, W)
        return x[:, 0] if frames.image_input else x


# ----------------------------------------------------------------------------------------------------------
# Size presets (flexgen/presets.py), keyed by the papers' names.


def latte_config(name: str, **overrides) -> LatteConfig:
    """A preset by paper name (`Latte-XL/2`, `DiT-B/4`, ...) with field overrides (input_size, num_classes, ...).
    DiT presets default to one frame."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    fields = {**PRESETS[name], **({} if PRESETS[name]["temporal"] else {"num_frames": 1}), **overrides}
    return LatteConfig(**fields)
