"""Structured width of a transformer block: its attention heads and equal groups of its MLP hidden units, the units
DyDiT's timestep-wise dynamic width turns on and off (Zhao et al. 2024, arXiv 2410.03456, Sec. 3.2).

DyDiT keeps head 0 and MLP group 0 always on, so before fine-tuning the units are put in order of importance: the
most important first (the paper's "importance ordering"; its hooks are absent from the released code, so the
criterion is ours):

- head h: ‖W_v[h]‖_F · ‖W_proj[:, h]‖_F (with the value bias in W_v[h]). Queries and keys only decide how a head
  mixes its values (the softmax weights sum to 1); the size of what the head adds to the residual is set by its
  value rows and its columns of the output projection.
- MLP group g (hidden units g·G … (g+1)·G − 1): ‖W_fc1[g]‖_F · ‖W_fc2[:, g]‖_F (with the fc1 bias in W_fc1[g]).

`reorder_block` permutes heads (the q, k and v rows of each head together, and the matching proj columns) and
groups (fc1 rows and bias, fc2 columns; units keep their order inside a group) into that order. It changes no
function: attention and the MLP are sums over heads and hidden units (tests/test_width.py, float64, 1e-12).
Blocks follow the layout of `flexgen.video.latte.LatteBlock` (timm's fused qkv; a Poolingformer has `attn.v`).
"""

from __future__ import annotations

import torch
from torch import nn


def _head_rows(dim: int, num_heads: int, order: torch.Tensor) -> torch.Tensor:
    """Row indices of a (dim, ·) weight whose rows are num_heads consecutive head slices, heads in `order`."""
    head_dim = dim // num_heads
    return (order[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


def _value_rows(attn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the value projection: the last third of the fused qkv, or a Poolingformer's `v`."""
    if attn.qkv is None:
        return attn.v.weight, attn.v.bias
    dim = attn.proj.in_features
    return attn.qkv.weight[2 * dim:], attn.qkv.bias[2 * dim:]


@torch.no_grad()
def head_importance(attn: nn.Module) -> torch.Tensor:
    """(num_heads,) float64: ‖W_v[h] | b_v[h]‖_F · ‖W_proj[:, h]‖_F for each head h."""
    H, dim = attn.num_heads, attn.proj.in_features
    weight, bias = _value_rows(attn)
    value = torch.cat([weight, bias[:, None]], dim=1).double().reshape(H, dim // H, -1)   # (H, Dh, D + 1)
    proj = attn.proj.weight.double().reshape(-1, H, dim // H)                             # (D, H, Dh)
    return value.flatten(1).norm(dim=1) * proj.transpose(0, 1).flatten(1).norm(dim=1)


@torch.no_grad()
def group_importance(mlp: nn.Module, num_groups: int) -> torch.Tensor:
    """(num_groups,) float64: ‖W_fc1[g] | b_fc1[g]‖_F · ‖W_fc2[:, g]‖_F for each group g of hidden units."""
    hidden = mlp.fc1.out_features
    if hidden % num_groups:
        raise ValueError(f"the MLP's {hidden} hidden units do not split into {num_groups} equal groups")
    fc1 = torch.cat([mlp.fc1.weight, mlp.fc1.bias[:, None]], dim=1).double().reshape(num_groups, -1)
    fc2 = mlp.fc2.weight.double().reshape(-1, num_groups, hidden // num_groups).transpose(0, 1).flatten(1)
    return fc1.norm(dim=1) * fc2.norm(dim=1)


@torch.no_grad()
def reorder_block(block: nn.Module, num_groups: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Permute `block`'s heads and MLP groups (num_groups defaults to the number of heads, as DyDiT) in place into
    descending importance. Returns (head order, group order): new unit i is old unit order[i]."""
    attn, mlp = block.attn, block.mlp
    H, dim = attn.num_heads, attn.proj.in_features
    groups = H if num_groups is None else num_groups
    heads = torch.argsort(head_importance(attn), descending=True, stable=True)
    group_order = torch.argsort(group_importance(mlp, groups), descending=True, stable=True)

    rows = _head_rows(dim, H, heads)                                          # (D,) new -> old feature index
    if attn.qkv is None:
        attn.v.weight.copy_(attn.v.weight[rows])
        attn.v.bias.copy_(attn.v.bias[rows])
    else:
        qkv_rows = torch.cat([rows + i * dim for i in range(3)])              # q, k, v blocks alike
        attn.qkv.weight.copy_(attn.qkv.weight[qkv_rows])
        attn.qkv.bias.copy_(attn.qkv.bias[qkv_rows])
    attn.proj.weight.copy_(attn.proj.weight[:, rows])

    units = _head_rows(mlp.fc1.out_features, groups, group_order)             # (hidden,) new -> old unit
    mlp.fc1.weight.copy_(mlp.fc1.weight[units])
    mlp.fc1.bias.copy_(mlp.fc1.bias[units])
    mlp.fc2.weight.copy_(mlp.fc2.weight[:, units])
    return heads, group_order
