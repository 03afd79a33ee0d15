"""DyDiT's compute budget (flexgen.policies.dydit.budget): per-block MACs from the dimensions against the reference's
published constants, the realised fraction of the masks, the annealed target and the budget loss."""

import pytest
import torch

from flexgen.policies.dydit.budget import BlockCost, block_cost, budget_loss, flops_fraction, target_at


@pytest.mark.parametrize("dim,depth,attention,mlp,total", [
    (384, 12, 0.2013, 0.3020, 6.04),        # DiT-S/2 at 256 px (reference notes, Sec. 3.1)
    (768, 12, 0.7046, 1.2080, 22.95),       # DiT-B/2
    (1152, 28, 1.5099, 2.7179, 118.38),     # DiT-XL/2
])
def test_block_cost_reproduces_the_reference_constants(dim, depth, attention, mlp, total):
    cost = block_cost(seq_len=256, dim=dim)
    assert cost.attention / 1e9 == pytest.approx(attention, abs=1e-4)
    assert cost.mlp / 1e9 == pytest.approx(mlp, abs=1e-4)
    assert depth * (cost.attention + cost.mlp) / 1e9 == pytest.approx(total, abs=0.01)
    # a Latte temporal block: N sequences of F frames cost N × one sequence
    one, many = block_cost(16, dim), block_cost(16, dim, num_seqs=64)
    assert many.attention == 64 * one.attention and many.mlp == 64 * one.mlp
    with pytest.raises(ValueError, match="seq_len"):
        block_cost(0, dim)


def test_flops_fraction_of_masks():
    costs = [BlockCost(1.0, 3.0), BlockCost(2.0, 2.0)]
    B = 2
    on = [torch.ones(B, 4), torch.ones(B, 4)]
    assert torch.equal(flops_fraction(costs, on, on, [None, None]), torch.ones(B))
    heads = [torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.float), torch.ones(B, 4)]
    groups = [torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float), torch.ones(B, 4)]
    tokens = [torch.tensor([[1, 0, 1, 0, 1, 0, 1, 0], [1] * 8], dtype=torch.float), None]
    f = flops_fraction(costs, heads, groups, tokens)
    # sample 0: block 0 keeps 1·1/4 + 3·(1/2)·(1/2), block 1 everything: (0.25 + 0.75 + 4) / 8
    torch.testing.assert_close(f, torch.tensor([5.0 / 8, 1.0]))
    # gradients reach the masks (the straight-through gates of the routers)
    h = heads[0].clone().requires_grad_()
    budget_loss(flops_fraction(costs, [h, heads[1]], groups, tokens), 0.5).backward()
    assert h.grad is not None and bool((h.grad > 0).all())                  # over budget: push heads off
    with pytest.raises(ValueError, match="one cost"):
        flops_fraction(costs, heads[:1], groups, tokens)


def test_the_target_is_held_then_annealed():
    assert target_at(0, 0.5) == target_at(99, 0.5) == 1.0
    assert target_at(100 + 500, 0.5) == pytest.approx(0.75)
    assert target_at(100 + 1000, 0.5) == target_at(10 ** 6, 0.5) == 0.5
    assert target_at(5, 0.7, hold_steps=0, anneal_steps=0) == 0.7
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="λ"):
            target_at(0, bad)
    assert float(budget_loss(torch.tensor([0.6, 0.8]), 0.5)) == pytest.approx(0.04)
