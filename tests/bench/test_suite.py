"""`flexgen bench suite`: every policy's row on a tiny model (MACs from the counts the other benches give, latency
and memory fields consistent, the three files), the time budget skips and lists rows but still counts their MACs, the
targets are judged from the rows, the peak-memory meter sees an allocation."""

import dataclasses
import json

import pytest
import torch

from flexgen.bench.device import device_peak
from flexgen.bench.flops import dydit_flops
from flexgen.bench.memory import PeakMemory
from flexgen.bench.suite import suite_report, targets
from flexgen.bench.suite_outputs import markdown, svg, write_outputs
from flexgen.cli import main
from flexgen.config import load_config
from tests.bench_helpers import SHRINK, TINY
from tests.dydit_helpers import dydit_of, randomise_routers

POLICIES = ["dense", "FlexDiT", "DyDiT λ=0.5", "DyDiT λ=0.7", "DyDiT λ=0.5 scattered", "FlexDiT ∘ DyDiT λ=0.6"]


@pytest.fixture(scope="module")
def tiny_report():
    return suite_report([TINY], overrides=SHRINK, repeats=1, warmup=0, log=lambda line: None)


def test_every_policy_is_timed_beside_dense(tiny_report, tmp_path):
    rows = tiny_report["rows"]
    assert [r["policy"] for r in rows] == POLICIES and not tiny_report["skipped"]
    dense, dynamic = rows[0], rows[1:]
    assert dense["flops_ratio"] == 1 and dense["forward_ms"] > 0 and dense["cfg_step_ms"] > 0
    assert dense["attention"] == "sdpa" and dense["batch"] == 1 and dense["dtype"] == "float32"
    for r in dynamic:
        assert 0 < r["flops_ratio"] < 1 and r["gmacs"] == pytest.approx(r["flops_ratio"] * dense["gmacs"])
        assert r["latency_over_flops"] == pytest.approx(r["latency_ratio"] / r["flops_ratio"])
        assert r["latency_ratio"] == pytest.approx(r["forward_ms"] / r["paired_dense_forward_ms"])
        assert r["tflops"] == pytest.approx(2 * r["gmacs"] / r["forward_ms"], rel=1e-9)   # GMAC/ms = TMAC/s
        assert r["peak_mib"] > 0 and r["peak_ratio"] > 0 and "cfg_latency_ratio" in r
    # the MACs are the other benches' counts: DyDiT alone as `bench flops --target` counts it
    run = load_config(None, [*TINY.overrides(), *SHRINK, "dydit.target=0.5"])
    assert rows[2]["gmacs"] == pytest.approx(dydit_flops(run, "tiny")["gmacs"], rel=1e-9)
    assert rows[5]["flops_ratio"] < rows[1]["flops_ratio"]                 # composed below FlexDiT alone
    # synthetic routers keep the first heads and groups: the skipping forward's slices are views, none copied; the
    # scattered setting's are copies, and its tokens skipping the MLP cost less than the prefix setting at one λ
    assert [r.get("sliced_weight_bytes") for r in rows] == [None, None, 0, 0, rows[4]["sliced_weight_bytes"], 0]
    assert rows[4]["sliced_weight_bytes"] > 0 and rows[4]["flops_ratio"] < rows[2]["flops_ratio"]

    files = write_outputs(tiny_report, tmp_path / "suite")
    assert json.loads(open(files["json"]).read())["rows"] == json.loads(json.dumps(rows))
    table = open(files["markdown"]).read()
    assert sum(line.startswith("| tiny DiT |") for line in table.splitlines()) == 6 + 2 + 4   # + cache, train rows
    assert open(files["plot"]).read().count("<circle") == 2 * 5           # forward and CFG step per dynamic row


def test_the_train_rows_time_fine_tuning_steps(tiny_report):
    train = tiny_report["train_rows"]
    assert [r["policy"] for r in train] == ["FlexDiT", "DyDiT λ=0.5", "DyDiT λ=0.5 + complete rows",
                                            "FlexDiT ∘ DyDiT λ=0.6"]
    for r in train:
        assert r["dense_s"] > 0 and r["ratio"] == pytest.approx(r["dynamic_s"] / r["dense_s"])
        assert r["samples_per_s_dynamic"] == pytest.approx(r["batch"] / r["dynamic_s"]) and 0 < r["mac_ratio"] < 1
    assert [r["complete_rows"] for r in train] == [False, False, True, False]
    assert tiny_report["device_name"] == device_peak(torch.device("cpu"), torch.float32)[0]     # (not a row's name)


def test_a_train_step_trains_copies_with_the_policys_objective(monkeypatch):
    """The timed step is the policy's objective (DyDiT: its budget loss; with `complete`, the complete model's
    rows), backward and an optimizer step on copies: the bench's dense weights stay as they are."""
    from flexgen.bench.models import bench_setup
    from flexgen.bench.train_speed import train_step_report
    from flexgen.policies.dydit import routing

    base = load_config(None, [*TINY.overrides(), *SHRINK])
    bench = bench_setup(base, device="cpu", dtype=torch.float32, batch=2, seed=0, sampler=None, steps=None)
    before = {k: v.clone() for k, v in bench.dense.state_dict().items()}
    calls = []
    original = routing.dydit_losses
    monkeypatch.setattr("flexgen.policies.dydit.policy.dydit_losses",
                        lambda *a, **k: calls.append(a[7] < a[8].complete_steps) or original(*a, **k))
    run = load_config(None, [*TINY.overrides(), *SHRINK, "dydit.target=0.5", "dydit.complete_steps=10"])
    for complete in (False, True):
        report = train_step_report(bench, run, repeats=1, warmup=0, complete=complete)
        assert report["batch"] == 2 and report["complete_rows"] is complete
    assert calls == [False, True]                              # past the warm-up, then in it
    assert all(torch.equal(v, before[k]) for k, v in bench.dense.state_dict().items())


def test_the_cache_rows_time_whole_sampling_runs(tiny_report):
    # FORA 2 under DPM-Solver++ 20: half the steps run the blocks; the skipped ones cost the network outside them
    fora, flex = tiny_report["cache_rows"]
    assert (fora["policy"], flex["policy"]) == ("dense + FORA 2", "FlexDiT + FORA 2")
    assert fora["sampler"] == "dpm-solver++-20" and fora["steps_computed"] == 10 and "vs_uncached" not in fora
    dense = tiny_report["rows"][0]["gmacs"]
    assert fora["gmacs_per_sample_dense"] == pytest.approx(2 * 20 * dense)            # 20 CFG steps of the dense model
    assert 0.5 < fora["mac_ratio"] < 0.75 and flex["mac_ratio"] < fora["mac_ratio"]
    assert flex["vs_uncached"]["mac_ratio"] < 1 and flex["speedup"] == pytest.approx(1 / flex["latency_ratio"])


def test_the_time_budget_skips_and_lists_rows_but_counts_their_macs():
    report = suite_report([TINY], overrides=SHRINK, time_budget=1e-3, log=lambda line: None)
    assert [s["policy"] for s in report["skipped"]] == ["all"] and "s left" in report["skipped"][0]["why"]
    rows = report["rows"]
    assert [r["policy"] for r in rows] == POLICIES
    assert all("forward_ms" not in r for r in rows) and all(0 < r["flops_ratio"] <= 1 for r in rows)
    assert "Skipped (time budget" in markdown(report) and "<circle" not in svg(report)


def row(model, policy, speedup, over, peak_ratio):
    return {"model": model, "policy": policy, "latency_ratio": 1 / speedup, "speedup": speedup,
            "latency_over_flops": over, "cfg_latency_over_flops": over, "peak_ratio": peak_ratio}


def test_targets_are_judged_from_the_rows():
    rows = [row("DiT-XL/2 512", "FlexDiT", 2.7, 1.05, 0.9), row("PixArt-α 512", "FlexDiT", 2.2, 1.2, 1.1)]
    gpu = targets(rows, torch.device("cuda"), torch.bfloat16, 8)
    assert [t["met"] for t in gpu] == [True, False, False, False]
    assert gpu[2]["measured"] == "1 of 2" and "PixArt-α 512 FlexDiT" in gpu[2]["note"]
    assert gpu[3]["note"] == "PixArt-α 512 FlexDiT (1.10×)"
    cpu = targets(rows, torch.device("cpu"), torch.float32, 1)
    assert cpu[0]["met"] is None and cpu[0]["measured"] == 2.7            # measured, not judged off the GPU protocol


def test_peak_memory_sees_an_allocation():
    meter = PeakMemory(torch.device("cpu"))
    grown = meter(lambda: torch.ones(64, 2 ** 20, dtype=torch.float32).sum())    # 256 MiB, touched
    assert grown > 200 * 2 ** 20
    assert meter(lambda: None) < 64 * 2 ** 20


def test_peak_memory_sees_a_warmed_up_calls_temporaries():
    # What a timed forward looks like: temporaries of a few MiB each, freed, then allocated again by the next call.
    # The allocator keeps the freed chunks, so the resident set does not grow the second time; malloc's bytes in
    # use do (glibc's mallinfo2).
    meter = PeakMemory(torch.device("cpu"))
    if meter.measured != "malloc bytes in use":
        pytest.skip(f"this C library has no mallinfo2 (measuring {meter.measured})")

    def call():
        held = [torch.ones(2 ** 21) for _ in range(32)]                          # 32 × 8 MiB = 256 MiB
        return sum(float(t[0]) for t in held)
    call()
    assert meter(call) > 200 * 2 ** 20


def test_device_peak_on_the_cpu():
    name, peak, source = device_peak(torch.device("cpu"), torch.float32)
    assert name and (peak is None or peak > 0) and source


def test_cli_rejects_unknown_models(capsys):
    assert main(["bench", "suite", "--models", "dit-xl2-512", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown suite model(s) nope" in err and "pixart-1024-ms" in err


def test_compiled_timing_builds_no_graph_after_the_warm_up():
    # A traced global counter (flexgen.attention's backend counts) made dynamo guard on its value and recompile on
    # every call; compiled rows now build their graphs in the eager pass and the warm-up only.
    from flexgen.bench.latency import latency_report

    run = load_config(None, [*TINY.overrides(), *SHRINK, "dydit.target=0.5"])
    result = latency_report(run, repeats=2, warmup=1, compile=True)
    assert result["compiled"] and result["graphs_compiled_while_timed"] == 0
    assert result["attention_calls"] == {"sdpa": 2 * 6}   # the eager pass: dense and DyDiT, 6 blocks each
    assert result["forward"]["dynamic_s"] > 0


@pytest.mark.slow
def test_the_gpu_checks_script_runs_dry_on_the_cpu_without_the_video_and_metric_packages(tmp_path):
    """eval/gpu-checks.sh, as a GPU session runs it, with DRY_RUN=1 (the CPU, a tiny DiT) and av, decord, clean-fid
    and xformers made unimportable: the CUDA tests report (skipped here) and the suite's files are written."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    stubs = tmp_path / "absent"
    for name in ("av", "decord", "cleanfid", "xformers"):
        (stubs / name).mkdir(parents=True)
        (stubs / name / "__init__.py").write_text(f"raise ImportError('{name} is not on the GPU image')\n")
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path / "out"), "BUDGET": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(stubs), os.environ.get("PYTHONPATH")])),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(["bash", str(repo / "eval" / "gpu-checks.sh")], capture_output=True, text=True,
                          timeout=900, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipped" in (tmp_path / "out" / "pytest-cuda.txt").read_text()
    report = json.loads((tmp_path / "out" / "bench-suite-cpu-float32" / "suite.json").read_text())
    assert report["rows"] and all("forward_ms" in r for r in report["rows"]) and report["train_rows"]


def test_interleaved_timing_keeps_each_keys_slices():
    # measure() cycles dense, t1 … tk in every repeat; with a trained router's scattered patterns and one held copy
    # per block, every timed call would copy its slices again (a cost a sampler walking t in order does not pay).
    from flexgen.bench.measure import measure
    from flexgen.bench.models import bench_setup, dynamic_plan

    run = load_config(None, [*TINY.overrides(), *SHRINK, "dydit.target=0.5"])
    bench = bench_setup(run, device="cpu", dtype=torch.float32, batch=1, seed=0, sampler=None, steps=None)
    plan = dynamic_plan(bench, run)               # synthetic routers: one key; trained ones are timed at several t
    keys = [999, 500, 10]
    plan = dataclasses.replace(plan, keys=keys, t_of={t: t for t in keys},
                               average=lambda median: sum(median[t] for t in keys) / len(keys))
    randomise_routers(plan.model)
    caches, takes = dydit_of(plan.model.net).slice_caches(), [0] * len(dydit_of(plan.model.net).slice_caches())
    for i, cache in enumerate(caches):
        def counted(*args, _take=cache._take, _i=i):
            takes[_i] += 1
            return _take(*args)
        cache._take = counted
    result = measure(bench, plan, repeats=2, warmup=1)
    assert len(plan.keys) > 1 and max(result["sliced_weight_patterns"]) > 1     # several scattered patterns
    assert result["sliced_weight_bytes"] > 0 and all(cache.max_copies == 1 for cache in caches)   # limit restored
    # each pattern copied once in the timed loop, plus at most one per key in the memory pass (one copy held)
    assert all(n <= cache.patterns + len(plan.keys) for n, cache in zip(takes, caches, strict=True))
