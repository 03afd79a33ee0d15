"""Comparisons that hold on any x86 CPU.

float32 results are not bit-identical across processes, thread counts, batch shapes or CPUs: GEMMs of other shapes
sum in another order, and a 1-ulp difference now and then moves a decoded pixel across a uint8 level. Two decodes
of the same sample (same seed, same condition) therefore agree within one level on nearly every value; two samples
of different seeds differ by tens of levels almost everywhere, so the bounds below still catch a wrong seed, a wrong
index or a swapped file.
"""

import math

import torch


def assert_same_pixels(a: torch.Tensor, b: torch.Tensor, *, max_fraction: float = 0.01, what: str = "") -> None:
    """uint8 images or videos `a`, `b` of one shape are the same sample: no value differs by more than one level,
    and at most `max_fraction` of the values differ at all."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} and {tuple(b.shape)}"
    diff = (a.int() - b.int()).abs()
    changed = (diff > 0).float().mean().item()
    assert diff.max() <= 1 and changed <= max_fraction, (
        f"{what}: not the same sample (max difference {diff.max().item()} levels, {changed:.2%} of values differ)")


def assert_other_pixels(a: torch.Tensor, b: torch.Tensor, *, min_fraction: float = 0.2, what: str = "") -> None:
    """`a` and `b` are different samples: more than `min_fraction` of the values differ by more than one level."""
    far = ((torch.as_tensor(a).int() - torch.as_tensor(b).int()).abs() > 1).float().mean().item()
    assert far > min_fraction, f"{what}: only {far:.2%} of values differ by more than one level"


# Attention (test_attention, test_cuda): random (B, N, H, Dh) tensors and the textbook float64 reference.

H, DH = 2, 8
SEQLENS_Q, SEQLENS_KV = [3, 5, 2], [4, 1, 6]


def qkv(nq, nk, batch=1, dtype=torch.float32, device="cpu", seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(batch, nq, H, DH), (batch, nk, H, DH), (batch, nk, H, DH)]
    return [torch.randn(s, generator=generator, dtype=torch.float64).to(device, dtype) for s in shapes]


def reference(q, k, v, bias=None):
    """softmax(q kᵀ / sqrt(Dh) + bias) v in float64, written out per head: (B, Nq, H, Dh)."""
    q, k, v = (t.double().cpu() for t in (q, k, v))
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias.double()
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, dim=-1), v)
