"""An independent, literal implementation of the FlexDiT forward pass (arXiv 2412.06028; notes
`reference/flexdit.md` §1 and the pseudocode of §1.4), on DiT and on Latte, used to check
`flexgen.video.flex_latte`. It uses no flexgen model code.

It reads a state dict in the *released* dense key layout (flat `blocks.{i}`; for Latte `blocks[2i]` is spatial
block i and `blocks[2i+1]` its temporal block, see `tests/reference_latte.official_state_dict`) plus the recovery
fusion weights, passed explicitly as one `(W1, b1, W2, b2)` per dense-recovery block: W1 acts on the upsampled
sparse tokens, W2 on the dense tokens that entered the SDTM.

Roles, one letter per spatial block (spaces ignored): P Poolingformer, G sparse generation, S sparse, R dense
recovery, D dense, T top. The blocks are computed as the released FlexDiT code does:

- P: no Q or K; the value slice of qkv on all N tokens, then an explicit softmax(ones(N, N)) @ V per head, then
  the output projection on all N tokens.
- G: X_s = adaptive average pool of the dense H×W grid to s×s; queries from mod(LN(X_s)), keys/values from
  mod(LN(X_d)) with the same shift/scale; q = qkv[:D], kv = qkv[D:]; residual base X_s.
- R: X_merged = W1·nearest_upsample(X_s) + b1 + W2·X_d + b2; queries from mod(LN(X_merged)), keys/values from
  mod(LN(X_s)); residual base X_merged.
- S, D, T: ordinary DiT blocks on their token set.

Latte: spatial block i is followed by temporal block i, which runs over the frames at the token positions the
spatial block output (sparse positions inside an SDTM). The temporal sin-cos embedding is added before the first
temporal block; temporal modulation is one condition per sample. With `pool_frames = n` (cross-frame pooling)
the F frames are pooled to n sparse frames of F/n consecutive frames each: a sparse frame reads the dense tokens
of its F/n frames, and each dense frame reads the sparse tokens of its sparse frame at recovery.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat

Fusion = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]   # W1, b1 (sparse), W2, b2 (dense)


def _linear(x, sd, name):
    return F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"])


def _norm_mod(x, shift, scale):
    return F.layer_norm(x, (x.shape[-1],), eps=1e-6) * (1 + scale) + shift


def _modulation(sd, i, c):
    """adaLN-Zero of block i: (shift, scale, gate) for attention and for the MLP, each (S, 1, D)."""
    return _linear(F.silu(c), sd, f"blocks.{i}.adaLN_modulation.1")[:, None].chunk(6, dim=-1)


def _attend(q, k, v, heads):
    """Explicit multi-head softmax(Q Kᵀ / √d) V: (S, Nq, D), (S, Nk, D), (S, Nk, D) -> (S, Nq, D)."""
    q, k, v = (rearrange(z, "s n (h d) -> s h n d", h=heads) for z in (q, k, v))
    a = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1) @ v
    return rearrange(a, "s h n d -> s n (h d)")


def _q_kv(sd, i, h_q, h_kv):
    """The pretrained qkv sliced: queries from h_q with qkv[:D], keys and values from h_kv with qkv[D:]."""
    w, b = sd[f"blocks.{i}.attn.qkv.weight"], sd[f"blocks.{i}.attn.qkv.bias"]
    D = w.shape[1]
    k, v = F.linear(h_kv, w[D:], b[D:]).chunk(2, dim=-1)
    return F.linear(h_q, w[:D], b[:D]), k, v


def _mlp_residual(sd, i, x, shift, scale, gate):
    h = _linear(F.gelu(_linear(_norm_mod(x, shift, scale), sd, f"blocks.{i}.mlp.fc1"), approximate="tanh"),
                sd, f"blocks.{i}.mlp.fc2")
    return x + gate * h


# ----------------------------------------------------------------------------------------------------------
# The blocks. x: (S, N, D) sequences; c: (S, D), one condition per sequence.


def dit_block(sd, i, x, c, heads):
    """Ordinary DiT block (S, D, T roles and temporal blocks): self-attention + MLP, adaLN-Zero."""
    shift1, scale1, gate1, shift2, scale2, gate2 = _modulation(sd, i, c)
    h = _norm_mod(x, shift1, scale1)
    q, k, v = _linear(h, sd, f"blocks.{i}.attn.qkv").chunk(3, dim=-1)
    x = x + gate1 * _linear(_attend(q, k, v, heads), sd, f"blocks.{i}.attn.proj")
    return _mlp_residual(sd, i, x, shift2, scale2, gate2)


def poolingformer_block(sd, i, x, c, heads):
    """Poolingformer as released: V on all N tokens, softmax(ones(N, N)) @ V per head, projection on all N."""
    shift1, scale1, gate1, shift2, scale2, gate2 = _modulation(sd, i, c)
    N, D = x.shape[1:]
    w, b = sd[f"blocks.{i}.attn.qkv.weight"], sd[f"blocks.{i}.attn.qkv.bias"]
    v = rearrange(F.linear(_norm_mod(x, shift1, scale1), w[2 * D:], b[2 * D:]), "s n (h d) -> s h n d", h=heads)
    attn = torch.ones(N, N, dtype=x.dtype).softmax(dim=-1)                   # 1/N everywhere
    out = rearrange(attn @ v, "s h n d -> s n (h d)")
    x = x + gate1 * _linear(out, sd, f"blocks.{i}.attn.proj")
    return _mlp_residual(sd, i, x, shift2, scale2, gate2)


def sparse_generation_block(sd, i, xs, xd, c, heads):
    """Sparse queries read the dense tokens: xs (S, M, D) queries, xd (S, N', D) keys/values."""
    shift1, scale1, gate1, shift2, scale2, gate2 = _modulation(sd, i, c)
    q, k, v = _q_kv(sd, i, _norm_mod(xs, shift1, scale1), _norm_mod(xd, shift1, scale1))
    xs = xs + gate1 * _linear(_attend(q, k, v, heads), sd, f"blocks.{i}.attn.proj")
    return _mlp_residual(sd, i, xs, shift2, scale2, gate2)


def dense_recovery_block(sd, i, xs_up, xs, xd, fusion: Fusion, c, heads):
    """X_merged = W1·up(X_s) + b1 + W2·X_d + b2; merged queries read the sparse tokens xs (S, M, D)."""
    w1, b1, w2, b2 = fusion
    merged = F.linear(xs_up, w1, b1) + F.linear(xd, w2, b2)                  # (S, N, D)
    shift1, scale1, gate1, shift2, scale2, gate2 = _modulation(sd, i, c)
    q, k, v = _q_kv(sd, i, _norm_mod(merged, shift1, scale1), _norm_mod(xs, shift1, scale1))
    x = merged + gate1 * _linear(_attend(q, k, v, heads), sd, f"blocks.{i}.attn.proj")
    return _mlp_residual(sd, i, x, shift2, scale2, gate2)


# ----------------------------------------------------------------------------------------------------------
# Dense <-> sparse token sets. Dense tokens: (B·F, H·W, D); sparse tokens: (B·n, s·s, D); g = F / n.


def pool_tokens(x, batch, grid_side, s, n):
    """Adaptive average pool of each frame's H×W grid to s×s, then the mean over each group of F/n frames."""
    pooled = F.adaptive_avg_pool2d(rearrange(x, "bf (h w) d -> bf d h w", h=grid_side), s)   # (B·F, D, s, s)
    return reduce(pooled, "(b n g) d h w -> (b n) (h w) d", "mean", b=batch, n=n)


def unpool_tokens(xs, batch, grid_side, s, frames):
    """Nearest upsampling of each sparse frame's s×s grid to H×W, repeated for each of its F/n frames."""
    up = F.interpolate(rearrange(xs, "bn (h w) d -> bn d h w", h=s), size=(grid_side, grid_side), mode="nearest")
    return repeat(up, "(b n) d h w -> (b n g) (h w) d", b=batch, g=frames // (xs.shape[0] // batch))


# ----------------------------------------------------------------------------------------------------------
# The model.


def _condition(sd, t, y, dtype):
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half)
    args = t.double()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(dtype)
    c = _linear(F.silu(_linear(emb, sd, "t_embedder.mlp.0")), sd, "t_embedder.mlp.2")
    if y is not None:
        c = c + sd["y_embedder.embedding_table.weight"][y]
    return c                                                                  # (B, D)


def reference_flex_forward(sd, cfg, roles: str, x, t, y=None, *, grid: int, fusions: list[Fusion],
                           pool_frames: int = 0):
    """FlexDiT forward of a DiT (x: (B, C, H, W)) or Latte (x: (B, F, C, H, W)) with sparse grid side `grid`.

    roles: one letter per spatial block; fusions: one (W1, b1, W2, b2) per R, bottom to top; pool_frames: 0 pools
    each frame on its own, n > 0 pools the F frames to n sparse frames."""
    roles = roles.replace(" ", "")
    image = x.ndim == 4
    if image:
        x = x[:, None]
    B, Fr = x.shape[:2]
    p, heads, side = cfg.patch_size, cfg.num_heads, cfg.grid_size
    n = pool_frames or Fr                                                     # sparse frames

    # Patch embedding + 2-D position embedding; condition c = t_emb + y_emb.
    tok = F.conv2d(rearrange(x, "b f c h w -> (b f) c h w"), sd["x_embedder.proj.weight"],
                   sd["x_embedder.proj.bias"], stride=p)
    tok = rearrange(tok, "bf d h w -> bf (h w) d") + sd["pos_embed"]          # (B·F, N, D)
    c = _condition(sd, t, y, tok.dtype)

    def per_sequence(num):                                                    # one copy of c per sequence
        return repeat(c, "b d -> (b k) d", k=num)

    fusion_iter = iter(fusions)
    for k, role in enumerate(roles):
        i = 2 * k if cfg.temporal else k                                      # released block index
        if role == "P":
            tok = poolingformer_block(sd, i, tok, per_sequence(Fr), heads)
        elif role == "G":
            dense = tok                                                       # the SDTM's dense skip X_d
            xs = pool_tokens(dense, B, side, grid, n)                         # (B·n, s², D)
            context = rearrange(dense, "(bn g) t d -> bn (g t) d", bn=B * n)  # dense tokens of its frames
            tok = sparse_generation_block(sd, i, xs, context, per_sequence(n), heads)
        elif role == "S":
            tok = dit_block(sd, i, tok, per_sequence(n), heads)
        elif role == "R":
            up = unpool_tokens(tok, B, side, grid, Fr)                        # (B·F, N, D)
            context = repeat(tok, "(b n) t d -> (b n g) t d", b=B, g=Fr // n)  # sparse tokens of its sparse frame
            tok = dense_recovery_block(sd, i, up, context, dense, next(fusion_iter), per_sequence(Fr), heads)
        else:                                                                 # D, T
            tok = dit_block(sd, i, tok, per_sequence(Fr), heads)
        if cfg.temporal:
            positions = tok.shape[1]
            seq = rearrange(tok, "(b f) t d -> (b t) f d", b=B)               # over frames at each position
            if k == 0:
                seq = seq + sd["temp_embed"]
            seq = dit_block(sd, i + 1, seq, per_sequence(positions), heads)
            tok = rearrange(seq, "(b t) f d -> (b f) t d", b=B)

    # Final layer (adaLN shift/scale, linear) and unpatchify.
    shift, scale = _linear(F.silu(per_sequence(Fr)), sd, "final_layer.adaLN_modulation.1")[:, None].chunk(2, dim=-1)
    out = _linear(_norm_mod(tok, shift, scale), sd, "final_layer.linear")     # (B·F, N, p·p·C_out)
    out = rearrange(out, "(b f) (h w) (p q c) -> b f c (h p) (w q)", b=B, h=side, p=p, q=p)
    return out[:, 0] if image else out
