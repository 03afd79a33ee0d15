"""DyDiT's routers (flexgen.policies.dydit.routers): hard gates with a straight-through gradient, on with probability
sigmoid(logit), every unit on at initialisation, unit 0 always on, width masks a function of t only."""

import pytest
import torch

from flexgen.policies.dydit.routers import TokenRouter, WidthRouter, gumbel_sigmoid


def test_training_gates_are_hard_with_the_soft_gradient():
    logits = torch.tensor([-3.0, -0.5, 0.0, 0.7, 4.0], dtype=torch.float64, requires_grad=True)
    g = torch.Generator().manual_seed(0)
    gates = gumbel_sigmoid(logits, training=True, tau=5.0, generator=g)
    assert set(gates.tolist()) <= {0.0, 1.0}
    gates.sum().backward()
    # d/dlogit of sigmoid((logit + L) / τ) with the same draw of L
    g = torch.Generator().manual_seed(0)
    u = torch.rand(5, generator=g, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    soft = torch.sigmoid((logits.detach() + torch.log(u) - torch.log1p(-u)) / 5.0)
    torch.testing.assert_close(logits.grad, soft * (1 - soft) / 5.0, rtol=1e-12, atol=0)
    torch.testing.assert_close(gates.detach(), (soft > 0.5).double())
    # evaluation: the noiseless hard gate, logit > 0
    assert gumbel_sigmoid(logits.detach(), training=False).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    # ... computed as the release does, sigmoid(logit) > 1/2 in the logits' dtype: a float32 logit in (0, ~6e-8)
    # has sigmoid exactly 1/2 and stays off (logit > 0 would turn it on)
    tiny = torch.tensor([1e-8, 5e-8, 2e-7, -1e-8, 0.0])
    assert gumbel_sigmoid(tiny, training=False).tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("tau", [1.0, 5.0])
def test_a_training_gate_is_on_with_probability_sigmoid_of_its_logit(tau):
    logits = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0]).repeat(40000, 1)
    on = gumbel_sigmoid(logits, training=True, tau=tau, generator=torch.Generator().manual_seed(1)).mean(0)
    torch.testing.assert_close(on, torch.sigmoid(logits[0]), atol=0.01, rtol=0)   # 40k draws: sd <= 0.0025


def test_width_router_starts_all_on_and_keeps_unit_zero_on():
    torch.manual_seed(0)
    router = WidthRouter(dim=32, num_heads=4).train()
    t_emb = torch.randn(6, 32)
    heads, groups = router(t_emb, generator=torch.Generator().manual_seed(2))
    assert heads.shape == groups.shape == (6, 4) and bool((heads == 1).all()) and bool((groups == 1).all())
    with torch.no_grad():
        router.heads.bias.fill_(-50.0)
        router.groups.bias.fill_(-50.0)
    for mode in (router.train(), router.eval()):
        heads, groups = mode(t_emb)
        assert heads[:, 0].eq(1).all() and heads[:, 1:].eq(0).all() and groups[:, 0].eq(1).all()
    # a function of the timestep embedding alone: equal rows give equal masks (both CFG halves, every class)
    router.eval()
    with torch.no_grad():
        router.heads.bias.zero_()
    h1, _ = router(t_emb[:1].repeat(3, 1))
    assert torch.equal(h1[0], h1[1]) and torch.equal(h1[1], h1[2])
    with pytest.raises(ValueError, match="num_heads"):
        WidthRouter(dim=8, num_heads=0)


def test_token_router_gates_each_token():
    torch.manual_seed(0)
    router = TokenRouter(dim=32).eval()
    x = torch.randn(2, 5, 7, 32)
    gates = router(x)
    assert gates.shape == (2, 5, 7) and bool((gates == 1).all())               # bias 35: every token on
    with torch.no_grad():
        router.mlp[2].bias.zero_()
    gates = router(x)
    torch.testing.assert_close(gates, (router.logits(x) > 0).float())
    assert 0 < float(gates.mean()) < 1                                         # random weights: a mix
