"""DyDiT's width machinery that holds for any family's block (Zhao et al. 2024, arXiv 2410.03456, Sec. 3.2): heads
and equal groups of MLP hidden units are the units of width; `unit_importance` ranks them (value path × output
projection magnitude, our criterion: the paper's hooks are not released); a width mask is one 0/1 vector per sampler
step (a function of t alone), so the skipping forward takes each block's active slices once per distinct pattern
(`SliceCache`: views where the active units are one contiguous run, a bounded number of copies otherwise) and runs
the MLP on the kept tokens only (`packed_tokens`). Each family's block adapter (`flexgen.video.latte_width`,
`flexgen.t2i.pixart_width`) builds its block at partial width from these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


def head_rows(dim: int, num_heads: int, order: torch.Tensor) -> torch.Tensor:
    """Row indices of a (dim, ·) weight whose rows are num_heads consecutive head slices, heads in `order`."""
    head_dim = dim // num_heads
    return (order[:, None] * head_dim + torch.arange(head_dim, device=order.device)).reshape(-1)



@torch.no_grad()
def unit_importance(in_weight: torch.Tensor, in_bias: torch.Tensor | None, out_weight: torch.Tensor,
                    num_units: int) -> torch.Tensor:
    """(num_units,) float64: ‖W_in[u] | b_in[u]‖_F · ‖W_out[:, u]‖_F for units of equal consecutive rows of
    `in_weight` (U·R, D) and columns of `out_weight` (D', U·R): a head (value rows, output-projection columns) or
    an MLP group (fc1 rows, fc2 columns)."""
    rows = in_weight if in_bias is None else torch.cat([in_weight, in_bias[:, None]], dim=1)
    if rows.shape[0] % num_units:
        raise ValueError(f"{rows.shape[0]} rows do not split into {num_units} equal units")
    rows = rows.double().reshape(num_units, -1)
    cols = out_weight.double().reshape(out_weight.shape[0], num_units, -1).transpose(0, 1).flatten(1)
    return rows.norm(dim=1) * cols.norm(dim=1)



def _active(mask: torch.Tensor) -> torch.Tensor:
    if mask.ndim != 1:
        raise ValueError(f"a width mask is one (units,) 0/1 vector shared by the batch, got shape {tuple(mask.shape)}")
    return mask.nonzero().squeeze(1).cpu()



def take_units(weight: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """`weight`'s entries `index` (ascending) along `dim`: a view when they are one contiguous run (the first k
    heads or groups: the synthetic routers, and what importance ordering favours), else a copy."""
    n = index.numel()
    if n and int(index[-1]) - int(index[0]) == n - 1:                      # ascending and unique: one run
        return weight.narrow(dim, int(index[0]), n)
    return weight.index_select(dim, index.to(weight.device))



def _held_bytes(value: Any, shared: set[int]) -> int:
    """Bytes of the tensors in `value` (nested tuples) whose storage is not one of `shared` (views cost none)."""
    if isinstance(value, torch.Tensor):
        return 0 if value.untyped_storage().data_ptr() in shared else value.nbytes
    return sum(_held_bytes(v, shared) for v in value) if isinstance(value, (tuple, list)) else 0



class SliceCache:
    """Slices of one block's weights per distinct (head, group) mask pattern. Where every active set is one
    contiguous run the slices are views of the weights and cost no memory; other patterns (a trained router's) are
    copies, and at most `max_copies` of those are held (least recently used dropped): a sampler walks t in order,
    so consecutive steps share a pattern and a copy is made once per change. `patterns` counts the distinct
    patterns used, `hits` the lookups served from the cache, `nbytes` the bytes held beside the weights.
    `weights()` lists the tensors the slices come from: the cache is dropped when any of them changes (loaded,
    trained, moved or cast), so a slice is never stale. `take(head_index, group_index, num_groups)` makes the
    slices of the active units."""

    def __init__(self, weights: Callable[[], Sequence[torch.Tensor]],
                 take: Callable[[torch.Tensor, torch.Tensor, int], Any], max_copies: int = 1) -> None:
        self._weights, self._take = weights, take
        self._cache: dict[tuple, Any] = {}                  # key -> slices, least recently used first
        self._copied: dict[tuple, int] = {}                 # key -> bytes it holds beside the weights (same order)
        self._seen: set[tuple] = set()
        self._weights_seen: tuple = ()
        self.hits = 0
        self.max_copies = max_copies

    @property
    def max_copies(self) -> int:
        return self._max_copies

    @max_copies.setter
    def max_copies(self, value: int) -> None:
        """Lowering it drops the least recently used copies at once."""
        self._max_copies = value
        self._evict(keep=value)

    def _evict(self, keep: int) -> None:
        while self._copied and len(self._copied) > max(keep, 0):
            oldest = next(iter(self._copied))
            del self._copied[oldest], self._cache[oldest]

    @property
    def patterns(self) -> int:
        return len(self._seen)

    @property
    def nbytes(self) -> int:
        """Bytes the cached slices hold beside the weights (memory a skipping forward keeps)."""
        return sum(self._copied.values())

    def get(self, heads: torch.Tensor, groups: torch.Tensor) -> Any:
        """The slices for 0/1 masks heads (H,) and groups (G,)."""
        head_index, group_index = _active(heads), _active(groups)
        key = (tuple(head_index.tolist()), tuple(group_index.tolist()))
        weights = tuple((w.data_ptr(), w._version, w.dtype) for w in self._weights())
        if weights != self._weights_seen:
            self._cache.clear()
            self._copied.clear()
            self._seen.clear()
            self._weights_seen = weights
        self._seen.add(key)
        if key in self._cache:
            self.hits += 1
            self._cache[key] = self._cache.pop(key)         # most recently used last
            if key in self._copied:
                self._copied[key] = self._copied.pop(key)
            return self._cache[key]
        with torch.no_grad():
            slices = self._take(head_index, group_index, len(groups))
        held = _held_bytes(slices, {w.untyped_storage().data_ptr() for w in self._weights()})
        if held:
            self._evict(keep=self.max_copies - 1)
            if self.max_copies < 1:
                return slices
            self._copied[key] = held
        self._cache[key] = slices
        return slices



def packed_tokens(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """`fn` (a per-token map D -> D) on the kept tokens only (gathered over the whole batch, no padding: each sample
    keeps its own count), scattered back into zeros; no call when no token is kept. x (..., N, D), tokens (..., N)
    0/1."""
    flat = x.reshape(-1, x.shape[-1])                                         # (S·N, D)
    index = tokens.reshape(-1).nonzero().squeeze(1)                           # (M,)
    if index.numel() == flat.shape[0]:                                        # every token kept: no gather
        return fn(x)
    out = torch.zeros_like(flat)
    if index.numel():
        out[index] = fn(flat[index])                                          # (M, D) -> rows of (S·N, D)
    return out.reshape(x.shape)
