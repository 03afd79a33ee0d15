"""Structured width (flexgen.policies.dydit.width): the importance criterion and the function-preserving reordering of
heads and MLP groups that DyDiT's conversion needs (head 0 and group 0 always on must be the most important)."""

import pytest
import torch

from flexgen.config import load_config
from flexgen.registry import build_denoiser
from flexgen.video.latte_width import group_importance, head_importance, reorder_block

TINY = "configs/demo/tiny.yaml"


def randomised(overrides):
    """A tiny model in float64 with every parameter random (adaLN-Zero would otherwise make blocks identities)."""
    torch.manual_seed(0)
    model = build_denoiser(load_config(TINY, overrides)).double().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.2)
    return model


def blocks(model):
    net = model.net
    return [*net.spatial_blocks, *getattr(net, "temporal_blocks", [])]


@pytest.mark.parametrize("name,overrides", [
    ("Latte", []),
    ("DiT", ["model.preset=DiT-S/2", "model.depth=4"]),
    ("FlexLatte", ["density.layout=P GSR T", "density.schedule.grid_min=2", "density.schedule.grid_max=4"]),
])
def test_reordering_preserves_the_function_and_sorts_the_units(name, overrides):
    model = randomised(overrides)
    shape = model.latent_shape()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, *shape, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 2, 4])                                               # 4: the null class
    steps = [torch.full((3,), t) for t in (10, 500, 990)]                     # one grid per forward (FlexDiT)
    with torch.no_grad():
        before = [model(x, t, y=y) for t in steps]
        moved = 0
        for block in blocks(model):
            heads, groups = reorder_block(block)
            moved += int((heads != torch.arange(len(heads))).sum() + (groups != torch.arange(len(groups))).sum())
            h, m = head_importance(block.attn), group_importance(block.mlp, block.attn.num_heads)
            assert torch.all(h[:-1] >= h[1:]) and torch.all(m[:-1] >= m[1:])          # most important first
        after = [model(x, t, y=y) for t in steps]
    assert moved > 0                                                          # the test permuted something
    for a, b in zip(after, before, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    if name == "FlexLatte":                                                   # a Poolingformer block was reordered
        assert any(block.attn.qkv is None for block in blocks(model))


def test_importance_is_the_magnitude_of_each_units_path():
    model = randomised([])
    block = blocks(model)[0]
    attn, mlp = block.attn, block.mlp
    D, H = attn.proj.in_features, attn.num_heads
    Dh = D // H
    with torch.no_grad():
        attn.proj.weight[:, 2 * Dh:3 * Dh] *= 10                              # head 2's output columns
        mlp.fc2.weight[:, : mlp.fc1.out_features // H] = 0                    # group 0 writes nothing
    h, m = head_importance(attn), group_importance(mlp, H)
    assert int(h.argmax()) == 2 and float(m[0]) == 0.0
    heads, groups = reorder_block(block)
    assert int(heads[0]) == 2 and int(groups[-1]) == 0
    with pytest.raises(ValueError, match="equal groups"):
        group_importance(mlp, 7)


# ----------------------------------------------------------------------------------------------------------------
# Skipping computes the masked definition.

from flexgen.video.latte_width import (  # noqa: E402
    SlicedWeights,
    masked_attention,
    masked_mlp,
    packed_tokens_mlp,
    sliced_attention,
    sliced_mlp,
)


def test_sliced_heads_groups_and_packed_tokens_equal_the_masked_definition():
    model = randomised([])
    block = blocks(model)[0]
    H = block.attn.num_heads
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 16, block.attn.proj.in_features, generator=g, dtype=torch.float64)   # (S, N, D)
    cache = SlicedWeights(block)
    patterns = [torch.tensor([1, 0, 1, 0]), torch.tensor([1, 1, 1, 1]), torch.tensor([1, 0, 0, 0])]
    assert len(patterns[0]) == H
    with torch.no_grad():
        for step in range(6):                                                 # six steps, three patterns
            heads = patterns[step % 3]
            groups = patterns[(step + 1) % 3]
            sliced = cache.get(heads, groups)
            torch.testing.assert_close(sliced_attention(block.attn, x, sliced),
                                       masked_attention(block.attn, x, heads), rtol=0, atol=1e-10)
            torch.testing.assert_close(sliced_mlp(block.mlp, x, sliced), masked_mlp(block.mlp, x, groups),
                                       rtol=0, atol=1e-10)
            # tokens: a different number kept per sample (one sample keeps none); skipped tokens get zeros
            tokens = (torch.rand(6, 16, generator=g) < 0.4).double()
            tokens[2] = 0
            expected = masked_mlp(block.mlp, x, groups) * tokens[..., None]
            torch.testing.assert_close(packed_tokens_mlp(block.mlp, x, tokens, sliced), expected, rtol=0, atol=1e-10)
        # all heads on: the plain attention
        torch.testing.assert_close(masked_attention(block.attn, x, patterns[1]), block.attn(x), rtol=0, atol=1e-12)
    # three patterns used; pattern 1 (heads all on, groups a prefix) is views, kept and hit; patterns 0 and 2
    # have a non-prefix set, so they are copies, and only the latest copy is held (max_copies = 1)
    assert cache.patterns == 3 and cache.hits == 1
    dim = block.attn.proj.in_features
    held = cache.get(patterns[2], patterns[0])          # the last step's (heads a prefix, groups [0, 2]): held
    assert cache.hits == 2 and cache.nbytes == sum(t.nbytes for t in held[4:])
    assert held.qkv_weight.untyped_storage().data_ptr() == block.attn.qkv.weight.untyped_storage().data_ptr()
    # skipping does less work: a quarter of the heads is a quarter of each of q, k and v's rows
    assert held.qkv_weight.shape == (3, dim // H, dim)
    prefix = cache.get(torch.tensor([1, 1, 0, 0]), torch.tensor([1, 1, 1, 0]))   # prefixes: views, no bytes held
    assert cache.nbytes == sum(t.nbytes for t in held[4:])
    first = cache.get(patterns[0], patterns[1])         # evicted by the later copy: taken again, replaces it
    assert cache.hits == 2 and cache.nbytes == sum(t.nbytes for t in first[1:4])
    # more room: least recently used is dropped (a hit refreshes a copy), and lowering the limit drops at once
    scattered = [(torch.tensor([1, 0, 1, 0]), torch.tensor([1, 0, 0, 1])), (torch.tensor([1, 0, 0, 1]),
                 torch.tensor([1, 0, 1, 0])), (torch.tensor([1, 1, 0, 1]), torch.tensor([1, 1, 0, 1]))]
    cache.max_copies = 2
    a, b, c = (cache.get(*p) for p in scattered[:2] + scattered[:1])            # A, B, then A again: a hit
    assert c is a and cache.hits == 3
    cache.get(*scattered[2])                                                   # C drops B, not A
    assert cache.get(*scattered[0]) is a and cache.hits == 4
    cache.max_copies = 1                                                       # keeps A, the latest used
    assert cache.nbytes == sum(t.nbytes for t in a[1:])
    assert all(t.untyped_storage().data_ptr() in {p.untyped_storage().data_ptr() for p in block.parameters()}
               for t in prefix[1:])
    with torch.no_grad():
        torch.testing.assert_close(sliced_attention(block.attn, x, prefix),
                                   masked_attention(block.attn, x, torch.tensor([1, 1, 0, 0])), rtol=0, atol=1e-10)
        torch.testing.assert_close(sliced_mlp(block.mlp, x, prefix),
                                   masked_mlp(block.mlp, x, torch.tensor([1, 1, 1, 0])), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="shared by the batch"):
        cache.get(torch.ones(2, H), patterns[1])
    # weights changed after slicing (loaded, trained): the slices are taken again, never stale
    with torch.no_grad():
        block.mlp.fc1.weight.mul_(2)
        block.attn.qkv.weight.mul_(2)
    sliced = cache.get(patterns[0], patterns[0])
    assert cache.patterns == 1
    torch.testing.assert_close(sliced_attention(block.attn, x, sliced),
                               masked_attention(block.attn, x, patterns[0]), rtol=0, atol=1e-10)
    torch.testing.assert_close(sliced_mlp(block.mlp, x, sliced), masked_mlp(block.mlp, x, patterns[0]),
                               rtol=0, atol=1e-10)


def test_a_block_at_partial_width():
    from flexgen.policies.dydit.routers import TokenRouter
    from flexgen.video.latte_width import run_block

    model = randomised([])
    block = blocks(model)[0]
    H, D = block.attn.num_heads, block.attn.proj.in_features
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 16, D, generator=g, dtype=torch.float64)
    cond = torch.randn(3, D, generator=g, dtype=torch.float64)               # one row per 2 sequences
    torch.manual_seed(5)
    router = TokenRouter(D).double().eval()                                  # bias 35: every token on
    on = torch.ones(H)
    with torch.no_grad():
        dense = block(x, cond)
        for sliced in (None, SlicedWeights(block)):                          # all on: the dense block exactly
            out, tokens = run_block(block, x, cond, on, on, router, sliced=sliced)
            torch.testing.assert_close(out, dense, rtol=0, atol=1e-12)
            assert bool((tokens == 1).all())
        router.mlp[2].bias.zero_()                                           # now some tokens are off
        heads, groups = torch.tensor([1, 0, 1, 1]), torch.tensor([1, 1, 0, 0])
        masked, tokens = run_block(block, x, cond, heads, groups, router)
        skipped, tokens2 = run_block(block, x, cond, heads, groups, router, sliced=SlicedWeights(block))
        assert torch.equal(tokens, tokens2) and 0 < float(tokens.mean()) < 1
        assert len(set(tokens.sum(dim=1).tolist())) > 1                      # kept counts differ per sequence
        torch.testing.assert_close(skipped, masked, rtol=0, atol=1e-10)
        assert not torch.allclose(masked, dense, atol=1e-3)                  # the masks changed the output
        # training: one mask per sequence; each row as if run alone with its own mask
        per_row = torch.stack([heads, on, heads, on, heads, on])
        batch, _ = run_block(block, x, cond, per_row, groups, None)
        alone, _ = run_block(block, x[1:2], cond[0:1], on, groups, None)
        torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=1e-12)
