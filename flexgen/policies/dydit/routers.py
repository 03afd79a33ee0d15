"""DyDiT's routers (Zhao et al. 2024, arXiv 2410.03456; the released `DyDiT/models.py`): which heads and MLP groups
of a block run at a timestep (timestep-wise dynamic width, TDW) and which tokens run the block's MLP
(spatial-wise dynamic tokens, SDT). `flexgen.video.dy_latte.DyLatte` puts both in every block.

- `gumbel_sigmoid`: training draws hard 0/1 gates with a straight-through gradient, sigmoid((logit + L) / τ) > 1/2
  with L ~ Logistic(0, 1) (the difference of two Gumbel(0, 1) draws), so a gate is on with probability
  sigmoid(logit) whatever τ; evaluation is the noiseless hard gate sigmoid(logit) > 1/2 in the logits' dtype, as
  the release computes it (not logit > 0: for 0 < logit < ~6e-8 float32's sigmoid rounds to exactly 1/2, off).
- `WidthRouter`: one linear layer on the timestep embedding only (so masks are a function of t, shared by both CFG
  halves and every class), H − 1 logits for heads 1 … H−1 and as many for MLP groups; unit 0 is always on.
- `TokenRouter`: D → D/16 → ReLU → 1 on each token of the residual stream.
Both start with every unit on (a large output bias: the reference uses 15 for width, 35 for tokens).
"""

from __future__ import annotations

import torch
from torch import nn

TAU = 5.0             # DyDiT's fixed temperature (never annealed in the released code)
WIDTH_BIAS = 15.0     # router output bias at initialisation: P(off) = sigmoid(-15) ≈ 3e-7
TOKEN_BIAS = 35.0


def gumbel_sigmoid(logits: torch.Tensor, training: bool, tau: float = TAU,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Hard gates in {0, 1} of `logits`' shape and dtype; in training with the straight-through gradient of
    sigmoid((logits + L) / tau), L ~ Logistic(0, 1) drawn from `generator` (default: the global RNG)."""
    if not training:
        return (torch.sigmoid(logits) > 0.5).to(logits.dtype)
    device = logits.device if generator is None else generator.device
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64, device=device)
    u = u.clamp(1e-12, 1 - 1e-12).to(logits.device)
    noise = (torch.log(u) - torch.log1p(-u)).to(logits.dtype)                # Logistic(0, 1) = G1 - G2
    soft = torch.sigmoid((logits + noise) / tau)
    hard = (soft > 0.5).to(logits.dtype)
    # DyDiT `_gumbel_sigmoid(hard=True)`: the forward value is hard, the gradient the soft one's
    return hard - soft.detach() + soft


class WidthRouter(nn.Module):
    """Per block: head and MLP-group gates from the timestep embedding. (B, D) -> two (B, H) gates, unit 0 on."""

    def __init__(self, dim: int, num_heads: int, num_groups: int | None = None):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}")
        self.num_heads, self.num_groups = num_heads, num_heads if num_groups is None else num_groups
        self.heads = nn.Linear(dim, self.num_heads - 1)                      # DyDiT `attn_rate.router`
        self.groups = nn.Linear(dim, self.num_groups - 1)                    # DyDiT `mlp_rate.router`
        for layer in (self.heads, self.groups):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.constant_(layer.bias, WIDTH_BIAS)

    def logits(self, t_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H - 1) head logits and (B, G - 1) group logits of the timestep embedding (B, D)."""
        return self.heads(t_emb), self.groups(t_emb)

    def forward(self, t_emb: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H) head gates and (B, G) group gates in {0, 1}; column 0 is the always-on unit."""
        gates = []
        for logits in self.logits(t_emb):
            on = torch.ones(*logits.shape[:-1], 1, dtype=logits.dtype, device=logits.device)
            gates.append(torch.cat([on, gumbel_sigmoid(logits, self.training, generator=generator)], dim=-1))
        return gates[0], gates[1]


class TokenRouter(nn.Module):
    """Per block: which tokens run the MLP, from the residual stream after the attention update.
    (..., N, D) -> (..., N) gates in {0, 1}."""

    def __init__(self, dim: int, reduction: int = 16):
        super().__init__()
        self.hidden = max(1, dim // reduction)
        self.mlp = nn.Sequential(nn.Linear(dim, self.hidden), nn.ReLU(),
                                 nn.Linear(self.hidden, 1))                  # DyDiT `token_selection.mlp_head`
        nn.init.constant_(self.mlp[2].bias, TOKEN_BIAS)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x).squeeze(-1)                                        # (..., N)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return gumbel_sigmoid(self.logits(x), self.training, generator=generator)
