"""`flexgen bench latency` with a step cache (`flexgen.bench.cached`): whole sampling runs of the dense model, the
run's model uncached and cached, with MACs per sample from what ran (FORA's skipped steps cost the network outside
its blocks) and the ratios beside them. Times are not asserted (two cores; benchmarks are ratios, not tests)."""

import json

import pytest

from flexgen.checkpoint import save_weights
from flexgen.cli import main
from flexgen.config import load_config
from flexgen.registry import build_denoiser
from flexgen.sampling.cost import flops_per_sample
from tests.sample_helpers import SMALL, TINY, random_model

FLEX = ["density.layout=P GSR T", "density.schedule.kind=stages", "density.schedule.stages=[[0,500,2],[500,1000,4]]"]
RUNS = ["--sampler", "ddim", "--steps", "4", "--repeats", "1", "--warmup", "0", "--batch", "2", "--json"]


def bench(capsys, *argv):
    assert main(["bench", "latency", "--config", TINY, *RUNS, *argv]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def outside_blocks(model, grid=None):
    report = model.cost().forward_macs(grid)
    return report.gmacs - sum(v for k, v in report.breakdown.items() if k in model.net.block_modules)


def test_fora_on_the_dense_model_costs_its_computed_steps_and_the_rest_outside_the_blocks(tmp_path, capsys):
    model, _ = random_model()
    save_weights(model.net, tmp_path / "w.safetensors")
    result = bench(capsys, *SMALL, "cache.method=fora", "cache.interval=2", "--ckpt", str(tmp_path / "w.safetensors"))
    assert result["policy"] == "fora 2" and result["weights"].endswith("w.safetensors")
    assert result["steps"] == 4 and result["steps_computed"] == 2 and result["cfg_scale"] == 2.0   # tiny.yaml's CFG
    full = model.cost().forward_macs(None).gmacs
    gmacs = result["gmacs_per_sample"]
    assert gmacs["dense"] == pytest.approx(2 * 4 * full)                        # 4 steps × the doubled CFG batch
    assert gmacs["cached"] == pytest.approx(2 * (2 * full + 2 * outside_blocks(model)))
    ratios = result["cached_vs_dense"]
    assert ratios["mac_ratio"] == pytest.approx(gmacs["cached"] / gmacs["dense"])
    assert ratios["speedup"] == pytest.approx(result["seconds_per_run"]["dense"] / result["seconds_per_run"]["cached"])
    assert set(result["seconds_per_run"]) == {"dense", "cached"}       # the dense model is the uncached one


def test_a_cache_around_flexdit_is_timed_against_flexdit_and_dense(capsys):
    result = bench(capsys, *SMALL, *FLEX, "cache.method=fora", "cache.interval=2")
    assert result["policy"] == "fora 2 + flexdit P GSR T" and "flexdit" in result["uncached_policy"]
    flex = build_denoiser(load_config(TINY, [*SMALL, *FLEX]))
    counted = flops_per_sample(flex, "ddim", 4, 2.0)["gmacs_per_sample"]
    gmacs = result["gmacs_per_sample"]
    assert gmacs["uncached"] == pytest.approx(counted) and gmacs["uncached"] < gmacs["dense"]
    assert gmacs["cached"] < gmacs["uncached"]
    assert result["cached_vs_uncached"]["mac_ratio"] == pytest.approx(gmacs["cached"] / gmacs["uncached"])



PIXART = ["model.depth=2", "model.hidden_size=24", "model.num_heads=3", "model.caption_channels=32",
          "autoencoder.downsample=2", "data.image_size=16"]


def test_pixart_samplers_the_bench_draws_with_and_those_it_refuses():
    from flexgen.bench.cached import cached_report

    run = load_config("configs/t2i/pixart/pixart-xl2-256.yaml", [*PIXART, "cache.method=fora"])
    result = cached_report(run, sampler="dpm-solver", steps=4, repeats=1, warmup=0)   # generate's name for it
    assert result["sampler"] == "dpm-solver++" and result["steps_computed"] == 2 and result["cfg_scale"] == 4.5
    with pytest.raises(ValueError, match="draws with flexgen's samplers .* not 'euler'"):
        cached_report(run, sampler="euler", steps=4, repeats=1, warmup=0)
    faster = load_config("configs/t2i/pixart/pixart-xl2-256.yaml", [*PIXART, "cache.method=fastercache"])
    with pytest.raises(ValueError, match="batch order"):
        cached_report(faster, steps=4, repeats=1, warmup=0)
