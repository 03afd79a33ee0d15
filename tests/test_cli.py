"""The `flexgen` command line: every subcommand has --help, bench flops prints JSON, errors are clean."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flexgen.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "flexgen", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", [[], ["bench"], ["bench", "flops"], ["bench", "latency"], ["config"], ["convert"],
                                     ["eval"], ["leaderboard"], ["data", "prepare"],
                                     ["train"], ["sample"], ["demo"]])
@pytest.mark.slow
def test_help(command):
    result = run(*command, "--help")
    assert result.returncode == 0 and "usage: flexgen" in result.stdout


@pytest.mark.slow
def test_bench_flops_json():
    result = run("bench", "flops", "--model", "DiT-XL/2", "--image-size", "256", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["gmacs"] == pytest.approx(118.6, rel=0.005) and report["params"] == 674_834_720


def test_bench_flops_from_config(capsys):
    assert main(["bench", "flops", "--config", "configs/demo/tiny.yaml", "data.num_frames=4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["latent"] == [4, 3, 16, 16] and report["num_classes"] == 4


def test_config_errors_exit_2(capsys, tmp_path):
    assert main(["config", "configs/demo/tiny.yaml", "train.lrr=1"]) == 2
    assert "unknown key train.lrr" in capsys.readouterr().err


def test_convert_official_checkpoint(tmp_path, capsys):
    import torch

    from flexgen.backbones.latte import latte_config_from_run
    from flexgen.checkpoint import load_model
    from flexgen.config import load_config
    from tests.reference_latte import official_state_dict

    cfg = latte_config_from_run(load_config("configs/demo/tiny.yaml"))
    torch.save({"ema": {k: v.float() for k, v in official_state_dict(cfg).items()}}, tmp_path / "dense.pt")
    assert main(["convert", "--from", str(tmp_path / "dense.pt"), "--config", "configs/demo/tiny.yaml",
                 "--out", str(tmp_path / "dense.safetensors")]) == 0
    assert load_model(tmp_path / "dense.safetensors").config == cfg
    assert main(["convert", "--from", str(tmp_path / "missing.pt"), "--config", "configs/demo/tiny.yaml",
                 "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "weights file not found" in capsys.readouterr().err


def test_bench_flops_dense_vs_flexdit(capsys):
    assert main(["bench", "flops", "--model", "DiT-XL/2", "--image-size", "512", "--layout", "DiT-XL/2",
                 "--grid-min", "12", "--grid-max", "20", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["gmacs_dense"] == pytest.approx(524.5, rel=0.005)
    assert report["gmacs_released_code"] == pytest.approx(286, rel=0.005)           # the paper's row
    assert report["reduction"] == pytest.approx(1 - report["gmacs"] / report["gmacs_dense"])
    assert [s[2] for s in report["stages"]] == list(range(20, 11, -1))
    assert main(["bench", "flops", "--config", "configs/video/ffs/flexlatte-xl2.yaml"]) == 0
    assert "fewer than dense" in capsys.readouterr().out


def test_bench_latency_runs_and_reports_ratios(capsys):
    assert main(["bench", "latency", "--config", "configs/demo/tiny.yaml", "density.layout=PGSRT",
                 "density.schedule.grid_min=2", "density.schedule.grid_max=4", "--repeats", "1", "--warmup", "0",
                 "--cfg-scale", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["forward"]["per_grid_s"]) == {"2", "3", "4"}
    for kind in ("forward", "cfg_step"):
        r = report[kind]
        assert r["dense_s"] > 0 and r["latency_ratio"] == pytest.approx(r["dynamic_s"] / r["dense_s"])
    assert 0 < report["flops_ratio"] < 1
    assert set(report["attention_calls"]) == {"sdpa"} and report["attention_calls"]["sdpa"] > 0
    assert main(["bench", "latency", "--config", "configs/demo/tiny.yaml"]) == 2     # no density: nothing to compare
    assert "compares dense with FlexDiT" in capsys.readouterr().err
    # --sampler offers what the model's family offers (Latte / DiT: the IDDPM-exact ddpm, ddim, dpm-solver++)
    assert main(["bench", "latency", "--config", "configs/demo/tiny.yaml", "density.layout=PGSRT",
                 "density.schedule.grid_min=2", "density.schedule.grid_max=4", "--cfg-scale", "3", "--sampler",
                 "euler"]) == 2
    assert "samples with ddpm, ddim, dpm-solver++, not 'euler'" in capsys.readouterr().err


def test_convert_dense_checkpoint_to_flexdit(tmp_path):
    import torch

    from flexgen.checkpoint import load_model
    from flexgen.config import load_config
    from flexgen.policies import FlexDiT
    from flexgen.registry import build_denoiser
    from flexgen.video import Latte
    from tests.reference_latte import official_state_dict

    flex_args = ["density.layout=PGSRT", "density.schedule.kind=constant", "density.schedule.grid=3"]
    cfg = load_config("configs/demo/tiny.yaml", flex_args)
    torch.save({"ema": {k: v.float() for k, v in official_state_dict(build_denoiser(load_config(
        "configs/demo/tiny.yaml")).config, std=0.05).items()}}, tmp_path / "dense.pt")
    assert main(["convert", "--from", str(tmp_path / "dense.pt"), "--config", "configs/demo/tiny.yaml",
                 "--out", str(tmp_path / "dense.safetensors")]) == 0
    assert main(["convert", "--from", str(tmp_path / "dense.pt"), "--config", "configs/demo/tiny.yaml", *flex_args,
                 "--out", str(tmp_path / "flex.safetensors")]) == 0
    dense, flex = load_model(tmp_path / "dense.safetensors").eval(), load_model(tmp_path / "flex.safetensors").eval()
    assert type(dense) is Latte and dense.policy.dense and flex.policy.part(FlexDiT).density == cfg.density
    expected = dense.converted(FlexDiT(cfg.density)).eval()
    x, t, y = torch.randn(2, 8, 3, 16, 16), torch.tensor([10, 10]), torch.tensor([0, 3])
    assert torch.equal(flex(x, t, y), expected(x, t, y))
    # A FlexDiT file loads back into a FlexDiT model (no second conversion), not into a dense one.
    with pytest.raises(ValueError, match="unexpected keys: fusions"):
        from flexgen.checkpoint import load_weights
        load_weights(build_denoiser(load_config("configs/demo/tiny.yaml")).net, tmp_path / "flex.safetensors")


def test_default_run_dir_follows_the_runs_identity():
    # Issue 11, item 4: reordered overrides, or a longer run, find the same directory; another run another one.
    from flexgen.cli import default_run_dir

    tiny = "configs/demo/tiny.yaml"
    plain = default_run_dir(tiny, [], "results")
    assert plain == Path("results/tiny")
    assert default_run_dir(tiny, ["train.total_samples=99999", "data.num_workers=2"], "results") == plain
    a = default_run_dir(tiny, ["train.lr=2e-3", "train.seed=5"], "results")
    assert a != plain and a == default_run_dir(tiny, ["train.seed=5", "train.lr=2e-3"], "results")
    assert default_run_dir(tiny, ["train.seed=5", "train.lr=2e-3", "train.total_samples=1"], "results") == a
    assert default_run_dir(tiny, ["train.lr=3e-3", "train.seed=5"], "results") != a


def test_version_and_whole_option_names(capsys):
    """issue 30: `flexgen --version`; an abbreviated option (`--num-sam`) is unrecognized, not silently another."""
    import flexgen

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"flexgen {flexgen.__version__}"
    with pytest.raises(SystemExit) as exit_:
        main(["sample", "--config", "configs/demo/tiny.yaml", "--ckpt", "w", "--out", "o", "--num-sam", "3"])
    assert exit_.value.code == 2 and "unrecognized arguments: --num-sam" in capsys.readouterr().err
