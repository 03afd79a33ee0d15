"""FlexDiT on PixArt-α: conversion invariant, the roles against independent computations, schedule, save/load,
loading errors, gradient checkpointing, and FLOPs of the full-size models against the published counts."""

import json

import pytest
import torch
import torch.nn.functional as F
from t2i_helpers import CAPTION_DIM, MAX_LENGTH, tiny_transformer, tiny_transformer_config

from flexgen.policies.flexdit import DensityConfig, DensityRecord, ScheduleConfig, grid_at
from flexgen.t2i.pixart import PRESETS, FlexPixArtTransformer2DModel
from flexgen.t2i.pixart_io import load_transformer

pytest.importorskip("diffusers")

pytestmark = pytest.mark.usefixtures("float64")           # every test in float64 (tests/conftest.py)


def inputs(batch=2, height=8, width=8, t=500, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, height, width, generator=g)
    text = torch.randn(batch, MAX_LENGTH, CAPTION_DIM, generator=g)
    mask = torch.ones(batch, MAX_LENGTH, dtype=torch.long)
    mask[-1, 5:] = 0                                      # the last caption is padded: the mask must matter
    return x, text, torch.full((batch,), t), mask


def convert(dense, layout, fusion_init="paper", **schedule):
    density = DensityConfig(layout=layout, schedule=ScheduleConfig(**schedule), fusion_init=fusion_init)
    return FlexPixArtTransformer2DModel.from_dense(dense, density)


@pytest.mark.parametrize("size", [(8, 8), (8, 12)])
@pytest.mark.parametrize("extra", [{}, {"use_additional_conditions": True}])
def test_full_grid_without_poolingformers_equals_dense(size, extra):
    """The conversion invariant: no Poolingformer, a full sparse grid and fusions starting at the sparse tokens ->
    exactly the dense transformer (square and non-square latents, with the 1024-MS size conditions)."""
    dense = tiny_transformer(**extra)
    flex = convert(dense, "D GSR GR", fusion_init="sparse", kind="constant", grid=4)
    x, text, t, mask = inputs(height=size[0], width=size[1])
    kwargs = {"encoder_attention_mask": mask}
    if extra:
        kwargs["added_cond_kwargs"] = {"resolution": torch.tensor([[64.0, 96.0]] * 2),
                                       "aspect_ratio": torch.tensor([[1.5]] * 2)}
    record = DensityRecord()
    out = flex(x, text, t, record=record, **kwargs).sample
    torch.testing.assert_close(out, dense(x, text, t, **kwargs).sample, rtol=0, atol=1e-10)
    n = size[0] * size[1] // 4
    assert record.blocks == [("D", n), ("G", n), ("S", n), ("R", n), ("G", n), ("R", n)]
    # ... and a FlexDiT model without a layout is the dense model
    plain = FlexPixArtTransformer2DModel(**{k: v for k, v in dense.config.items() if not k.startswith("_")})
    plain.load_state_dict(dense.state_dict())
    torch.testing.assert_close(plain(x, text, t, **kwargs).sample, dense(x, text, t, **kwargs).sample,
                               rtol=0, atol=0)


def test_text_mask_matters():
    dense = tiny_transformer()
    flex = convert(dense, "P GSR DD", kind="constant", grid=2)
    x, text, t, mask = inputs()
    full = flex(x, text, t, encoder_attention_mask=torch.ones_like(mask)).sample
    masked = flex(x, text, t, encoder_attention_mask=mask).sample
    assert torch.equal(full[0], masked[0]) and not torch.allclose(full[1], masked[1])


def test_poolingformer_is_uniform_attention():
    """A Poolingformer equals the dense block whose Q and K projections are zero (all logits equal -> softmax
    uniform -> every token gets the mean of V), so it keeps V and the output projection only."""
    dense = tiny_transformer()
    flex = convert(dense, "P D GSR D", fusion_init="sparse", kind="constant", grid=4)
    assert flex.transformer_blocks[0].attn1.to_q is None and "transformer_blocks.0.attn1.to_q.weight" not in \
        flex.state_dict()
    with torch.no_grad():
        for name in ("to_q", "to_k"):
            getattr(dense.transformer_blocks[0].attn1, name).weight.zero_()
            getattr(dense.transformer_blocks[0].attn1, name).bias.zero_()
    x, text, t, mask = inputs()
    torch.testing.assert_close(flex(x, text, t, encoder_attention_mask=mask).sample,
                               dense(x, text, t, encoder_attention_mask=mask).sample, rtol=0, atol=1e-10)


def reference_attention(attn, q_in, kv_in, bias=None):
    """Multi-head attention written out: softmax(QKᵀ/√d + bias) V, then the output projection."""
    B, heads = q_in.shape[0], attn.heads

    def split(z):
        return z.reshape(B, z.shape[1], heads, -1).transpose(1, 2)

    q, k, v = split(attn.to_q(q_in)), split(attn.to_k(kv_in)), split(attn.to_v(kv_in))
    logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if bias is not None:
        logits = logits + bias[:, None]
    return attn.to_out[0]((logits.softmax(-1) @ v).transpose(1, 2).reshape(B, q_in.shape[1], -1))


def test_sdtm_against_written_out_reference():
    """Layout "D GSR DD" at a 2×2 sparse grid (4×4 tokens), checked block by block against a written-out
    computation: average pooling of 2×2 token windows, sparse queries reading the dense tokens (G), a sparse block
    (S), fused dense queries reading the sparse tokens (R), each with text cross-attention and MLP."""
    dense = tiny_transformer()
    flex = convert(dense, "D GSR DD", kind="constant", grid=2)
    with torch.no_grad():                                   # a fusion that is neither identity nor zero
        for p in flex.fusions.parameters():
            p.normal_(0, 0.3)
    x, text, t, mask = inputs()
    B = x.shape[0]
    bias = ((1 - mask) * -10000.0)[:, None]                 # (B, 1, L), as diffusers converts the mask
    blocks = flex.transformer_blocks

    def block_ref(block, q_tokens, kv_tokens, cond):
        shift, scale, gate, shift2, scale2, gate2 = (block.scale_shift_table[None] + cond.reshape(B, 6, -1)).chunk(6, 1)
        norm = lambda z: F.layer_norm(z, z.shape[-1:], eps=1e-6) * (1 + scale) + shift  # noqa: E731
        h = q_tokens + gate * reference_attention(block.attn1, norm(q_tokens), norm(kv_tokens))
        h = h + reference_attention(block.attn2, h, text_p, bias)
        ff = block.ff.net[2](F.gelu(block.ff.net[0].proj(F.layer_norm(h, h.shape[-1:], eps=1e-6) * (1 + scale2)
                                                         + shift2), approximate="tanh"))
        return h + gate2 * ff

    with torch.no_grad():
        tokens = flex.pos_embed(x)                                                   # (B, 16, D)
        cond, embedded = flex.adaln_single(t, None, batch_size=B, hidden_dtype=tokens.dtype)
        text_p = flex.caption_projection(text)
        h = block_ref(blocks[0], tokens, tokens, cond)                               # D
        grid = h.reshape(B, 4, 4, -1)
        pooled = grid.reshape(B, 2, 2, 2, 2, -1).mean(dim=(2, 4)).reshape(B, 4, -1)  # 2×2 windows
        s = block_ref(blocks[1], pooled, h, cond)                                     # G
        s = block_ref(blocks[2], s, s, cond)                                          # S
        up = s.reshape(B, 2, 1, 2, 1, -1).expand(B, 2, 2, 2, 2, -1).reshape(B, 16, -1)  # nearest upsampling
        fusion = flex.fusions[0]
        fused = fusion.w_sparse(up) + fusion.w_dense(h)
        h = block_ref(blocks[3], fused, s, cond)                                      # R
        h = block_ref(blocks[4], h, h, cond)                                          # D
        h = block_ref(blocks[5], h, h, cond)                                          # D
        expected = flex._unpatchify(h, embedded, 4, 4)
        torch.testing.assert_close(flex(x, text, t, encoder_attention_mask=mask).sample, expected, rtol=1e-9,
                                   atol=1e-9)


def test_schedule_reads_the_timestep():
    dense = tiny_transformer()
    flex = convert(dense, "P GSR DD", kind="eq5", grid_min=1, grid_max=4)
    x, text, _, mask = inputs()
    for t in (0, 300, 700, 999):
        record = DensityRecord()
        flex(x, text, torch.tensor([t, t]), encoder_attention_mask=mask, record=record)
        side = grid_at(flex.density.schedule, t, 1000)
        assert record.grid == side and record.blocks[1] == ("G", side * side)
    with pytest.raises(ValueError, match="one grid"):
        flex(x, text, torch.tensor([0, 999]), encoder_attention_mask=mask)
    with pytest.raises(ValueError, match="outside"):
        flex(x, text, torch.tensor([0, 0]), encoder_attention_mask=mask, grid=5)


def test_sparse_size_keeps_the_fraction_on_other_grids():
    flex = convert(tiny_transformer(), "P GSR DD", kind="constant", grid=2)
    assert flex.sparse_size(4, 4, 2) == (2, 2)
    assert flex.sparse_size(4, 6, 2) == (2, 3)
    assert flex.sparse_size(8, 8, 2) == (4, 4)              # 2× the resolution -> 2× the sparse side
    assert flex.sparse_size(1, 5, 2) == (1, 2)


def test_save_pretrained_round_trip(tmp_path):
    flex = convert(tiny_transformer(), "P GSR DD", kind="eq5", grid_min=2, grid_max=3, reading="A")
    flex.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "FlexPixArtTransformer2DModel"
    assert config["layout"] == "P GSR DD" and config["schedule"]["kind"] == "eq5"
    assert config["schedule"]["reading"] == "A" and config["fusion_init"] == "paper"
    back = load_transformer(tmp_path, dtype=torch.float64)
    assert type(back) is FlexPixArtTransformer2DModel and back.roles == "PGSRDD"
    x, text, t, mask = inputs(t=900)
    assert torch.equal(back(x, text, t, encoder_attention_mask=mask).sample,
                       flex(x, text, t, encoder_attention_mask=mask).sample)
    # loading it again with its own density is a no-op; with another one it is an error
    assert load_transformer(tmp_path, back.density, dtype=torch.float64).roles == "PGSRDD"
    with pytest.raises(ValueError, match="cannot be converted again"):
        load_transformer(tmp_path, DensityConfig(layout="DDDDDD"))


def test_conversion_from_a_dense_folder(tmp_path):
    dense = tiny_transformer()
    dense.save_pretrained(tmp_path / "pipe" / "transformer")
    density = DensityConfig(layout="P GSR DD", schedule=ScheduleConfig(kind="constant", grid=2))
    flex = load_transformer(tmp_path / "pipe", density, dtype=torch.float64)
    expected = FlexPixArtTransformer2DModel.from_dense(dense, density)
    x, text, t, mask = inputs()
    torch.testing.assert_close(flex(x, text, t, encoder_attention_mask=mask).sample,
                               expected(x, text, t, encoder_attention_mask=mask).sample, rtol=0, atol=1e-12)
    assert type(load_transformer(tmp_path / "pipe")).__name__ == "PixArtTransformer2DModel"


def test_hub_style_config_converts(tmp_path):
    """The hub's PixArt-α folders name the class Transformer2DModel and carry its legacy keys; they load as the dense
    PixArt model and convert."""
    dense = tiny_transformer()
    dense.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(_class_name="Transformer2DModel", double_self_attention=False, num_vector_embeds=None,
                  only_cross_attention=False, use_linear_projection=False)
    (tmp_path / "config.json").write_text(json.dumps(config))
    density = DensityConfig(layout="P GSR DD", schedule=ScheduleConfig(kind="constant", grid=2))
    flex = load_transformer(tmp_path, density, dtype=torch.float64)
    x, text, t, mask = inputs()
    expected = FlexPixArtTransformer2DModel.from_dense(dense, density)(x, text, t, encoder_attention_mask=mask).sample
    torch.testing.assert_close(flex(x, text, t, encoder_attention_mask=mask).sample, expected, rtol=0, atol=1e-12)
    # the cost a `flexgen generate` record carries is counted for such a folder too
    from flexgen.t2i.generate import gmacs_per_image
    from flexgen.t2i.pixart import PixArtCost

    hub = load_transformer(tmp_path)
    cost = gmacs_per_image(hub, 4.5, [999, 500])
    assert cost["gmacs_per_forward"] == pytest.approx(PixArtCost(tiny_transformer_config()).forward_macs().gmacs)
    assert cost["gmacs_per_sample"] == pytest.approx(4 * cost["gmacs_per_forward"])


def test_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder.*PixArt-XL-2"):
        load_transformer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_transformer(tmp_path / "empty")
    tiny_transformer().save_config(tmp_path / "noweights")
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_transformer(tmp_path / "noweights")
    with pytest.raises(ValueError, match="unknown key schedule.grid_mn"):
        FlexPixArtTransformer2DModel(**tiny_transformer_config(), layout="P GSR DD", schedule={"grid_mn": 2})
    with pytest.raises(ValueError, match="exceed the token grid"):
        convert(tiny_transformer(), "P GSR DD", kind="constant", grid=5)
    with pytest.raises(ValueError, match="6 blocks"):
        convert(tiny_transformer(), "P GSR D", kind="constant", grid=2)


def test_gradient_checkpointing_gives_equal_gradients():
    flex = convert(tiny_transformer(), "P GSR DD", kind="constant", grid=2).train()
    x, text, t, mask = inputs()

    def grads():
        flex.zero_grad()
        flex(x, text, t, encoder_attention_mask=mask).sample.square().mean().backward()
        return {n: p.grad.clone() for n, p in flex.named_parameters() if p.grad is not None}

    plain = grads()
    flex.enable_gradient_checkpointing()
    assert flex.gradient_checkpointing
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(flex.parameters()))
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-9, atol=1e-12)


def test_full_size_flops_match_published_counts():
    """PixArt-α XL/2 with 120 text tokens (reference/pixart.md §1.7-1.8: 610.86 M parameters, 611.35 M for
    1024-MS; 149 / 618 / 3255 GMACs); the FlexDiT presets reach the reduction targets (≥45% at 256, ≥50% at 512)."""
    from flexgen.policies.cost import density_report
    from flexgen.t2i.pixart import PixArtCost

    torch.set_default_dtype(torch.float32)
    published = {"PixArt-XL/2-256": (610.86, 149), "PixArt-XL/2-512": (610.86, 618),
                 "PixArt-XL/2-1024-MS": (611.35, 3255)}
    for name, (params, gmacs) in published.items():
        report = PixArtCost(PRESETS[name]).forward_macs()
        assert report.params / 1e6 == pytest.approx(params, abs=0.01)
        assert report.gmacs == pytest.approx(gmacs, rel=0.002)
    for name, (lo, hi, target) in {"PixArt-XL/2-256": (5, 8, 0.45), "PixArt-XL/2-512": (10, 16, 0.50)}.items():
        density = DensityConfig(layout="PixArt-XL/2", schedule=ScheduleConfig(grid_min=lo, grid_max=hi))
        report = density_report(PixArtCost(PRESETS[name], density))
        assert report["reduction"] >= target
        assert report["stages"][0][2] == hi and report["stages"][-1][2] == lo     # most tokens at t = 0


def test_bench_cli_covers_pixart(capsys, tmp_path):
    """`flexgen bench flops` on the PixArt-α configs (the reduction targets), and `bench latency` on a small PixArt
    config: forwards, CFG steps and a whole 20-step DPM-Solver run whose steps use the grids of their timesteps."""
    from flexgen.cli import main

    assert main(["bench", "flops", "--config", "configs/t2i/pixart/flexpixart-xl2-512.yaml", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["gmacs_dense"] == pytest.approx(618, rel=0.002) and report["reduction"] >= 0.50
    assert report["latent"] == [1, 4, 64, 64] and report["text_tokens"] == 120
    assert main(["bench", "flops", "--model", "PixArt-XL/2-256", "--layout", "PixArt-XL/2", "--grid-min", "5",
                 "--grid-max", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["reduction"] >= 0.45
    assert main(["bench", "flops", "--model", "PixArt-XL/2-1024-MS", "--image-size", "512"]) == 0
    assert "617.99 G" in capsys.readouterr().out                   # the 1024-MS weights at 512 px

    assert main(["bench", "latency", "--config", "configs/t2i/pixart/flexpixart-xl2-256.yaml", "model.depth=6",
                 "model.hidden_size=24", "model.num_heads=3", "model.caption_channels=32", "data.image_size=64",
                 "density.layout=P GSR DD", "density.schedule.grid_min=2", "density.schedule.grid_max=4",
                 "--repeats", "1", "--warmup", "0", "--cfg-scale", "4.5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["forward"]["per_grid_s"]) == {"2", "3", "4"}
    sampling = report["sampling"]
    assert sampling["sampler"] == "dpm-solver++" and sampling["steps"] == 20 and sum(sampling["grids"].values()) == 20
    from flexgen.diffusion import linear_betas, make_scheduler
    expected = [grid_at(ScheduleConfig(grid_min=2, grid_max=4), int(t), 1000)
                for t in make_scheduler("dpm-solver++", linear_betas(1000), 20).timesteps]
    assert sampling["grids"] == {str(g): expected.count(g) for g in sorted(set(expected))}
    assert main(["bench", "latency", "--config", "configs/t2i/pixart/flexpixart-xl2-256.yaml", "model.depth=6",
                 "model.hidden_size=24", "model.num_heads=3", "model.caption_channels=32", "data.image_size=64",
                 "density.layout=P GSR DD", "density.schedule.grid_min=2", "density.schedule.grid_max=4",
                 "--repeats", "1", "--warmup", "0", "--attention", "flexgen", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["attention_calls"]["sdpa"] > 0     # flexgen.attention ran
    # PixArt-α offers its pipeline's samplers: a whole SA-Solver run is timed too
    assert main(["bench", "latency", "--config", "configs/t2i/pixart/flexpixart-xl2-256.yaml", "model.depth=6",
                 "model.hidden_size=24", "model.num_heads=3", "model.caption_channels=32", "data.image_size=64",
                 "density.layout=P GSR DD", "density.schedule.grid_min=2", "density.schedule.grid_max=4",
                 "--repeats", "1", "--warmup", "0", "--cfg-scale", "4.5", "--sampler", "sa-solver", "--steps", "5",
                 "--json"]) == 0
    sampling = json.loads(capsys.readouterr().out)["sampling"]
    assert sampling["sampler"] == "sa-solver" and sampling["steps"] == 5


def test_flexgen_attention_processor_matches_diffusers():
    """Our processor (flexgen.attention; text cross-attention packed to each caption's valid tokens) computes what
    diffusers' SDPA processor with the −10000 padding bias computes, dense and FlexDiT, and says which backend ran."""
    from flexgen.attention import backend_counts, reset_backend_counts
    from flexgen.t2i.pixart import FlexgenAttnProcessor, use_flexgen_attention

    dense = tiny_transformer()
    flex = convert(dense, "P GSR DD", kind="constant", grid=2)
    x, text, t, mask = inputs(batch=3)
    mask[1, 9:] = 0                                         # three different caption lengths: 16, 9, 5
    expected = [m(x, text, t, encoder_attention_mask=mask).sample for m in (dense, flex)]
    reset_backend_counts()
    for model, want in zip((use_flexgen_attention(dense), use_flexgen_attention(flex)), expected, strict=True):
        assert all(isinstance(p, FlexgenAttnProcessor) for p in model.attn_processors.values())
        torch.testing.assert_close(model(x, text, t, encoder_attention_mask=mask).sample, want, rtol=1e-9,
                                   atol=1e-10)
    assert backend_counts().get("sdpa", 0) == 6 + 6 + 5 + 6       # attn2 ×6 and attn1 ×6 dense; flex: no P attn1
    with pytest.raises(ValueError, match="drops every key"):
        dense(x, text, t, encoder_attention_mask=torch.zeros_like(mask))
