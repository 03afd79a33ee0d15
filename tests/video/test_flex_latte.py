"""FlexDiT on DiT and Latte (`Latte(config, policy=FlexDiT(density))`) against an independent literal reference
(`tests/reference_flexdit.py`), the dense -> flex conversion invariants, Poolingformer conversion, schedule use,
cross-frame pooling, joint image-video input, parameter bookkeeping and gradients. Tiny float64 models on an 8×8
token grid."""

import pytest
import torch

from flexgen.checkpoint import convert_official_state_dict
from flexgen.policies import FlexDiT
from flexgen.policies.flexdit import DensityConfig, DensityRecord, ScheduleConfig
from flexgen.video.latte import Latte
from tests.conftest import tiny_config
from tests.reference_flexdit import poolingformer_block, reference_flex_forward
from tests.reference_latte import official_state_dict

# 8×8 token grid (input 16, patch 2), width 32, 4 heads, 4 frames of 3 channels; 5 classes + the null class.
GRID, D, NUM_CLASSES = 8, 32, 5
# Two cascaded SDTMs, two Poolingformers (DiT) / one Poolingformer (Latte), dense and top blocks.
DIT_LAYOUT = "PP GSR GR DT"
LATTE_LAYOUT = "PD GSSR GR T"


def config(family, roles, **overrides):
    num_spatial = len(roles.replace(" ", ""))
    depth = num_spatial * 2 if family == "Latte" else num_spatial
    return tiny_config(f"{family}-S/2", input_size=16, depth=depth, num_classes=NUM_CLASSES, **overrides)


def constant(grid, layout, **kwargs):
    return DensityConfig(layout=layout, schedule=ScheduleConfig(kind="constant", grid=grid), **kwargs)


def random_fusions(num, seed):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * 0.3

    return [(rnd(D, D), rnd(D), rnd(D, D), rnd(D)) for _ in range(num)]


def flex_model(cfg, density, sd, fusions):
    """A float64 FlexDiT Latte with the official-layout weights `sd` and the given recovery fusions."""
    flex = Latte(cfg, policy=FlexDiT(density)).double().eval()
    state = flex.flex_state_dict(convert_official_state_dict(sd, cfg))
    for k, (w1, b1, w2, b2) in enumerate(fusions):
        state |= {f"fusions.{k}.w_sparse.weight": w1, f"fusions.{k}.w_sparse.bias": b1,
                  f"fusions.{k}.w_dense.weight": w2, f"fusions.{k}.w_dense.bias": b2}
    flex.load_state_dict(state, strict=True)
    return flex


def dense_model(cfg, seed=0):
    dense = Latte(cfg).double().eval()
    dense.load_state_dict(convert_official_state_dict(official_state_dict(cfg, seed=seed), cfg), strict=True)
    return dense


def converted(dense, density):
    """`dense.converted(FlexDiT(density))` in eval mode (it keeps `dense`'s mode; the callers' may train)."""
    return dense.converted(FlexDiT(density)).eval()


def inputs(cfg, batch=2, seed=1, num_images=0):
    g = torch.Generator().manual_seed(seed)
    frames = (cfg.num_frames + num_images,) if cfg.temporal else ()
    x = torch.randn(batch, *frames, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g,
                    dtype=torch.float64)
    t = torch.tensor([3, 871, 999, 420][:batch])
    y = torch.tensor([0, NUM_CLASSES, 2, 4][:batch])                         # incl. the null class
    return x, t, y


# ----------------------------------------------------------------------------------------------------------
# Agreement with the reference.


@pytest.mark.parametrize("family,layout,grid", [("DiT", DIT_LAYOUT, 3), ("DiT", DIT_LAYOUT, 4),
                                                ("DiT", DIT_LAYOUT, 5), ("DiT", DIT_LAYOUT, 8),
                                                ("Latte", LATTE_LAYOUT, 3), ("Latte", LATTE_LAYOUT, 5)])
def test_matches_reference(family, layout, grid):
    cfg = config(family, layout)
    sd = official_state_dict(cfg, seed=0)
    fusions = random_fusions(layout.count("R"), seed=2)
    # The schedule says 6; the explicit grid= wins.
    flex = flex_model(cfg, constant(6, layout), sd, fusions)
    x, t, y = inputs(cfg, batch=3 if family == "DiT" else 2)
    ours = flex(x, t, y, grid=grid)
    ref = reference_flex_forward(sd, cfg, layout, x, t, y, grid=grid, fusions=fusions)
    assert ours.shape == x.shape[:-3] + (2 * cfg.in_channels, 16, 16)
    assert ref.abs().mean() > 1e-2                                            # non-trivial weights
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)


def test_cross_frame_pooling_matches_reference():
    cfg = config("Latte", LATTE_LAYOUT)
    sd = official_state_dict(cfg, seed=3)
    fusions = random_fusions(2, seed=4)
    flex = flex_model(cfg, constant(3, LATTE_LAYOUT, pool_frames=2), sd, fusions)
    x, t, y = inputs(cfg)
    record = DensityRecord()
    ours = flex(x, t, y, record=record)
    assert ours.shape == (2, 4, 6, 16, 16)
    assert (record.grid, record.sparse_frames) == (3, 2)
    ref = reference_flex_forward(sd, cfg, LATTE_LAYOUT, x, t, y, grid=3, fusions=fusions, pool_frames=2)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------------------------------------
# Conversion dense -> flex.


@pytest.mark.parametrize("family,layout,pool_frames", [("DiT", "DD GSR GR DT", 0), ("Latte", "DD GSSR GR T", 0),
                                                       ("Latte", "DD GSSR GR T", 4)])
def test_sparse_init_at_full_grid_is_the_dense_model(family, layout, pool_frames):
    cfg = config(family, layout)
    dense = dense_model(cfg)
    flex = converted(dense, constant(GRID, layout, fusion_init="sparse", pool_frames=pool_frames))
    x, t, y = inputs(cfg)
    expected = dense(x, t, y)
    assert expected.abs().mean() > 1e-2
    torch.testing.assert_close(flex(x, t, y), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family,layout", [("DiT", "DD GSR GR DT"), ("Latte", "DD GSSR GR T")])
def test_paper_init_fusion_passes_the_dense_skip(family, layout):
    cfg = config(family, layout)
    dense = dense_model(cfg)
    flex = converted(dense, constant(GRID, layout, fusion_init="paper"))
    skips, fused = [], []
    g_blocks = [flex.spatial_blocks[i] for i, role in enumerate(layout.replace(" ", "")) if role == "G"]
    hooks = [block.register_forward_pre_hook(lambda _m, _a, kw: skips.append(kw["context"]), with_kwargs=True)
             for block in g_blocks]
    hooks += [f.register_forward_hook(lambda _m, a, out: fused.append((a[1], out))) for f in flex.fusions]
    x, t, y = inputs(cfg)
    out = flex(x, t, y)
    for hook in hooks:
        hook.remove()
    assert len(skips) == len(fused) == 2
    for skip, (dense_arg, merged) in zip(skips, fused, strict=True):
        torch.testing.assert_close(dense_arg, skip, rtol=0, atol=0)            # W2 sees the SDTM's input
        torch.testing.assert_close(merged, skip, rtol=0, atol=1e-15)           # W1 = 0, W2 = I
    # Recovery queries start from the SDTM's input, not from the sparse blocks' output: not the dense model.
    assert (out - dense(x, t, y)).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------------------
# Poolingformer.


def test_poolingformer_drops_qk_and_matches_released_formulation():
    layout = DIT_LAYOUT
    cfg = config("DiT", layout)
    sd = official_state_dict(cfg, seed=5)
    dense = dense_model(cfg, seed=5)
    flex = converted(dense, constant(4, layout))
    for i in (0, 1):                                                          # the two P blocks
        block = flex.spatial_blocks[i]
        names = [name for name, _ in block.named_parameters()]
        assert block.attn.qkv is None and not any("qkv" in name for name in names)
        torch.testing.assert_close(block.attn.v.weight, sd[f"blocks.{i}.attn.qkv.weight"][2 * D:], rtol=0, atol=0)
        torch.testing.assert_close(block.attn.v.bias, sd[f"blocks.{i}.attn.qkv.bias"][2 * D:], rtol=0, atol=0)
        g = torch.Generator().manual_seed(i)
        x = torch.randn(3, GRID * GRID, D, generator=g, dtype=torch.float64)
        cond = torch.randn(3, D, generator=g, dtype=torch.float64)
        ref = poolingformer_block(sd, i, x, cond, cfg.num_heads)
        torch.testing.assert_close(block(x, cond), ref, rtol=1e-10, atol=1e-10)
    assert all(block.attn.qkv is not None for block in flex.spatial_blocks[2:])


def test_parameter_bookkeeping():
    cfg = config("Latte", LATTE_LAYOUT)
    dense, flex = Latte(cfg), Latte(cfg, policy=FlexDiT(constant(4, LATTE_LAYOUT)))
    count = sum(p.numel() for p in dense.parameters())
    num_p, num_r = LATTE_LAYOUT.count("P"), LATTE_LAYOUT.count("R")
    expected = count - num_p * (2 * D * D + 2 * D) + num_r * 2 * (D * D + D)
    assert sum(p.numel() for p in flex.parameters()) == expected


# ----------------------------------------------------------------------------------------------------------
# Schedule.


def test_eq5_schedule_picks_the_grid_of_the_timesteps_stage():
    # Reading B with sides 3..6: s = round(sqrt(36 - 27 t / 750)) for t < 750, 3 from t = 750 on.
    cfg = config("Latte", LATTE_LAYOUT)
    density = DensityConfig(layout=LATTE_LAYOUT, schedule=ScheduleConfig(kind="eq5", grid_min=3, grid_max=6))
    flex = flex_model(cfg, density, official_state_dict(cfg, seed=6), random_fusions(2, seed=7))
    x, _, y = inputs(cfg)
    for t, side in (([999, 800], 3), ([0, 10], 6), ([300, 310], 5)):
        t = torch.tensor(t)
        record = DensityRecord()
        out = flex(x, t, y, record=record)
        assert (record.grid, record.sparse_frames) == (side, cfg.num_frames)
        roles = LATTE_LAYOUT.replace(" ", "")
        assert record.blocks == [(role, side * side if role in "GS" else GRID * GRID) for role in roles]
        torch.testing.assert_close(out, flex(x, t, y, grid=side), rtol=0, atol=0)
    with pytest.raises(ValueError, match="one grid"):
        flex(x, torch.tensor([0, 999]), y)


# ----------------------------------------------------------------------------------------------------------
# Cross-frame pooling and joint image-video input.


def test_cross_frame_pooling_mixes_frames_and_rejects_images():
    cfg = config("Latte", LATTE_LAYOUT)
    flex = flex_model(cfg, constant(3, LATTE_LAYOUT, pool_frames=2), official_state_dict(cfg, seed=8),
                      random_fusions(2, seed=9))
    x, t, y = inputs(cfg)
    record = DensityRecord()
    out = flex(x, t, y, record=record)
    assert out.shape == (2, 4, 6, 16, 16) and record.sparse_frames == 2
    assert record.blocks[2] == ("G", 9) and record.blocks[5] == ("R", GRID * GRID)
    x2 = x.clone()
    x2[:, 0] += 1.0
    diff = (flex(x2, t, y) - out).abs().flatten(2).amax(-1)                   # (B, F)
    assert (diff[:, 1:] > 1e-6).all()
    images, t, y = inputs(cfg, num_images=2)
    with pytest.raises(ValueError, match="joint image-video"):
        flex(images, t, y, num_images=2)


def test_image_slots_ignore_the_video_with_per_frame_pooling():
    cfg = config("Latte", LATTE_LAYOUT)
    flex = flex_model(cfg, constant(3, LATTE_LAYOUT), official_state_dict(cfg, seed=10), random_fusions(2, seed=11))
    x, t, y = inputs(cfg, num_images=2)
    y_images = torch.tensor([[1, 2], [3, NUM_CLASSES]])
    out = flex(x, t, y, num_images=2, y_images=y_images)
    x2 = x.clone()
    x2[:, :4] = torch.randn_like(x2[:, :4])
    out2 = flex(x2, t, y, num_images=2, y_images=y_images)
    assert out.shape == (2, 6, 6, 16, 16)
    assert (out2[:, :4] - out[:, :4]).abs().amax() > 1e-3
    torch.testing.assert_close(out2[:, 4:], out[:, 4:], rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------
# Training.


@pytest.mark.parametrize("pool_frames", [0, 2])
def test_backward_reaches_every_parameter(pool_frames):
    cfg = config("Latte", LATTE_LAYOUT)
    flex = flex_model(cfg, constant(3, LATTE_LAYOUT, pool_frames=pool_frames), official_state_dict(cfg, seed=12),
                      random_fusions(2, seed=13)).train()
    x, t, y = inputs(cfg)
    flex(x, t, y, grid=3).square().mean().backward()
    missing = [name for name, p in flex.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    zero = [name for name, p in flex.named_parameters() if not p.grad.abs().sum() > 0]
    assert not zero, f"parameters with an all-zero gradient: {zero}"
    assert {name.split(".")[0] for name, _ in flex.named_parameters()} >= {"fusions", "spatial_blocks",
                                                                            "temporal_blocks"}
