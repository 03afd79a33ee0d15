"""The `flexgen` command line: every subcommand has --help, bench flops prints JSON, errors are clean."""

import json
import subprocess
import sys

import pytest

from flexgen.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "flexgen", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", [[], ["bench"], ["bench", "flops"], ["config"], ["convert"], ["demo"]])
def test_help(command):
    result = run(*command, "--help")
    assert result.returncode == 0 and "usage: flexgen" in result.stdout


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

    from flexgen.checkpoint import load_model
    from flexgen.config import load_config
    from flexgen.video.latte import latte_config_from_run
    from tests.reference_latte import official_state_dict

    cfg = latte_config_from_run(load_config("configs/demo/tiny.yaml"))
    torch.save({"ema": {k: v.float() for k, v in official_state_dict(cfg).items()}}, tmp_path / "dense.pt")
    assert main(["convert", "--from", str(tmp_path / "dense.pt"), "--config", "configs/demo/tiny.yaml",
                 "--out", str(tmp_path / "dense.safetensors")]) == 0
    assert load_model(tmp_path / "dense.safetensors").config == cfg
    assert main(["convert", "--from", str(tmp_path / "missing.pt"), "--config", "configs/demo/tiny.yaml",
                 "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "weights file not found" in capsys.readouterr().err
