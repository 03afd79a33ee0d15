"""`flexgen bench plan` (policies/plan.py): schedules within a MACs budget under a sampler, and the DyDiT λ for it."""

import json

import pytest

from flexgen.config import load_config
from flexgen.policies.cost import sampling_cost
from flexgen.policies.plan import plan, sampler_timesteps
from flexgen.registry import build_denoiser


def tiny(*overrides):
    return load_config("configs/demo/tiny.yaml", ["density.layout=PGSRT", *overrides])


def test_plans_meet_the_budget_and_cost_what_the_sampler_visits():
    run = tiny()
    result = plan(run, 0.7, "ddim", 50, top=500)
    rows = result["flexdit"]
    assert rows and all(r["flops_fraction"] <= 0.7 for r in rows)
    assert [r["tokens_kept"] for r in rows] == sorted((r["tokens_kept"] for r in rows), reverse=True)
    assert {r["pool_frames"] for r in rows} == {0, 4}                         # per frame and across frames
    best = rows[0]
    density = [f"density.schedule.grid_min={best['grid_min']}", f"density.schedule.grid_max={best['grid_max']}",
               f"density.schedule.reading={best['reading']}", f"density.pool_frames={best['pool_frames']}"]
    model = build_denoiser(tiny(*density))
    cost = sampling_cost(model.cost(), sampler_timesteps(run, "ddim", 50))    # the sample command's own count
    assert best["gmacs_per_sample"] == pytest.approx(cost["gmacs_per_sample"], rel=1e-9)
    assert best["flops_fraction"] == pytest.approx(1 - cost["reduction"], rel=1e-9)
    # another sampler visits other timesteps: the same schedule costs another share of dense
    same = {(r["grid_min"], r["grid_max"], r["reading"], r["pool_frames"]): r["flops_fraction"] for r in rows}
    other = {(r["grid_min"], r["grid_max"], r["reading"], r["pool_frames"]): r["flops_fraction"]
             for r in plan(run, 1.0, "dpm-solver++", 20, top=500)["flexdit"]}
    assert any(abs(same[k] - other[k]) > 1e-3 for k in same)


def test_dydit_target_and_bad_budget(capsys):
    from flexgen.cli import main

    run = tiny()
    result = plan(run, 0.5, "ddim", 50)
    dy = result["dydit"]
    dense = result["gmacs_per_forward_dense"]
    assert dy["reachable"] and dy["fixed_gmacs"] + dy["target"] * dy["blocks_gmacs"] == pytest.approx(0.5 * dense)
    assert plan(run, 0.001, "ddim", 50)["dydit"]["reachable"] is False        # below the fixed costs
    with pytest.raises(ValueError, match="budget"):
        plan(run, 1.5, "ddim", 50)
    assert main(["bench", "plan", "--config", "configs/demo/tiny.yaml", "density.layout=PGSRT", "--budget", "0.6",
                 "--sampler", "ddim", "--steps", "50", "--top", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["flexdit"]) == 3 and report["steps"] == 50
    # no preset layout has the demo's 5 blocks: said so, not "0 of 0 schedules fit" (issue 30)
    assert main(["bench", "plan", "--config", "configs/demo/tiny.yaml", "--budget", "0.6", "--steps", "10"]) == 0
    assert "no FlexDiT layout preset has its 5 blocks (set density.layout" in capsys.readouterr().out


def test_a_trained_dydit_reports_what_each_sampler_realises(tmp_path, capsys):
    from flexgen.checkpoint import save_weights
    from flexgen.cli import main
    from tests.dydit_helpers import SMALL, randomise_routers, run_config

    model = randomise_routers(build_denoiser(run_config(*SMALL, "dydit.target=0.5")))
    save_weights(model.net, tmp_path / "dy.safetensors")
    assert main(["bench", "plan", "--config", "configs/demo/tiny.yaml", *SMALL, "dydit.target=0.5", "--budget", "0.6",
                 "--ckpt", str(tmp_path / "dy.safetensors"), "--num-samples", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    realised = {r["sampler"]: r for r in report["trained"]["realised"]}
    assert set(realised) == {"ddpm", "ddim", "dpm-solver++"} and realised["ddpm"]["steps"] == 250
    assert all(0 < r["flops_fraction"] < 1 for r in realised.values())
    assert len({round(r["flops_fraction"], 6) for r in realised.values()}) > 1   # the samplers visit other t
    assert main(["bench", "flops", "--config", "configs/demo/tiny.yaml", *SMALL, "dydit.target=0.5",
                 "sample.sampler=ddim", "sample.steps=50", "--ckpt", str(tmp_path / "dy.safetensors"),
                 "--num-samples", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["flops_ratio"] == pytest.approx(realised["ddim"]["flops_fraction"])


def test_the_composed_lambda_meets_the_budget_it_was_planned_for():
    # FlexDiT ∘ DyDiT: the planned λ is a fraction of each FlexDiT forward; with every timestep visited (DDPM-1000)
    # the synthetic λ setting of `bench flops` (mean over the schedule's stages) costs the budget, up to the rounding
    # of heads and MLP groups to whole units (16 heads here, so a unit is 1/16 of a block)
    from flexgen.bench.flops import dydit_flops

    composed = ["density.schedule.kind=constant", "density.schedule.grid=4", "model.num_heads=16", "dydit.target=0.5"]
    run = tiny(*composed)
    result = plan(run, 0.45, "ddpm", 1000)
    assert result["composed"]["reachable"] and result["dydit"]["reachable"]
    lam = result["composed"]["target"]
    assert lam > result["dydit"]["target"]                  # FlexDiT already removed part of the budget
    measured = dydit_flops(tiny(*composed[:3], f"dydit.target={lam}"), "tiny")
    assert measured["policy"] == "FlexDiT ∘ DyDiT" and measured["flexdit_ratio"] < 1
    assert measured["flops_ratio"] == pytest.approx(0.45, abs=0.02)
