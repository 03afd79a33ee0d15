"""`flexgen calibrate` (`flexgen.policies.cache.calibrate`): the fit recovers a known polynomial, the simulated
TeaCache decisions follow the rule, and the command writes coefficients a run config takes back."""

import json

import numpy as np
import pytest

from flexgen.checkpoint import save_weights
from flexgen.cli import main
from flexgen.config import ConfigError, load_config
from flexgen.policies.cache.calibrate import computed_steps, decisions, fit_rescale
from flexgen.policies.cache.config import CacheConfig
from flexgen.sample import sample_main
from tests.sample_helpers import SMALL, TINY, parse, random_model


def test_the_fit_recovers_a_known_polynomial():
    # TeaCache's degree-4 rescaling on indicator changes in [0, 0.4], the outputs measured with a little noise.
    truth = [40.0, -12.0, 3.0, 0.8, 0.01]                            # highest degree first
    x = np.random.default_rng(0).uniform(0, 0.4, 300)
    y = np.polyval(truth, x) + np.random.default_rng(1).normal(0, 1e-4, x.size)
    fit = fit_rescale(x, y)
    np.testing.assert_allclose(fit["coefficients"], truth, rtol=0.02, atol=2e-3)
    assert fit["points"] == 300 and fit["rms_error"] < 2e-4 and fit["relative_rms_error"] < 1e-3
    with pytest.raises(ValueError, match="more than 4"):
        fit_rescale([0.1, 0.2], [0.1, 0.2])


def test_the_simulated_decisions_follow_the_rule():
    changes = [0.1, 0.1, 0.1, 0.1, 0.1]                               # six forwards: the first has no change
    assert computed_steps(changes, CacheConfig("teacache", threshold=0)) == 6
    assert computed_steps(changes, CacheConfig("teacache", threshold=100)) == 2          # the first and the last
    # 0.25: the sums reach 0.3 at the 3rd change and again at the 6th (the last): steps 0, 3, 5 compute
    assert computed_steps(changes, CacheConfig("teacache", threshold=0.25)) == 3
    # rescaled by 2x: the sum reaches 0.4 every 2nd change
    assert computed_steps(changes, CacheConfig("teacache", threshold=0.35, coefficients=[2.0, 0.0])) == 4
    # a change of what the blocks depend on (DyDiT's width pattern: the forwards' keys) forces a computed step and
    # restarts the sum: at 0.25 steps 0, 2 (new key), 5 (sum 0.3 at step 5, also the last) compute
    assert decisions(changes, CacheConfig("teacache", threshold=0.25), ["a", "a", "b", "b", "b", "b"]) == \
        [True, False, True, False, False, True]
    assert decisions(changes, CacheConfig("teacache", threshold=100), list("abcdef")) == [True] * 6


def test_flexgen_calibrate_writes_coefficients_a_run_takes(tmp_path, capsys):
    model, _ = random_model()
    save_weights(model.net, tmp_path / "dense.safetensors")
    out = tmp_path / "calib.json"
    assert main(["calibrate", "--config", TINY, "--ckpt", str(tmp_path / "dense.safetensors"), "--out", str(out),
                 "--num-samples", "4", "--batch-size", "2", "--sampler", "ddim", "--steps", "6", "--degree", "2",
                 "--thresholds", "0,0.1,1,100", *SMALL]) == 0
    result = json.loads(out.read_text())
    assert len(result["coefficients"]) == 3 and result["points"] == 2 * 5              # 2 runs × 5 changes
    assert result["fitted_on"]["steps"] == 6 and result["fitted_on"]["runs"] == 2
    assert len(result["fitted_on"]["checkpoint_sha256"]) == 64
    steps = [row["steps_computed"] for row in result["thresholds"]]
    assert steps[0] == 6 and steps[-1] == 2 and steps == sorted(steps, reverse=True)
    gmacs = [row["gmacs_per_sample"] for row in result["thresholds"]]
    assert gmacs == sorted(gmacs, reverse=True) and gmacs[0] == pytest.approx(result["uncached_gmacs_per_sample"])
    assert f"use: cache.method=teacache cache.calibration={out} " in capsys.readouterr().out
    coefficients = "[" + ",".join(repr(c) for c in result["coefficients"]) + "]"
    run = load_config(TINY, ["cache.method=teacache", f"cache.coefficients={coefficients}"])
    assert run.cache.coefficients == result["coefficients"]
    assert load_config(TINY, ["cache.method=teacache", f"cache.calibration={out}"]).cache.coefficients == \
        result["coefficients"]
    with pytest.raises(ConfigError, match="cache.coefficients: differ from those of"):
        load_config(TINY, ["cache.method=teacache", f"cache.calibration={out}", "cache.coefficients=[1.0]"])
    with pytest.raises(ConfigError, match="cache.calibration: .*nowhere.json does not exist"):
        load_config(TINY, ["cache.method=teacache", f"cache.calibration={tmp_path / 'nowhere.json'}"])

    # Where the file is used, what it was fitted on is checked: another model's weights are refused by name, another
    # sampler is warned about; the samples record the cache with its coefficients.
    def sample(name, ckpt, *extra):
        return sample_main(parse("--config", TINY, "--ckpt", ckpt, "--num-samples", 2, "--sampler", "ddim",
                                 "--steps", 6, "--out", tmp_path / name, "--no-progress", *SMALL,
                                 "cache.method=teacache", "cache.threshold=0.1", f"cache.calibration={out}", *extra))

    record = sample("ok", tmp_path / "dense.safetensors")
    assert record["settings"]["policy"]["cache"]["coefficients"] == result["coefficients"]
    other, _ = random_model(seed=1)
    save_weights(other.net, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match=r"was fitted on another model \(checkpoint_sha256: fitted"):
        sample("other", tmp_path / "other.safetensors")
    capsys.readouterr()
    sample("sampler", tmp_path / "dense.safetensors", "--sampler", "ddpm")
    assert "was fitted on another run (sampler: fitted 'ddim', now 'ddpm')" in capsys.readouterr().err


def test_flexgen_calibrate_method_mag_stores_diffusers_ratios_a_run_takes(tmp_path, capsys):
    model, _ = random_model()
    save_weights(model.net, tmp_path / "dense.safetensors")
    out = tmp_path / "mag.json"
    assert main(["calibrate", "--method", "mag", "--config", TINY, "--ckpt", str(tmp_path / "dense.safetensors"),
                 "--out", str(out), "--num-samples", "4", "--batch-size", "2", "--sampler", "ddim", "--steps", "6",
                 *SMALL]) == 0
    result = json.loads(out.read_text())
    assert result["method"] == "mag" and result["runs"] == 2 and len(result["ratios_per_run"]) == 2
    ratios = result["mag_ratios"]
    assert len(ratios) == 6 and ratios[0] == 1.0 and all(r > 0 for r in ratios)
    assert result["mag_ratios"] == pytest.approx(list(np.mean(result["ratios_per_run"], axis=0)))
    run = load_config(TINY, ["cache.method=mag", f"cache.calibration={out}", "cache.diffusers.threshold=0.1"])
    assert run.cache.diffusers["mag_ratios"] == result["mag_ratios"]
    with pytest.raises(ConfigError, match="a mag calibration, not teacache's"):
        load_config(TINY, ["cache.method=teacache", f"cache.calibration={out}"])
    record = sample_main(parse("--config", TINY, "--ckpt", tmp_path / "dense.safetensors", "--num-samples", 2,
                               "--sampler", "ddim", "--steps", 6, "--out", tmp_path / "mag", "--no-progress", *SMALL,
                               "cache.method=mag", f"cache.calibration={out}", "cache.diffusers.threshold=0.5"))
    assert record["method"] == "mag 0.5" and record["cost"]["flops_fraction"] < 1


FLEX = ["density.layout=P GSR T", "density.schedule.kind=stages", "density.schedule.stages=[[0,500,2],[500,1000,4]]"]


def test_the_estimated_cost_is_the_models_own_and_bench_plan_finds_the_threshold_for_a_budget(tmp_path, capsys):
    from flexgen.policies.cache.calibrate import estimate
    from flexgen.registry import build_denoiser
    from flexgen.sampling.cost import flops_per_sample

    model, _ = random_model(FLEX)
    save_weights(model.net, tmp_path / "flex.safetensors")
    out = tmp_path / "calib.json"
    assert main(["calibrate", "--config", TINY, "--ckpt", str(tmp_path / "flex.safetensors"), "--out", str(out),
                 "--num-samples", "4", "--batch-size", "2", "--sampler", "ddim", "--steps", "8", "--degree", "2",
                 *SMALL, *FLEX]) == 0
    result = json.loads(out.read_text())
    assert result["fitted_on"]["policy"] == "flexdit P GSR T"
    # at threshold 0 every step runs: FlexDiT's own sampling cost (each step at its grid) plus the indicator
    flex = build_denoiser(load_config(TINY, [*SMALL, *FLEX]))
    counted = flops_per_sample(flex, "ddim", 8, 2.0)
    indicator = 2 * 8 * flex.net.indicator_macs() / 1e9
    assert result["thresholds"][0]["gmacs_per_sample"] == pytest.approx(counted["gmacs_per_sample"] + indicator)
    assert result["dense_gmacs_per_sample"] == pytest.approx(counted["gmacs_per_sample_dense"])
    capsys.readouterr()
    fractions = []
    for budget in (0.6, 0.45):
        assert main(["bench", "plan", "--calibration", str(out), "--budget", str(budget), "--json"]) == 0
        plan = json.loads(capsys.readouterr().out)
        threshold, dense = plan["teacache"]["threshold"], result["dense_gmacs_per_sample"]
        gmacs, steps = estimate(result["recorded"], result["coefficients"], threshold)   # the threshold as shown
        assert gmacs / dense == pytest.approx(plan["teacache"]["fraction_of_dense"]) and gmacs <= budget * dense
        assert steps == plan["teacache"]["steps_computed"] and f"cache.threshold={threshold} " in plan["use"]
        if threshold > 0:            # the edge rounded up to few digits (within 10%): 15% less exceeds the budget
            assert estimate(result["recorded"], result["coefficients"], 0.85 * threshold)[0] > budget * dense
        fractions.append(threshold)
    assert fractions[1] >= fractions[0]
    assert main(["bench", "plan", "--calibration", str(out), "--budget", "0.001", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["teacache"]["threshold"] is None     # first + last steps exceed it
