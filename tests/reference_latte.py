"""An independent, literal implementation of the released Latte/DiT forward pass, written from the documented
algorithm (flat `blocks` list walked in pairs, einops rearranges, explicit QKᵀ attention, modulation repeated per
sequence), used to check `flexgen.video.latte` and the official-checkpoint key mapping.

`official_state_dict` builds a random state dict with the released key layout and shapes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat


def mae_sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def mae_sincos_2d(dim: int, grid_size: int) -> np.ndarray:
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0)          # MAE: w first
    return np.concatenate([mae_sincos_1d(dim // 2, grid[0]), mae_sincos_1d(dim // 2, grid[1])], axis=1)


def official_state_dict(cfg, seed: int = 0, std: float = 0.2, dtype=torch.float64) -> dict[str, torch.Tensor]:
    """Random weights in the released layout: flat `blocks.{i}`, frozen `pos_embed` / `temp_embed` included."""
    g = torch.Generator().manual_seed(seed)
    D, C, p = cfg.hidden_size, cfg.in_channels, cfg.patch_size
    hidden = int(D * cfg.mlp_ratio)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype) * std

    sd = {
        "pos_embed": torch.from_numpy(mae_sincos_2d(D, cfg.grid_size)).float().to(dtype)[None],   # float32 on disk
        "x_embedder.proj.weight": rnd(D, C, p, p), "x_embedder.proj.bias": rnd(D),
        "t_embedder.mlp.0.weight": rnd(D, 256), "t_embedder.mlp.0.bias": rnd(D),
        "t_embedder.mlp.2.weight": rnd(D, D), "t_embedder.mlp.2.bias": rnd(D),
        "final_layer.linear.weight": rnd(p * p * cfg.out_channels, D),
        "final_layer.linear.bias": rnd(p * p * cfg.out_channels),
        "final_layer.adaLN_modulation.1.weight": rnd(2 * D, D), "final_layer.adaLN_modulation.1.bias": rnd(2 * D),
    }
    if cfg.temporal:
        sd["temp_embed"] = torch.from_numpy(mae_sincos_1d(D, np.arange(cfg.num_frames))).float().to(dtype)[None]
    if cfg.num_classes:
        sd["y_embedder.embedding_table.weight"] = rnd(cfg.num_classes + 1, D)
    for i in range(cfg.depth):
        for name, shape in (("attn.qkv", (3 * D, D)), ("attn.proj", (D, D)), ("mlp.fc1", (hidden, D)),
                            ("mlp.fc2", (D, hidden)), ("adaLN_modulation.1", (6 * D, D))):
            sd[f"blocks.{i}.{name}.weight"] = rnd(*shape) / math.sqrt(shape[1]) * 4
            sd[f"blocks.{i}.{name}.bias"] = rnd(shape[0])
    return sd


def _linear(x, sd, name):
    return F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"])


def _block(sd, i, x, c, heads):
    D = x.shape[-1]
    mod = _linear(F.silu(c), sd, f"blocks.{i}.adaLN_modulation.1")[:, None]         # (S, 1, 6D)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)
    h = F.layer_norm(x, (D,), eps=1e-6) * (1 + scale_msa) + shift_msa
    q, k, v = rearrange(_linear(h, sd, f"blocks.{i}.attn.qkv"), "s n (three h d) -> three s h n d", three=3, h=heads)
    a = (q @ k.transpose(-2, -1) * (D // heads) ** -0.5).softmax(-1) @ v
    x = x + gate_msa * _linear(rearrange(a, "s h n d -> s n (h d)"), sd, f"blocks.{i}.attn.proj")
    h = F.layer_norm(x, (D,), eps=1e-6) * (1 + scale_mlp) + shift_mlp
    h = _linear(F.gelu(_linear(h, sd, f"blocks.{i}.mlp.fc1"), approximate="tanh"), sd, f"blocks.{i}.mlp.fc2")
    return x + gate_mlp * h


def reference_forward(sd, cfg, x, t, y=None):
    """x: (B, F, C, H, W) (Latte) or (B, C, H, W) (DiT); the released model's computation, step by step."""
    image = x.ndim == 4
    if image:
        x = x[:, None]
    B, Fr = x.shape[:2]
    p, heads = cfg.patch_size, cfg.num_heads
    tok = F.conv2d(rearrange(x, "b f c h w -> (b f) c h w"), sd["x_embedder.proj.weight"],
                   sd["x_embedder.proj.bias"], stride=p)
    tok = rearrange(tok, "n d h w -> n (h w) d") + sd["pos_embed"]
    N = tok.shape[1]
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half)
    args = t.double()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(tok.dtype)
    c = _linear(F.silu(_linear(emb, sd, "t_embedder.mlp.0")), sd, "t_embedder.mlp.2")
    if y is not None:
        c = c + sd["y_embedder.embedding_table.weight"][y]
    c_spatial = repeat(c, "n d -> (n f) d", f=Fr)
    c_temporal = repeat(c, "n d -> (n t) d", t=N)
    if cfg.temporal:
        for i in range(0, cfg.depth, 2):
            tok = _block(sd, i, tok, c_spatial, heads)
            tok = rearrange(tok, "(b f) t d -> (b t) f d", b=B)
            if i == 0:
                tok = tok + sd["temp_embed"]
            tok = _block(sd, i + 1, tok, c_temporal, heads)
            tok = rearrange(tok, "(b t) f d -> (b f) t d", b=B)
    else:
        for i in range(cfg.depth):
            tok = _block(sd, i, tok, c_spatial, heads)
    shift, scale = _linear(F.silu(c_spatial), sd, "final_layer.adaLN_modulation.1")[:, None].chunk(2, dim=-1)
    tok = _linear(F.layer_norm(tok, (tok.shape[-1],), eps=1e-6) * (1 + scale) + shift, sd, "final_layer.linear")
    g = cfg.grid_size
    tok = tok.reshape(tok.shape[0], g, g, p, p, -1)
    out = torch.einsum("nhwpqc->nchpwq", tok).reshape(tok.shape[0], -1, g * p, g * p)
    out = rearrange(out, "(b f) c h w -> b f c h w", b=B)
    return out[:, 0] if image else out
