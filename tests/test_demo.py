"""`flexgen demo --quick`: the whole loop on generated mp4 files, end to end (the CI's reduced demo)."""

import json

from flexgen.cli import main
from flexgen.data.media import read_video


def test_quick_demo_runs_the_whole_loop(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| Latte (dense) |" in printed and "| FlexDiT-Latte |" in printed
    result = json.loads((out / "leaderboard.json").read_text())
    dense, flex = result["rows"]
    assert flex["gmacs_per_video"] < 0.8 * dense["gmacs_per_video"]          # FlexDiT is cheaper per video
    for row, run in ((dense, "dense"), (flex, "flexdit")):
        assert 0 < row["heldout_mse"] < 2 and row["seconds_per_video"] > 0
        videos = sorted((out / run / "samples").glob("*.mp4"))
        assert len(videos) == 4                                                 # BUDGETS["quick"]: 4 videos
        assert read_video(videos[0]).shape == (8, 16, 16, 3)                # 8 frames of 16×16 (tiny.yaml)
        assert (out / run / "samples" / "grid.png").is_file()
        assert (out / run / "ema.safetensors").is_file()
    assert (out / "leaderboard.md").read_text().startswith("| model |")
    # The training data were real mp4 files in the UCF101 layout: four motion classes.
    assert len([p for p in (out / "data" / "train").iterdir() if p.is_dir()]) == 4
