"""The density engine: schedules, stage draws, layouts, token pooling and fusion, and the FLOPs it buys."""

import math

import pytest
import torch
from scipy import stats as scipy_stats

from flexgen.backbones.latte import LatteCost
from flexgen.policies.cost import density_report
from flexgen.policies.flexdit import (
    DensityConfig,
    Fusion,
    ScheduleConfig,
    draw_stage,
    grid_at,
    parse_layout,
    pool,
    stages,
    unpool,
)
from flexgen.policies.flexdit.layouts import LAYOUTS
from flexgen.policies.flexdit.schedules import (
    eq5_tokens,
    grid_for_timesteps,
    mean_over_stages,
    sample_timesteps_in_stage,
)
from flexgen.video.latte import PRESETS, latte_config

# ----------------------------------------------------------------------------------------------------------
# Schedules


def spans(stage_list):
    return {s.grid: (s.t_start, s.t_end - 1) for s in stage_list}


def test_eq5_reading_b_reproduces_the_reference_stages():
    # flexdit.md §3: reading B, s = round(sqrt(M)), T = 1000.
    assert spans(stages(ScheduleConfig(grid_min=6, grid_max=10))) == {
        6: (677, 999), 7: (513, 676), 8: (326, 512), 9: (115, 325), 10: (0, 114)}
    assert spans(stages(ScheduleConfig(grid_min=12, grid_max=20))) == {
        12: (715, 999), 13: (638, 714), 14: (556, 637), 15: (469, 555), 16: (375, 468), 17: (275, 374),
        18: (170, 274), 19: (58, 169), 20: (0, 57)}


def test_eq5_reading_a_is_the_literal_equation():
    assert spans(stages(ScheduleConfig(grid_min=6, grid_max=10, reading="A"))) == {
        10: (0, 364), 9: (365, 575), 8: (576, 762), 7: (763, 926), 6: (927, 999)}
    # Literally: r = r_min below T/4, then linear to r_max at T (r linear <=> token count linear).
    T, m_min, m_max = 1000, 36, 100
    for t in (0, 249, 250, 600, 999):
        r_min, r_max, N = 1 - m_max / 256, 1 - m_min / 256, 256
        rate = r_min if t < T / 4 else (4 * T - 4 * t) / (3 * T) * r_min + (4 * t - T) / (3 * T) * r_max
        assert eq5_tokens(t, T, m_min, m_max, "A") == pytest.approx((1 - rate) * N)


def test_schedule_kinds_and_their_errors():
    assert {s.grid for s in stages(ScheduleConfig(kind="constant", grid=8))} == {8}
    custom = ScheduleConfig(kind="stages", stages=[[500, 1000, 4], [0, 500, 12]])
    assert [(s.t_start, s.t_end, s.grid) for s in stages(custom)] == [(0, 500, 12), (500, 1000, 4)]
    assert grid_at(custom, 499, 1000) == 12 and grid_at(custom, 500, 1000) == 4
    with pytest.raises(ValueError, match="must tile"):
        stages(ScheduleConfig(kind="stages", stages=[[0, 400, 12], [500, 1000, 4]]))
    with pytest.raises(ValueError, match="grid_min <= grid_max"):
        ScheduleConfig(grid_min=10, grid_max=6)
    with pytest.raises(ValueError, match="reading"):
        ScheduleConfig(reading="C")
    with pytest.raises(ValueError, match="outside"):
        grid_at(ScheduleConfig(), 1000, 1000)


def test_respaced_sampler_timesteps_map_through_training_timesteps():
    stage_list = stages(ScheduleConfig(grid_min=6, grid_max=10))
    # DDPM-250 visits 999, 995, ..., 0; DPM-Solver-20 visits other t: each maps by its own training timestep.
    assert grid_for_timesteps(stage_list, torch.tensor([999, 999])) == 6
    assert grid_for_timesteps(stage_list, torch.tensor([114])) == 10
    with pytest.raises(ValueError, match="one grid"):
        grid_for_timesteps(stage_list, torch.tensor([114, 115]))


@pytest.mark.parametrize("world", [1, 4])
def test_stage_draws_keep_timesteps_uniform_with_one_grid_per_micro_batch(world):
    # As training does it: one shared generator (the same state on every rank) picks the stages, and each rank
    # draws its micro-batch's timesteps inside its stage with its own generator.
    stage_list = stages(ScheduleConfig(grid_min=6, grid_max=10))
    shared = torch.Generator().manual_seed(1234)
    local = [torch.Generator().manual_seed(100 + r) for r in range(world)]
    drawn, grids_of_rank = [], {r: set() for r in range(world)}
    for _ in range(4000 // world):
        state = shared.get_state()
        for rank in range(world):
            shared.set_state(state)
            stage = draw_stage(stage_list, shared, rank, world)
            t = sample_timesteps_in_stage(stage, 8, local[rank])
            assert grid_for_timesteps(stage_list, t) == stage.grid          # one grid per micro-batch
            grids_of_rank[rank].add(stage.grid)
            drawn.extend(t.tolist())
    # Pooled over ranks and steps, t is uniform on [0, 1000) (Kolmogorov-Smirnov on bin centres).
    assert scipy_stats.kstest([(t + 0.5) / 1000 for t in drawn], "uniform").pvalue > 1e-3
    if world == 4:   # stratified: rank 0 covers the cleanest quarter of [0, T), rank 3 the noisiest
        assert grids_of_rank[0] == {10, 9} and grids_of_rank[3] == {6}


def test_stage_shares_match_stage_lengths():
    stage_list = stages(ScheduleConfig(grid_min=6, grid_max=10))
    g = torch.Generator().manual_seed(1)
    counts = {s.grid: 0 for s in stage_list}
    n = 20000
    for _ in range(n):
        counts[draw_stage(stage_list, g).grid] += 1
    for s in stage_list:
        assert counts[s.grid] / n == pytest.approx(s.length / 1000, abs=0.015)


@pytest.mark.parametrize("schedule", [
    ScheduleConfig(grid_min=6, grid_max=10), ScheduleConfig(kind="constant"),
    ScheduleConfig(kind="stages", stages=[[0, 300, 8], [300, 700, 4], [700, 1000, 8]])],
                         ids=["eq5", "constant", "grid-reused-in-two-stages"])
def test_mean_over_stages_is_the_average_over_every_timestep(schedule):
    # a grid used by stages that are not adjacent counts once per stage (44.8 tokens on the last, not 25.6)
    brute = sum(grid_at(schedule, t, 1000) ** 2 for t in range(1000)) / 1000
    assert mean_over_stages(stages(schedule), lambda grid: grid * grid) == pytest.approx(brute, rel=1e-12)


def _logit_normal(mean=0.0, std=1.0):
    from flexgen.config import DiffusionConfig
    from flexgen.policies.timesteps import timestep_weights

    return timestep_weights(DiffusionConfig(timestep_sampling="logit_normal", logit_mean=mean, logit_std=std))


def test_logit_normal_weights_follow_the_sd3_density():
    from flexgen.config import DiffusionConfig
    from flexgen.policies.timesteps import timestep_weights

    assert timestep_weights(DiffusionConfig()) is None                       # uniform: the DDPM default
    w = _logit_normal()
    assert w.shape == (1000,) and w.dtype == torch.float64 and float(w.sum()) == pytest.approx(1.0)
    # Esser et al. 2024, Eq. 19 at u = 1/2 (logit 0): 1 / (s sqrt(2π) · 1/4) = 1.5958 for m = 0, s = 1;
    # weight × T is the density at the cell's midpoint
    assert float(w[499] + w[500]) / 2 * 1000 == pytest.approx(4 / math.sqrt(2 * math.pi), rel=1e-3)
    assert float(w[:100].sum()) == pytest.approx(scipy_stats.norm.cdf(math.log(0.1 / 0.9)), abs=2e-3)
    assert torch.allclose(w, w.flip(0))                                      # symmetric about T/2 for m = 0
    shifted = _logit_normal(mean=1.0)                                        # m > 0: more training at high noise
    assert int(shifted.argmax()) > 600 and float(shifted[500:].sum()) > 0.75
    with pytest.raises(ValueError, match="timestep_sampling"):
        DiffusionConfig(timestep_sampling="lognormal")
    with pytest.raises(ValueError, match="logit_std"):
        DiffusionConfig(timestep_sampling="logit_normal", logit_std=0.0)


@pytest.mark.parametrize("world", [1, 4])
def test_stage_draws_follow_a_logit_normal_density(world):
    # FlexDiT fine-tuning on logit-normal timesteps: stages are drawn by their weight, t inside a stage by the
    # weights, so pooled t follows the density (a draw by stage length would put ~3x too much at the ends).
    from flexgen.policies.timesteps import StageTimesteps, WeightedTimesteps

    w = _logit_normal()
    stage_list = tuple(stages(ScheduleConfig(grid_min=6, grid_max=10)))
    sampler = StageTimesteps(stage_list, w)
    shared = torch.Generator().manual_seed(7)
    local = [torch.Generator().manual_seed(200 + r) for r in range(world)]
    drawn = []
    for _ in range(8000 // world):
        state = shared.get_state()
        for rank in range(world):
            shared.set_state(state)
            t = sampler(4, local[rank], shared, rank, world)
            assert grid_for_timesteps(list(stage_list), t) in {s.grid for s in stage_list}
            assert len({grid_at(ScheduleConfig(grid_min=6, grid_max=10), int(x), 1000) for x in t}) == 1
            drawn.extend(t.tolist())
    dense = WeightedTimesteps(w)(len(drawn), torch.Generator().manual_seed(3), shared)
    for sample in (drawn, dense.tolist()):
        u = (torch.tensor(sample, dtype=torch.float64) + 0.5) / 1000
        logit = torch.log(u) - torch.log1p(-u)                               # ~ N(0, 1) if t follows the density
        assert scipy_stats.kstest(logit.numpy(), "norm").pvalue > 1e-3


# ----------------------------------------------------------------------------------------------------------
# Layouts


def test_layout_presets_fit_their_models():
    for name, roles in LAYOUTS.items():
        model = name.removesuffix("-1pf")
        blocks = 28 if model == "PixArt-XL/2" else latte_config(model).num_spatial if model in PRESETS else None
        assert blocks is not None
        parsed = parse_layout(name, blocks)
        assert parsed == roles.replace(" ", "") and parsed.count("G") == parsed.count("R")
    assert parse_layout("DiT-XL/2", 28) == "PP" + "GSSSRD" * 4 + "TT"        # the paper's 28-layer layout
    assert parse_layout("DiT-XL/2-1pf", 28) == "P" + "GSSSRD" * 4 + "TTT"   # the released 256 px run


@pytest.mark.parametrize("roles,match", [
    ("PGSSRT", "has 6 roles but the model has 7"),
    ("PPGSSST", "each SDTM must be G S\\* R"),
    ("GSSRDDD", "keeps block 0 dense"),
    ("PGSRTDR", "T only after the last SDTM"),
    ("PPXSSRD", "neither a preset"),
])
def test_bad_layouts(roles, match):
    with pytest.raises(ValueError, match=match):
        parse_layout(roles, 7 if "6 roles" in match else len(roles))


# ----------------------------------------------------------------------------------------------------------
# Tokens


def test_pool_unpool_and_fusion():
    x = torch.randn(2, 3, 8, 8, 5, dtype=torch.float64)
    assert torch.equal(pool(x, (3, 8, 8)), x) and torch.equal(unpool(x, (3, 8, 8)), x)
    pooled = pool(x, (3, 4, 4))
    torch.testing.assert_close(pooled[:, :, 1, 2], x[:, :, 2:4, 4:6].mean(dim=(2, 3)))   # 2×2 windows
    up = unpool(pooled, (3, 8, 8))
    assert torch.equal(up[:, :, 2:4, 4:6], pooled[:, :, 1:2, 2:3].expand(-1, -1, 2, 2, -1))
    across = pool(x, (1, 2, 2))                                                           # across frames too
    torch.testing.assert_close(across[:, 0, 0, 0], x[:, :, :4, :4].mean(dim=(1, 2, 3)))
    uneven = pool(x, (3, 3, 3))                                                           # 8 -> 3: uneven windows
    torch.testing.assert_close(uneven[:, :, 0, 0], x[:, :, :3, :3].mean(dim=(2, 3)))

    s, d = torch.randn(4, 6, 5), torch.randn(4, 6, 5)
    torch.testing.assert_close(Fusion(5, "paper")(s, d), d)          # W1 = 0, W2 = I: the dense skip
    torch.testing.assert_close(Fusion(5, "sparse")(s, d), s)         # W1 = I, W2 = 0: the upsampled sparse tokens
    with pytest.raises(ValueError, match="fusion init"):
        Fusion(5, "zero")
    with pytest.raises(ValueError, match="fusion_init"):
        DensityConfig(fusion_init="identity")


# ----------------------------------------------------------------------------------------------------------
# FLOPs: the paper's numbers (flexdit.md §5.1, §9), counted on the meta device.


def report(model, size, layout, grid_min, grid_max, **kw):
    cfg = latte_config(model, input_size=size // 8, num_classes=1000 if model.startswith("DiT") else 0)
    return density_report(LatteCost(cfg, DensityConfig(layout=layout, schedule=ScheduleConfig(
        grid_min=grid_min, grid_max=grid_max, reading=kw.pop("reading", "B")), **kw)))


@pytest.mark.parametrize("size,layout,grids,published,params", [
    (512, "DiT-XL/2", (12, 20), 286, 681_327_392 - 1024 * 1152),      # r ∈ [0.61, 0.86] at 512 px
    (512, "DiT-XL/2", (6, 10), 235, 681_327_392 - 1024 * 1152),       # r ∈ [0.90, 0.96] at 512 px
    (256, "DiT-XL/2-1pf", (6, 10), 68.05, 683_099_168 - 256 * 1152),  # the released 256 px run
])
def test_flexdit_xl_reproduces_the_paper(size, layout, grids, published, params):
    r = report("DiT-XL/2", size, layout, *grids)
    # The released code's Poolingformer multiplies an N×N ones matrix with V; counted that way we match the
    # paper, and our mean-of-V Poolingformer is cheaper still.
    assert r["gmacs_released_code"] == pytest.approx(published, rel=0.005)
    assert r["gmacs"] < r["gmacs_released_code"]
    assert r["gmacs_dense"] == pytest.approx(524.5 if size == 512 else 118.6, rel=0.005)
    # Parameter counts of the released logs, which include the frozen pos_embed table that we do not store.
    assert r["params"] == params


def test_schedule_reading_a_costs_more_at_512():
    a = report("DiT-XL/2", 512, "DiT-XL/2", 12, 20, reading="A")["gmacs_released_code"]
    assert a == pytest.approx(304.4, rel=0.005)                    # flexdit.md §9: reading A does not match 286


def test_latte_xl_reduction_per_frame_and_across_frames():
    per_frame = report("Latte-XL/2", 256, "Latte-XL/2", 5, 9)       # the flexlatte-xl2.yaml presets
    assert per_frame["reduction"] >= 0.56                         # the paper: -56% FLOPs on Latte
    across = report("Latte-XL/2", 256, "Latte-XL/2", 5, 9, pool_frames=8)
    assert across["reduction"] > per_frame["reduction"] + 0.03
    paper_grid = report("Latte-XL/2", 256, "Latte-XL/2", 6, 10)
    assert 0.5 < paper_grid["reduction"] < per_frame["reduction"]
    assert math.isclose(per_frame["gmacs_dense"], 1864.5, rel_tol=0.001)
