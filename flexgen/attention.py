"""One attention entry point for every backbone: `attention(q, k, v, ...)`.

Layout is (B, N, H, Dh) for queries, keys and values (xformers' layout; SDPA wants heads first, so the
transposes happen here, once). Query and key lengths may differ (cross-attention).

Two backends compute the same softmax(q kᵀ / sqrt(Dh)) v:

- "xformers": `xformers.ops.memory_efficient_attention`, used where it imports and its CUDA kernel runs on the
  tensors' device (probed once per device with a tiny call). It has no CPU kernels.
- "sdpa": `torch.nn.functional.scaled_dot_product_attention`, which runs everywhere (CPU, CUDA, meta).

Packed variable-length token sets (B = 1, `seqlens_q` / `seqlens_kv`) are block-diagonal: query segment i attends
only to key segment i. xformers takes a `BlockDiagonalMask` as its attention bias. SDPA gets no mask: segments with
the same (query length, key length) are gathered into one batch and each such group is one SDPA call, so the work
is Σ lq·lk (not Nq·Nk as a dense mask would cost), no Nq×Nk mask is ever allocated, and the fused CUDA kernels,
which do not take boolean masks, stay usable. The results are exact (no masked -inf entries, no padding).

The backend is chosen per call: `backend=` if given, else the process-wide choice (`set_backend`, initialised
once from the environment variable FLEXGEN_ATTENTION = xformers | sdpa | auto), else automatically per device
(`default_backend`). `last_backend()` and `backend_counts()` say what ran.
"""

from __future__ import annotations

import itertools
import logging
import operator
import os
from collections import Counter
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from xformers.ops.fmha.attn_bias import BlockDiagonalMask

logger = logging.getLogger(__name__)

BACKENDS = ("xformers", "sdpa")             # in order of preference for automatic selection
ENV_VAR = "FLEXGEN_ATTENTION"
XFORMERS_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ----------------------------------------------------------------------------------------------------------------
# Errors.


class BackendUnavailableError(RuntimeError):
    """A backend was requested (by argument, `set_backend` or FLEXGEN_ATTENTION) that cannot run these tensors."""


# ----------------------------------------------------------------------------------------------------------------
# Process-wide state: the forced backend, the lazily imported xformers, per-device probes, call records.

_UNSET = object()


class _State:
    forced: object = _UNSET                     # _UNSET until FLEXGEN_ATTENTION is read; then None or a name
    xformers: ModuleType | None = None          # `xformers.ops` once imported
    xformers_import_error: str | None = None
    xformers_extension_error: str | None = None     # why its compiled kernels did not load, if they did not
    xformers_imported = False                   # the import was attempted (successfully or not)
    probes: dict[int, str | None] = {}          # CUDA device index -> None (kernels work) or why they do not
    counts: Counter[str] = Counter()            # calls per backend since reset_backend_counts()
    last: str | None = None                     # backend of the most recent call
    fallbacks_logged: set[tuple] = set()        # auto-mode xformers -> sdpa fallbacks already logged


# ----------------------------------------------------------------------------------------------------------------
# Process-wide backend choice: `set_backend`, seeded once from FLEXGEN_ATTENTION on first use.


def parse_backend_setting(value: str | None, source: str = ENV_VAR) -> str | None:
    """'xformers' | 'sdpa' -> that name; 'auto', '' or None -> None (automatic). Anything else is a ValueError."""
    if value is None:
        return None
    name = value.strip().lower()
    if name in ("", "auto"):
        return None
    if name not in BACKENDS:
        raise ValueError(f"{source}={value!r} is not an attention backend; expected one of "
                         f"{', '.join(BACKENDS)} or auto")
    return name


def forced_backend() -> str | None:
    """The process-wide backend choice (None: automatic per device). Reads FLEXGEN_ATTENTION on first use."""
    if _State.forced is _UNSET:
        _State.forced = parse_backend_setting(os.environ.get(ENV_VAR))
    return _State.forced  # type: ignore[return-value]


def set_backend(name: str | None) -> None:
    """Force every `attention` call without `backend=` onto `name` ('xformers' | 'sdpa'); None or 'auto' undo it."""
    _State.forced = parse_backend_setting(name, source="set_backend")


# ----------------------------------------------------------------------------------------------------------------
# Lazy xformers: imported at most once, without its import-time warning; each CUDA device probed at most once.


def _import_xformers() -> ModuleType | None:
    """`xformers.ops`, or None (the reason is kept in `_State.xformers_import_error`)."""
    if _State.xformers_imported:
        return _State.xformers
    _State.xformers_imported = True
    # xformers logs a multi-line warning at import when its compiled extensions do not match this torch; the
    # per-device probe reports that reason (in every error that needs it) instead of printing it here.
    xformers_logger = logging.getLogger("xformers")
    level = xformers_logger.level
    xformers_logger.setLevel(logging.ERROR)
    try:
        import xformers.ops as xops
        from xformers import _cpp_lib
    except ImportError as err:
        _State.xformers_import_error = f"xformers is not importable ({err})"
        return None
    finally:
        xformers_logger.setLevel(level)
    _State.xformers = xops
    load_error = getattr(_cpp_lib, "_cpp_library_load_exception", None)
    if load_error is not None:
        _State.xformers_extension_error = " ".join(str(load_error).split())
        logger.info("xformers imported without its C++/CUDA extensions: %s", load_error)
    return xops


def _probe_xformers(xops: ModuleType, device: torch.device) -> str | None:
    """Run memory_efficient_attention once (plain and block-diagonal) on `device`; None if it matches SDPA."""
    from xformers.ops.fmha.attn_bias import BlockDiagonalMask

    try:
        generator = torch.Generator(device=device).manual_seed(0)
        q, k, v = torch.randn(3, 1, 16, 2, 64, device=device, dtype=torch.float16, generator=generator)
        bias = BlockDiagonalMask.from_seqlens([5, 11])
        plain = xops.memory_efficient_attention(q, k, v)
        packed = xops.memory_efficient_attention(q, k, v, attn_bias=bias)
        torch.cuda.synchronize(device)
    except Exception as err:        # any failure (no kernel, bad build, launch error) means "cannot run here"
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if _State.xformers_extension_error:
            detail += f" ({_State.xformers_extension_error})"
        return f"xformers' memory-efficient CUDA kernel does not run on {device}: {detail}"
    reference = _sdpa(q, k, v)
    reference_packed = _sdpa_packed(q, k, v, [5, 11], [5, 11])
    if not (torch.allclose(plain, reference, atol=1e-2) and torch.allclose(packed, reference_packed, atol=1e-2)):
        return f"xformers' memory-efficient CUDA kernel on {device} disagrees with SDPA on a probe call"
    return None


def _xformers_unavailable(device: torch.device, dtype: torch.dtype | None = None) -> str | None:
    """Why xformers cannot run tensors of `dtype` on `device`, or None if it can."""
    if device.type != "cuda":
        return (f"xformers has no {device.type.upper()} kernels: memory_efficient_attention runs on CUDA tensors "
                f"only (got {device.type} tensors)")
    if dtype is not None and dtype not in XFORMERS_DTYPES:
        return f"xformers' memory-efficient kernels take float16, bfloat16 or float32, not {dtype}"
    xops = _import_xformers()
    if xops is None:
        return _State.xformers_import_error
    ordinal = device.index if device.index is not None else torch.cuda.current_device()
    if ordinal not in _State.probes:
        _State.probes[ordinal] = _probe_xformers(xops, torch.device("cuda", ordinal))
        if _State.probes[ordinal] is not None:
            logger.info("%s; attention uses sdpa there", _State.probes[ordinal])
    return _State.probes[ordinal]


# ----------------------------------------------------------------------------------------------------------------
# Backend selection.


def available_backends(device: torch.device | str) -> list[str]:
    """Backends that can run on `device`, most preferred first ('sdpa' always; 'xformers' where its kernels work)."""
    device = torch.device(device)
    return [name for name in BACKENDS if name == "sdpa" or _xformers_unavailable(device) is None]


def default_backend(device: torch.device | str) -> str:
    """The backend `attention(..., backend=None)` uses on `device`: the forced one if any, else the best available."""
    return forced_backend() or available_backends(device)[0]


def _check_runnable(name: str, device: torch.device, dtype: torch.dtype, requested_by: str) -> None:
    """Raise BackendUnavailableError if an explicitly requested backend cannot run these tensors."""
    if name == "xformers":
        reason = _xformers_unavailable(device, dtype)
        if reason is not None:
            raise BackendUnavailableError(f"attention backend 'xformers' ({requested_by}) cannot run: {reason}")


# ----------------------------------------------------------------------------------------------------------------
# Reporting: which backend the calls used.

def _record(name: str) -> None:
    if torch.compiler.is_compiling():           # a traced counter would be a guard: a recompile on every call
        return
    _State.last = name
    _State.counts[name] += 1


def last_backend() -> str | None:
    """The backend that ran the most recent `attention` call (None before any call or after a reset)."""
    return _State.last


def backend_counts() -> dict[str, int]:
    """Calls per backend since the last `reset_backend_counts()`."""
    return dict(_State.counts)


def reset_backend_counts() -> None:
    """Zero `backend_counts()` and forget `last_backend()`."""
    _State.counts.clear()
    _State.last = None


# ----------------------------------------------------------------------------------------------------------------
# Argument checks.


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """q (B, Nq, H, Dh), k and v (B, Nk, H, Dh)."""
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention expects (B, N, H, Dh) tensors; got {shapes}")
    if k.shape != v.shape:
        raise ValueError(f"attention expects k and v of the same shape (B, Nk, H, Dh); got {shapes}")
    for axis, what in ((0, "batch size B"), (2, "head count H"), (3, "head dim Dh")):
        if q.shape[axis] != k.shape[axis]:
            raise ValueError(f"attention expects q and k/v with the same {what}; got {shapes}")


def _check_seqlens(seqlens: Sequence[int], n: int, name: str) -> list[int]:
    """Positive integer lengths summing to the packed token count n."""
    if isinstance(seqlens, (str, bytes, torch.Tensor)) or not isinstance(seqlens, Sequence):
        raise TypeError(f"{name} must be a list of ints, got {type(seqlens).__name__}")
    if any(isinstance(s, bool) for s in seqlens):
        raise TypeError(f"{name} must be a list of ints, got {list(seqlens)!r}")
    try:
        lengths = [operator.index(s) for s in seqlens]
    except TypeError as err:
        raise TypeError(f"{name} must be a list of ints, got {list(seqlens)!r}") from err
    if not lengths or min(lengths) < 1:
        raise ValueError(f"{name} must be a non-empty list of positive ints, got {list(seqlens)!r}")
    if sum(lengths) != n:
        raise ValueError(f"{name} sums to {sum(lengths)} but the packed tensor has {n} tokens")
    return lengths


# ----------------------------------------------------------------------------------------------------------------
# SDPA: dense, and packed by grouping segments of equal shape into batches.


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(G, Nq, H, Dh), (G, Nk, H, Dh) x2 -> (G, Nq, H, Dh)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _segment_rows(starts: list[int], length: int, device: torch.device) -> torch.Tensor:
    """Token indices of the segments starting at `starts`, each `length` long: (G * length,)."""
    offsets = torch.tensor(starts, device=device).unsqueeze(1)
    return (offsets + torch.arange(length, device=device)).reshape(-1)


def _sdpa_packed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seqlens_q: list[int],
                 seqlens_kv: list[int]) -> torch.Tensor:
    """Block-diagonal attention of (1, ΣLq, H, Dh) against (1, ΣLk, H, Dh): one SDPA call per (Lq, Lk) shape."""
    _, Nq, H, Dh = q.shape
    starts_q = list(itertools.accumulate(seqlens_q, initial=0))
    starts_kv = list(itertools.accumulate(seqlens_kv, initial=0))
    groups: dict[tuple[int, int], list[int]] = {}
    for i, shape in enumerate(zip(seqlens_q, seqlens_kv, strict=True)):
        groups.setdefault(shape, []).append(i)

    if len(groups) == 1:            # equal segments: the packed tensors are already a batch, as views
        (lq, lk), members = next(iter(groups.items()))
        G = len(members)
        out = _sdpa(q.reshape(G, lq, H, Dh), k.reshape(G, lk, H, Dh), v.reshape(G, lk, H, Dh))
        return out.reshape(1, Nq, H, Dh)

    rows, outs = [], []
    for (lq, lk), members in groups.items():
        G = len(members)
        rows_q = _segment_rows([starts_q[i] for i in members], lq, q.device)
        rows_kv = _segment_rows([starts_kv[i] for i in members], lk, k.device)
        out = _sdpa(q[0, rows_q].reshape(G, lq, H, Dh), k[0, rows_kv].reshape(G, lk, H, Dh),
                    v[0, rows_kv].reshape(G, lk, H, Dh))                         # (G, lq, H, Dh)
        rows.append(rows_q)
        outs.append(out.reshape(G * lq, H, Dh))
    order = torch.argsort(torch.cat(rows))                                      # grouped order -> token order
    return torch.cat(outs)[order].unsqueeze(0)                                  # (1, Nq, H, Dh)


# ----------------------------------------------------------------------------------------------------------------
# xformers: dense, and packed with a BlockDiagonalMask bias.


def block_diagonal_bias(seqlens_q: Sequence[int], seqlens_kv: Sequence[int] | None = None) -> BlockDiagonalMask:
    """xformers' `BlockDiagonalMask` for packed segments (pure Python: builds on any machine with xformers)."""
    if _import_xformers() is None:
        raise BackendUnavailableError(f"cannot build a BlockDiagonalMask: {_State.xformers_import_error}")
    from xformers.ops.fmha.attn_bias import BlockDiagonalMask

    return BlockDiagonalMask.from_seqlens(list(seqlens_q), None if seqlens_kv is None else list(seqlens_kv))


def _xformers_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seqlens_q: list[int] | None,
                        seqlens_kv: list[int] | None) -> torch.Tensor:
    """memory_efficient_attention in the shared (B, N, H, Dh) layout."""
    xops = _import_xformers()
    if xops is None:
        raise BackendUnavailableError(f"attention backend 'xformers' cannot run: {_State.xformers_import_error}")
    bias = None if seqlens_q is None else block_diagonal_bias(seqlens_q, seqlens_kv)
    return xops.memory_efficient_attention(q, k, v, attn_bias=bias)


# ----------------------------------------------------------------------------------------------------------------
# The entry point.


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, seqlens_q: Sequence[int] | None = None,
              seqlens_kv: Sequence[int] | None = None, backend: str | None = None) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(Dh)) v per head: (B, Nq, H, Dh), (B, Nk, H, Dh), (B, Nk, H, Dh) -> (B, Nq, H, Dh).

    seqlens_q / seqlens_kv: packed variable-length sets (B must be 1): query tokens of segment i (lengths in
    seqlens_q, in order) attend only to key tokens of segment i (seqlens_kv; defaults to seqlens_q).
    backend: 'xformers' | 'sdpa' | 'auto' / None (the process-wide choice, see `default_backend`). An explicitly
    requested backend that cannot run these tensors raises BackendUnavailableError.
    """
    _check_shapes(q, k, v)
    if seqlens_q is None and seqlens_kv is not None:
        raise ValueError("attention: seqlens_kv was given without seqlens_q")
    if seqlens_q is not None:
        if q.shape[0] != 1:
            raise ValueError(f"attention: packed sequences (seqlens_q) need batch size 1, got q {tuple(q.shape)}")
        seqlens_q = _check_seqlens(seqlens_q, q.shape[1], "seqlens_q")
        seqlens_kv = seqlens_q if seqlens_kv is None else _check_seqlens(seqlens_kv, k.shape[1], "seqlens_kv")
        if seqlens_kv is seqlens_q and k.shape[1] != q.shape[1]:
            raise ValueError(f"attention: seqlens_kv defaults to seqlens_q, which sums to {q.shape[1]}, but k has "
                             f"{k.shape[1]} tokens; pass seqlens_kv")
        if len(seqlens_kv) != len(seqlens_q):
            raise ValueError(f"attention: seqlens_q has {len(seqlens_q)} segments but seqlens_kv has "
                             f"{len(seqlens_kv)}; segment i of the queries attends to segment i of the keys")

    requested = parse_backend_setting(backend, source="backend")
    requested_by = "backend argument"
    if requested is None:
        requested, requested_by = forced_backend(), f"set_backend / {ENV_VAR}"
    if requested is not None:
        _check_runnable(requested, q.device, q.dtype, requested_by)
        name = requested
    else:
        name = "xformers" if _xformers_unavailable(q.device, q.dtype) is None else "sdpa"

    if name == "xformers":
        try:
            out = _xformers_attention(q, k, v, seqlens_q, seqlens_kv)
        except NotImplementedError as err:      # no xformers kernel for this shape (e.g. head dim) or layout
            if requested is not None:
                raise BackendUnavailableError(f"attention backend 'xformers' ({requested_by}) has no kernel for "
                                              f"these inputs: {err}") from err
            key = (q.dtype, q.shape[-1], seqlens_q is not None, q.requires_grad)
            if key not in _State.fallbacks_logged:
                _State.fallbacks_logged.add(key)
                logger.warning("xformers has no kernel for %s, Dh=%d%s; using sdpa for such calls",
                               q.dtype, q.shape[-1], " (packed)" if seqlens_q is not None else "")
            name = "sdpa"
        else:
            _record(name)
            return out

    out = _sdpa(q, k, v) if seqlens_q is None else _sdpa_packed(q, k, v, seqlens_q, seqlens_kv)
    _record(name)
    return out


def attention_with_key_bias(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """`flexgen.attention` of q (B, N, H, Dh) on k, v (B, L, H, Dh). With diffusers' additive key bias (B, 1, L) or
    (B, L) (0 keeps a key, -10000 drops it) each sample's kept keys are packed, block-diagonally."""
    if attention_mask is None:
        return attention(q, k, v)
    B, N = q.shape[:2]
    keep = attention_mask.reshape(B, -1) > -1                                         # (B, L)
    lengths = keep.sum(dim=1).tolist()
    if min(lengths) < 1:
        raise ValueError("a sample's attention mask drops every key (an empty caption mask)")
    return attention(q.reshape(1, B * N, *q.shape[2:]), k[keep][None], v[keep][None],
                     seqlens_q=[N] * B, seqlens_kv=lengths).reshape(B, N, *q.shape[2:])
