"""`flexgen demo --quick`: the whole loop on generated mp4 files, end to end (the CI's reduced demo): data, the
SynthMotion yardstick, dense training, FlexDiT / DyDiT / composed fine-tuning, sampling, records, the board."""

import json

import pytest

from flexgen.cli import main
from flexgen.data.media import read_video
from flexgen.files import file_sha256
from flexgen.metrics.records import read_records
from flexgen.sampling.manifest import SampleManifest


@pytest.mark.slow
def test_quick_demo_runs_the_whole_loop(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| Latte (dense) |" in printed and "| FlexDiT-Latte |" in printed and "fd ↓" in printed
    assert "| DyDiT-Latte |" in printed and "| FlexDiT∘DyDiT-Latte |" in printed and "| real clips (floor" in printed
    result = json.loads((out / "demo.json").read_text())
    dense, flex, dy, composed, fora, tea, flex_tea, dy_tea, *fewer = result["rows"]
    # The training-free caches: FORA every 2nd step on the dense model (3 of 5 computed), TeaCache calibrated here
    # on the dense model, on FlexDiT and on DyDiT (each its own polynomial), sampled around each
    assert fora["model"] == "Latte (dense) + FORA 2" and tea["model"].startswith("Latte (dense) + TeaCache ")
    assert flex_tea["model"].startswith("FlexDiT-Latte + TeaCache ") and flex_tea["run"] == "flexdit"
    assert dy_tea["model"].startswith("DyDiT-Latte + TeaCache ") and dy_tea["run"] == "dydit"
    assert fora["gmacs_per_video"] < 0.7 * dense["gmacs_per_video"]
    assert SampleManifest.read(out / "dense" / "samples-fora2" / "samples.json").method == "fora 2"
    tag = "samples-teacache" + flex_tea["model"].rsplit(" ", 1)[1]
    assert SampleManifest.read(out / "flexdit" / tag / "samples.json").method.startswith("teacache")
    assert flex_tea["gmacs_per_video"] < flex["gmacs_per_video"]            # it skipped steps
    assert dy_tea["gmacs_per_video"] < 1.01 * dy["gmacs_per_video"]   # (DyDiT's changing pattern may force every step)
    # The fewer-steps frontier: the dense model again at 1 step and at the counts matching each policy's and
    # cache's cost (rounded; 5 steps is the quick budget's every-row count), all with the one sampler.
    matched = {min(5, max(1, round(5 * r["gmacs_per_video"] / dense["gmacs_per_video"])))    # (5 // 10: grain 1)
               for r in (flex, dy, composed, fora, tea, flex_tea, dy_tea)}
    assert [r["steps"] for r in fewer] == sorted({1, *matched} - {5})
    assert all(r["model"] == "Latte (dense)" and r["sampler"].startswith("dpm-solver++") for r in fewer)
    assert all(r["vs_frontier"]["tone_synthmotion"] == "frontier" for r in (dense, *fewer))
    assert {flex["vs_frontier"]["tone_synthmotion"]} <= {"above", "on", "below"}
    assert flex["gmacs_per_video"] < 0.8 * dense["gmacs_per_video"]          # FlexDiT is cheaper per video
    # DyDiT's cost is measured from its kept counts (two quick steps barely move the routers: dense + routers)
    dy_manifest = SampleManifest.read(out / "dydit" / "samples" / "samples.json")
    assert dy_manifest.method == "dydit 0.5"          # fine-tuned from a conversion: its export says it was trained
    dy_cost = dy_manifest.cost
    assert dy["gmacs_per_video"] == dy_cost["gmacs_per_sample"]
    assert dy_cost["flops_fraction"] == pytest.approx(dy["gmacs_per_video"] / dense["gmacs_per_video"])
    assert "sliced_weight_patterns" in dy_cost
    # the composed model's cost too, from its kept counts on FlexDiT's token sets: at most FlexDiT's and its
    # routers' (two quick steps barely move the routers), less than DyDiT alone
    composed_cost = SampleManifest.read(out / "flexdydit" / "samples" / "samples.json").cost
    assert composed["gmacs_per_video"] == composed_cost["gmacs_per_sample"]
    assert composed["gmacs_per_video"] < min(1.02 * flex["gmacs_per_video"], dy["gmacs_per_video"])
    detector = result["detector"]
    assert file_sha256(detector["path"]) == detector["sha256"] and detector["heldout_videos"] == 32   # 4 × 8 classes
    # a share of its 32 videos (20 quick steps: no level to expect)
    assert 0 <= detector["heldout_accuracy"] <= 1 and (32 * detector["heldout_accuracy"]).is_integer()
    for row in (dense, flex, dy, composed):
        # acc_synthmotion: a share of the 16 samples (the quick models are barely trained: no level to expect)
        assert 0 <= row["acc_synthmotion"] <= 1 and (16 * row["acc_synthmotion"]).is_integer()
        assert row["fd_synthmotion"] > 0 and row["seconds_per_video"] > 0
        for metric in ("acc_synthmotion", "tone_synthmotion", "track_synthmotion", "fd_synthmotion"):
            low, high = row[f"{metric}_interval"]
            assert low <= row[metric] + 1e-9 and row[metric] <= high + 1e-9
        folder = out / row["run"] / "samples"
        manifest = SampleManifest.read(folder / "samples.json")
        assert manifest.complete and len(manifest.samples) == 16            # BUDGETS["quick"]: 16 videos
        assert read_video(folder / manifest.samples[0].file).shape == (8, 16, 16, 3)
        assert (out / row["run"] / "ema.safetensors").is_file()
    # The same seeds and labels for every model; the records feed the board.
    labels = [[s.label for s in SampleManifest.read(out / r["run"] / "samples" / "samples.json").samples]
              for r in (dense, flex, dy, composed)]
    assert labels[0] == labels[1] == labels[2] == labels[3]
    records = read_records(out / "records.jsonl")
    metrics = ("fd_synthmotion", "kid_synthmotion", "acc_synthmotion", "tone_synthmotion", "track_synthmotion")
    assert sorted((r.model_variant, r.steps, r.metric) for r in records) == sorted(
        [(row["model"], row["steps"], metric) for row in result["rows"] for metric in metrics] +
        [("real clips", None, metric) for metric in metrics])
    assert all(r.detector_sha256 == detector["sha256"] and r.protocol == "synthmotion16_8f" for r in records)
    assert all(r.interval is not None for r in records) and sum(r.is_floor for r in records) == 5
    board = (out / "leaderboard.md").read_text()
    assert "FD_SYNTHMOTION · synthmotion · synthmotion16_8f" in board and "TONE_SYNTHMOTION" in board
    assert "| floor | real clips |" in board and "Frontier: Latte (dense) with dpm-solver++" in board
    assert (out / "leaderboard.html").is_file() and (out / "leaderboard.png").is_file()
    assert (out / "samples.png").is_file()
    # The training data were real mp4 files in the UCF101 layout: eight shape × direction classes, each video exactly
    # one clip (8 frames every 2nd: 15 frames), so every clip shows the whole crossing.
    classes = sorted(p.name for p in (out / "data" / "train").iterdir() if p.is_dir())
    assert classes == sorted(f"{shape}{way}" for shape in ("Disc", "Square") for way in ("Right", "Left", "Up", "Down"))
    assert read_video(next((out / "data" / "train" / classes[0]).glob("*.mp4"))).shape[0] == 15
    # Both models trained on logit-normal timesteps (the run's stored config).
    for run in ("dense", "flexdit", "dydit", "flexdydit"):
        assert "timestep_sampling: logit_normal" in (out / run / "config.yaml").read_text()
