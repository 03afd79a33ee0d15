"""Tests for flexgen.attention: results against an explicit float64 softmax reference, block-diagonal packing
against per-segment calls and xformers' own mask, backend selection / forcing / reporting, and (where a CUDA
device runs xformers' kernels) xformers against SDPA.
"""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch

from flexgen import attention as attn
from flexgen.attention import (
    BackendUnavailableError,
    attention,
    available_backends,
    backend_counts,
    block_diagonal_bias,
    default_backend,
    forced_backend,
    last_backend,
    parse_backend_setting,
    reset_backend_counts,
    set_backend,
)
from tests.helpers import DH, SEQLENS_KV, SEQLENS_Q, H, qkv, reference

# ----------------------------------------------------------------------------------------------------------------
# Helpers: packed attention the slow way and block masks (q, k, v and the reference: tests/helpers.py).


@pytest.fixture(autouse=True)
def automatic_backend(monkeypatch):
    """Every test starts in automatic mode; whatever it forces is undone afterwards."""
    monkeypatch.setattr(attn._State, "forced", None)


def per_segment(q, k, v, seqlens_q, seqlens_kv, **kwargs):
    """Packed attention computed the slow way: one unpacked call per segment, concatenated."""
    outs, sq, sk = [], 0, 0
    for lq, lk in zip(seqlens_q, seqlens_kv, strict=True):
        outs.append(attention(q[:, sq:sq + lq], k[:, sk:sk + lk], v[:, sk:sk + lk], **kwargs))
        sq, sk = sq + lq, sk + lk
    return torch.cat(outs, dim=1)


def block_mask(seqlens_q, seqlens_kv):
    """Boolean (ΣLq, ΣLk) mask, True where query segment i meets key segment i."""
    segment_q = torch.repeat_interleave(torch.arange(len(seqlens_q)), torch.tensor(seqlens_q))
    segment_kv = torch.repeat_interleave(torch.arange(len(seqlens_kv)), torch.tensor(seqlens_kv))
    return segment_q[:, None] == segment_kv[None, :]


# ----------------------------------------------------------------------------------------------------------------
# Dense attention (SDPA on the CPU) against the reference.


@pytest.mark.parametrize("nq,nk,batch", [(7, 7, 2), (5, 11, 3), (9, 1, 1)])
def test_sdpa_matches_float64_reference(nq, nk, batch):
    q, k, v = qkv(nq, nk, batch)
    out = attention(q, k, v)                                    # positional, as existing callers use it
    assert out.shape == (batch, nq, H, DH) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference(q, k, v), atol=1e-5, rtol=1e-5)
    q, k, v = qkv(nq, nk, batch, dtype=torch.float64)
    torch.testing.assert_close(attention(q, k, v, backend="sdpa"), reference(q, k, v), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("shapes,what", [
    (((1, 4, H, DH), (2, 4, H, DH), (2, 4, H, DH)), "batch size"),
    (((1, 4, H, DH), (1, 4, H + 1, DH), (1, 4, H + 1, DH)), "head count"),
    (((1, 4, H, DH), (1, 4, H, DH + 1), (1, 4, H, DH + 1)), "head dim"),
    (((1, 4, H, DH), (1, 4, H, DH), (1, 5, H, DH)), "k and v of the same shape"),
    (((4, H, DH), (4, H, DH), (4, H, DH)), r"\(B, N, H, Dh\)"),
])
def test_shape_mismatches_are_clear_errors(shapes, what):
    q, k, v = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=what):
        attention(q, k, v)


# ----------------------------------------------------------------------------------------------------------------
# Block-diagonal packing.


@pytest.mark.parametrize("seqlens_q,seqlens_kv", [
    (SEQLENS_Q, SEQLENS_KV),                                    # cross: different lengths per segment
    (SEQLENS_Q, None),                                          # self: seqlens_kv defaults to seqlens_q
    ([2, 3, 2, 3, 4], [5, 1, 5, 1, 2]),                         # repeated shapes: grouped into batched calls
    ([4, 4, 4], [3, 3, 3]),                                     # all equal: one call on views
    ([6], [5]),                                                 # one segment is plain attention
])
def test_packed_equals_per_segment_and_reference(seqlens_q, seqlens_kv):
    kv_lengths = seqlens_q if seqlens_kv is None else seqlens_kv
    q, k, v = qkv(sum(seqlens_q), sum(kv_lengths))
    out = attention(q, k, v, seqlens_q=seqlens_q, seqlens_kv=seqlens_kv)
    assert out.shape == q.shape
    torch.testing.assert_close(out, per_segment(q, k, v, seqlens_q, kv_lengths), atol=1e-6, rtol=1e-6)
    bias = torch.zeros(block_mask(seqlens_q, kv_lengths).shape).masked_fill(~block_mask(seqlens_q, kv_lengths),
                                                                            -math.inf)
    torch.testing.assert_close(out.double(), reference(q, k, v, bias), atol=1e-5, rtol=1e-5)


def test_packed_gradients_equal_per_segment_gradients():
    leaves = [t.requires_grad_() for t in qkv(sum(SEQLENS_Q), sum(SEQLENS_KV))]
    weights = torch.randn(1, sum(SEQLENS_Q), H, DH, generator=torch.Generator().manual_seed(1))
    packed = torch.autograd.grad((attention(*leaves, seqlens_q=SEQLENS_Q, seqlens_kv=SEQLENS_KV) * weights).sum(),
                                 leaves)
    looped = torch.autograd.grad((per_segment(*leaves, SEQLENS_Q, SEQLENS_KV) * weights).sum(), leaves)
    for a, b in zip(packed, looped, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_xformers_block_diagonal_mask_is_the_packing_we_compute():
    if importlib.util.find_spec("xformers") is None:
        pytest.skip("xformers is not installed")
    nq, nk = sum(SEQLENS_Q), sum(SEQLENS_KV)
    bias = block_diagonal_bias(SEQLENS_Q, SEQLENS_KV).materialize((nq, nk))          # 0 / -inf, (ΣLq, ΣLk)
    assert torch.equal(bias == 0, block_mask(SEQLENS_Q, SEQLENS_KV))
    assert torch.equal(block_diagonal_bias(SEQLENS_Q).materialize((nq, nq)) == 0, block_mask(SEQLENS_Q, SEQLENS_Q))
    q, k, v = qkv(nq, nk)
    out = attention(q, k, v, seqlens_q=SEQLENS_Q, seqlens_kv=SEQLENS_KV)
    torch.testing.assert_close(out.double(), reference(q, k, v, bias), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch,nq,nk,kwargs,error,match", [
    (1, 10, 11, dict(seqlens_q=[3, 5, 1], seqlens_kv=SEQLENS_KV), ValueError, "seqlens_q sums to 9 but .* 10"),
    (1, 10, 11, dict(seqlens_q=SEQLENS_Q, seqlens_kv=[4, 1, 7]), ValueError, "seqlens_kv sums to 12 but .* 11"),
    (2, 10, 11, dict(seqlens_q=SEQLENS_Q, seqlens_kv=SEQLENS_KV), ValueError, "batch size 1"),
    (1, 10, 11, dict(seqlens_q=SEQLENS_Q, seqlens_kv=[5, 6]), ValueError, "3 segments but seqlens_kv has 2"),
    (1, 10, 11, dict(seqlens_q=SEQLENS_Q), ValueError, "pass seqlens_kv"),
    (1, 10, 11, dict(seqlens_kv=SEQLENS_KV), ValueError, "without seqlens_q"),
    (1, 10, 10, dict(seqlens_q=[3, 0, 7]), ValueError, "positive ints"),
    (1, 10, 10, dict(seqlens_q=[]), ValueError, "non-empty"),
    (1, 10, 10, dict(seqlens_q=[3.0, 7.0]), TypeError, "list of ints"),
    (1, 10, 10, dict(seqlens_q=torch.tensor([3, 7])), TypeError, "list of ints"),
])
def test_bad_seqlens_are_clear_errors(batch, nq, nk, kwargs, error, match):
    q, k, v = qkv(nq, nk, batch)
    with pytest.raises(error, match=match):
        attention(q, k, v, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Backend selection, forcing, the environment variable and reporting (CPU: SDPA is the only backend).


def test_cpu_and_meta_default_to_sdpa():
    assert available_backends("cpu") == ["sdpa"] and default_backend("cpu") == "sdpa"
    assert available_backends(torch.device("meta")) == ["sdpa"]
    q, k, v = (t.to("meta") for t in qkv(4, 6))
    assert attention(q, k, v).shape == (1, 4, H, DH) and last_backend() == "sdpa"


def test_xformers_on_cpu_tensors_is_a_clear_error():
    q, k, v = qkv(4, 4)
    with pytest.raises(BackendUnavailableError, match="no CPU kernels.*CUDA tensors only"):
        attention(q, k, v, backend="xformers")
    with pytest.raises(BackendUnavailableError, match="no CPU kernels"):
        attention(q, k, v, seqlens_q=[1, 3], backend="xformers")


def test_set_backend_forces_every_call_until_undone():
    q, k, v = qkv(4, 4)
    set_backend("xformers")
    assert forced_backend() == "xformers" and default_backend("cpu") == "xformers"
    with pytest.raises(BackendUnavailableError, match="set_backend / FLEXGEN_ATTENTION.*no CPU kernels"):
        attention(q, k, v)
    assert attention(q, k, v, backend="sdpa").shape == q.shape                 # an explicit argument wins
    set_backend("auto")
    assert forced_backend() is None and attention(q, k, v).shape == q.shape
    set_backend("sdpa")
    assert default_backend("cpu") == "sdpa"
    set_backend(None)
    assert forced_backend() is None


def test_invalid_backend_names_are_clear_errors():
    q, k, v = qkv(4, 4)
    with pytest.raises(ValueError, match="set_backend='flash' is not an attention backend"):
        set_backend("flash")
    with pytest.raises(ValueError, match="backend='cudnn' is not an attention backend.*xformers, sdpa or auto"):
        attention(q, k, v, backend="cudnn")


def test_environment_setting_is_parsed():
    assert parse_backend_setting("xformers") == "xformers"
    assert parse_backend_setting(" SDPA\n") == "sdpa"
    assert parse_backend_setting("auto") is None
    assert parse_backend_setting("") is None and parse_backend_setting(None) is None
    with pytest.raises(ValueError, match="FLEXGEN_ATTENTION='flash-attn' is not an attention backend"):
        parse_backend_setting("flash-attn")


def test_environment_variable_is_read_once_on_first_use(monkeypatch):
    monkeypatch.setattr(attn._State, "forced", attn._UNSET)
    monkeypatch.setenv("FLEXGEN_ATTENTION", "sdpa")
    assert forced_backend() == "sdpa"
    monkeypatch.setenv("FLEXGEN_ATTENTION", "xformers")                      # later changes are not re-read
    assert forced_backend() == "sdpa"
    monkeypatch.setattr(attn._State, "forced", attn._UNSET)
    monkeypatch.setenv("FLEXGEN_ATTENTION", "bogus")
    with pytest.raises(ValueError, match="FLEXGEN_ATTENTION='bogus'"):
        attention(*qkv(4, 4))


def test_reporting_counts_calls_per_backend():
    reset_backend_counts()
    assert last_backend() is None and backend_counts() == {}
    q, k, v = qkv(10, 11)
    attention(q, k, v)
    attention(q, k, v, seqlens_q=SEQLENS_Q, seqlens_kv=SEQLENS_KV)
    assert last_backend() == "sdpa" and backend_counts() == {"sdpa": 2}
    reset_backend_counts()
    assert last_backend() is None and backend_counts() == {}


def test_missing_xformers_is_reported_not_raised(monkeypatch):
    monkeypatch.setattr(attn._State, "xformers_imported", False)
    monkeypatch.setattr(attn._State, "xformers", None)
    monkeypatch.setattr(attn._State, "xformers_import_error", None)
    monkeypatch.setitem(sys.modules, "xformers.ops", None)                   # makes `import xformers.ops` fail
    assert attn._import_xformers() is None
    reason = attn._xformers_unavailable(torch.device("cuda", 0), torch.float16)
    assert reason is not None and reason.startswith("xformers is not importable")
    with pytest.raises(BackendUnavailableError, match="BlockDiagonalMask: xformers is not importable"):
        block_diagonal_bias([1, 2])


# ----------------------------------------------------------------------------------------------------------------
# CUDA: SDPA on the GPU always; xformers against SDPA where its kernels run.

HAS_CUDA = torch.cuda.is_available()
HAS_XFORMERS_CUDA = HAS_CUDA and "xformers" in available_backends("cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_sdpa_matches_reference_dense_and_packed():
    q, k, v = qkv(sum(SEQLENS_Q), sum(SEQLENS_KV), device="cuda")
    torch.testing.assert_close(attention(q, k, v, backend="sdpa").double().cpu(), reference(q, k, v),
                               atol=1e-4, rtol=1e-4)
    packed = attention(q, k, v, seqlens_q=SEQLENS_Q, seqlens_kv=SEQLENS_KV, backend="sdpa")
    torch.testing.assert_close(packed, per_segment(q, k, v, SEQLENS_Q, SEQLENS_KV, backend="sdpa"),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_XFORMERS_CUDA, reason="needs a CUDA device on which xformers' kernels run")
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2), (torch.float32, 1e-4)])
@pytest.mark.parametrize("seqlens_q,seqlens_kv", [(None, None), (SEQLENS_Q, SEQLENS_KV), ([4, 4, 4], None)])
def test_xformers_matches_sdpa_on_cuda(dtype, tol, seqlens_q, seqlens_kv):
    nq = sum(seqlens_q) if seqlens_q else 12
    nk = sum(seqlens_kv or seqlens_q) if seqlens_q else 7
    q, k, v = qkv(nq, nk, device="cuda", dtype=dtype)
    kwargs = dict(seqlens_q=seqlens_q, seqlens_kv=seqlens_kv)
    fast = attention(q, k, v, backend="xformers", **kwargs)
    assert last_backend() == "xformers"
    torch.testing.assert_close(fast, attention(q, k, v, backend="sdpa", **kwargs), atol=tol, rtol=tol)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_XFORMERS_CUDA, reason="needs a CUDA device on which xformers' kernels run")
def test_cuda_defaults_to_xformers_and_falls_back_for_float64():
    assert default_backend("cuda") == "xformers"
    attention(*qkv(5, 6, device="cuda", dtype=torch.float16))
    assert last_backend() == "xformers"
    attention(*qkv(5, 6, device="cuda", dtype=torch.float64))              # no xformers kernel: sdpa, not an error
    assert last_backend() == "sdpa"
    with pytest.raises(BackendUnavailableError, match="float64"):
        attention(*qkv(5, 6, device="cuda", dtype=torch.float64), backend="xformers")
