"""Issue 11, item 3: every file (or folder) a command writes appears under its final name only when complete.

Each writer is killed at the exact point of its write: the library call it makes (the mp4 muxer, PIL's save,
safetensors' save_file, torch.save, np.savez, Path.write_text, diffusers' save_pretrained) is replaced by a fake
that writes some partial bytes to the path (file object, folder) it was given and then raises `Kill`, a
BaseException as KeyboardInterrupt is, so no `except Exception` of the writer swallows it. After the kill the final
name does not exist (or still holds the earlier complete content) and no temporary file is left. A SIGKILL does not
run the writer's clean-up: the hidden `.NAME.*.tmp` it leaves is made by hand here, and the folder readers
(listings, FVD frame folders, FID images, the resume list of `flexgen sample`) must ignore it.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
from PIL import Image

from flexgen import checkpoint, files
from flexgen.checkpoint import load_model, save_weights
from flexgen.data import media
from flexgen.data.media import read_video, save_grid, write_video
from flexgen.data.prepare import _convert_clip
from flexgen.files import atomic_directory
from flexgen.metrics.frechet import FeatureStats
from flexgen.metrics.generated import check_sample_manifest
from flexgen.metrics.leaderboard import add_leaderboard_arguments, leaderboard_main, render_png
from flexgen.metrics.sources import list_images, list_sources, listing
from flexgen.sampling.manifest import SampleManifest, entries, find_manifest, todo
from flexgen.video.latte import Latte
from tests.conftest import tiny_config
from tests.data_helpers import write_mp4


class Kill(BaseException):
    """Stands for the kill (SIGINT / SIGTERM turned into an exception) at the exact point of a write."""


PARTIAL = b"\x00partial bytes of a killed write\x00"


def names(folder: Path) -> list[str]:
    """Every entry of `folder`, hidden ones included."""
    return sorted(os.listdir(folder))


def frames(n: int = 3, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def assert_killed_cleanly(folder: Path, final: Path, before: list[str], old: bytes | None, given: list[Path]):
    """The killed library call wrote to a path other than the final one, and the folder holds what it held before:
    the final name absent (or with its old bytes), and no temporary file."""
    assert given, "the patched library call was not reached"
    assert all(Path(p) != final for p in given), f"the library call wrote to the final name {final}"
    assert names(folder) == before, f"left behind: {sorted(set(names(folder)) ^ set(before))}"
    if old is None:
        assert not final.exists()
    else:
        assert final.read_bytes() == old


# ----------------------------------------------------------------------------------------------------------
# The fakes: each writes part of its output where it was told to, then the process is "killed".


def kill_pil_save(monkeypatch, after: int = 0) -> list[Path]:
    """PIL.Image.Image.save: the first `after` calls save for real, the next writes partial bytes and is killed.
    Returns the paths it was given."""
    given: list[Path] = []
    real_save = Image.Image.save

    def save(self, fp, format=None, **params):
        given.append(Path(fp))
        if len(given) <= after:
            return real_save(self, fp, format, **params)
        Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n" + PARTIAL)
        raise Kill("killed inside Image.save")

    monkeypatch.setattr(Image.Image, "save", save)
    return given


class KilledContainer:
    """An av output container killed while muxing: `kill_at` packets reach the file, then the kill."""

    def __init__(self, container, kill_at: int):
        self._container, self._kill_at, self._muxed = container, kill_at, 0

    def __getattr__(self, name):
        return getattr(self._container, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._container.__exit__(*exc)

    def mux(self, packet):
        self._container.mux(packet)
        self._muxed += 1
        if self._muxed == self._kill_at:
            raise Kill("killed while muxing")


def kill_mux(monkeypatch, video: int = 0) -> list[Path]:
    """`av.open` for writing: video number `video` (0-based, in the order written) is killed after two packets,
    the others are written for real. Returns the paths it was given."""
    given: list[Path] = []
    real_open = av.open

    def open_(file, mode="r", **kwargs):
        container = real_open(file, mode=mode, **kwargs)
        if mode != "w":
            return container
        given.append(Path(file))
        return KilledContainer(container, 2) if len(given) == video + 1 else container

    monkeypatch.setattr(media.av, "open", open_)
    return given


# ----------------------------------------------------------------------------------------------------------
# Videos (write_video), the preview grid (save_grid), sample and generate images.


@pytest.mark.parametrize("existing", [False, True])
def test_write_video_killed_while_muxing(tmp_path, monkeypatch, existing):
    final = tmp_path / "0000.mp4"
    if existing:
        write_video(final, frames(seed=1), threads=1)
    old, before = (final.read_bytes() if existing else None), names(tmp_path)
    given = kill_mux(monkeypatch)
    with pytest.raises(Kill):
        write_video(final, frames(8), threads=1)
    assert_killed_cleanly(tmp_path, final, before, old, given)
    if existing:
        assert read_video(final).shape == (3, 16, 16, 3)           # the earlier complete video, still readable


@pytest.mark.parametrize("existing", [False, True])
def test_save_grid_killed_in_image_save(tmp_path, monkeypatch, existing):
    final = tmp_path / "grid.png"
    if existing:
        save_grid(final, frames(4))
    old, before = (final.read_bytes() if existing else None), names(tmp_path)
    given = kill_pil_save(monkeypatch)
    with pytest.raises(Kill):
        save_grid(final, frames(4, seed=2))
    assert_killed_cleanly(tmp_path, final, before, old, given)


def test_sample_png_killed_in_image_save(tmp_path, monkeypatch):
    from flexgen.sampling.files import write_sample

    final = tmp_path / "0000.png"
    before = names(tmp_path)
    given = kill_pil_save(monkeypatch)
    with pytest.raises(Kill):
        write_sample(final, torch.from_numpy(frames(1)[0]).permute(2, 0, 1))
    assert_killed_cleanly(tmp_path, final, before, None, given)


def test_generate_png_killed_in_image_save(tmp_path, monkeypatch):
    from flexgen.t2i.generate import _save_png

    final = tmp_path / "00000.png"
    (tmp_path / "other.png").write_bytes(b"not touched")
    before = names(tmp_path)
    given = kill_pil_save(monkeypatch)
    with pytest.raises(Kill):
        _save_png(torch.from_numpy(frames(1)[0]).permute(2, 0, 1), final)
    assert_killed_cleanly(tmp_path, final, before, None, given)


# ----------------------------------------------------------------------------------------------------------
# The sample manifest (JSON), weights (safetensors), the training checkpoint (torch.save), Fréchet statistics (npz).


def manifest(complete: bool = False) -> SampleManifest:
    return SampleManifest(command="flexgen sample", family="latte", model="Latte-S/2", method="baseline",
                          checkpoint="ema.safetensors", checkpoint_sha256="", sampler="ddim", steps=2, cfg_scale=1.0,
                          seed=0, samples=entries(3, 0, lambda i: f"{i:04d}.mp4"), complete=complete)


def kill_write_text(monkeypatch) -> list[Path]:
    """Path.write_text writes the first half of its text, then the kill."""
    given: list[Path] = []

    def write_text(self, data, encoding=None, errors=None, newline=None):
        given.append(Path(self))
        with open(self, "w", encoding=encoding, errors=errors, newline=newline) as f:
            f.write(data[:len(data) // 2])
        raise Kill("killed inside write_text")

    monkeypatch.setattr(Path, "write_text", write_text)
    return given


def test_manifest_killed_while_writing_keeps_the_old_one(tmp_path, monkeypatch):
    final = tmp_path / "samples.json"
    manifest().write(final)
    old, before = final.read_bytes(), names(tmp_path)
    given = kill_write_text(monkeypatch)
    with pytest.raises(Kill):
        manifest(complete=True).write(final)
    assert_killed_cleanly(tmp_path, final, before, old, given)
    monkeypatch.undo()
    found = find_manifest(tmp_path)
    assert found is not None and found[0] == final and not found[1].complete


def test_first_manifest_killed_leaves_none(tmp_path, monkeypatch):
    final = tmp_path / "samples.json"
    given = kill_write_text(monkeypatch)
    with pytest.raises(Kill):
        manifest().write(final)
    assert_killed_cleanly(tmp_path, final, [], None, given)
    monkeypatch.undo()
    assert find_manifest(tmp_path) is None


def tiny_latte(seed: int = 0) -> Latte:
    torch.manual_seed(seed)
    return Latte(tiny_config(depth=2, hidden_size=16, num_heads=2))


def test_save_weights_killed_in_save_file_keeps_the_old_file(tmp_path, monkeypatch):
    final = tmp_path / "ema.safetensors"
    save_weights(tiny_latte(0), final)
    old, before = final.read_bytes(), names(tmp_path)
    given: list[Path] = []

    def save_file(tensors, filename, metadata=None):
        given.append(Path(filename))
        Path(filename).write_bytes(PARTIAL)
        raise Kill("killed inside save_file")

    monkeypatch.setattr(checkpoint, "save_file", save_file)
    with pytest.raises(Kill):
        save_weights(tiny_latte(1), final)
    assert_killed_cleanly(tmp_path, final, before, old, given)
    monkeypatch.undo()
    restored = load_model(final)
    assert all(torch.equal(v, tiny_latte(0).state_dict()[k]) for k, v in restored.state_dict().items())


def test_training_checkpoint_killed_in_torch_save_keeps_the_old_one(tmp_path, monkeypatch):
    from flexgen.train import _save_checkpoint

    final = tmp_path / "latest.pt"
    _save_checkpoint(final, {"step": 8, "weights": torch.arange(4.0)})
    old, before = final.read_bytes(), names(tmp_path)
    given: list[Path] = []

    def save(obj, f, *args, **kwargs):
        given.append(Path(f))
        Path(f).write_bytes(b"PK\x03\x04" + PARTIAL)
        raise Kill("killed inside torch.save")

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(Kill):
        _save_checkpoint(final, {"step": 16, "weights": torch.zeros(4)})
    assert_killed_cleanly(tmp_path, final, before, old, given)
    assert torch.load(final)["step"] == 8


def test_frechet_statistics_killed_in_savez(tmp_path, monkeypatch):
    final = tmp_path / "ref_stats.npz"
    stats = FeatureStats(dim=3).update(np.random.default_rng(0).normal(size=(5, 3)))
    stats.save(final)
    old, before = final.read_bytes(), names(tmp_path)
    given: list[Path] = []

    def savez(file, *args, **kwds):
        given.append(Path(file.name))                   # FeatureStats.save hands np.savez an open file
        file.write(b"PK\x03\x04" + PARTIAL)
        file.flush()
        raise Kill("killed inside np.savez")

    monkeypatch.setattr(np, "savez", savez)
    with pytest.raises(Kill):
        FeatureStats(dim=3).update(np.ones((2, 3))).save(final)
    assert_killed_cleanly(tmp_path, final, before, old, given)
    monkeypatch.undo()
    assert FeatureStats.load(final).count == 5


# ----------------------------------------------------------------------------------------------------------
# Folders: the PixArt-α transformer export, FVD reference frame folders (flexgen data prepare).


def test_atomic_directory_swaps_a_complete_folder_in(tmp_path):
    final = tmp_path / "out"
    with atomic_directory(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.") and not final.exists()
        (tmp / "a.txt").write_text("one")
    assert names(tmp_path) == ["out"] and names(final) == ["a.txt"]
    assert oct(final.stat().st_mode & 0o777) == oct(0o777 & ~files._umask())      # as mkdir would make it
    with atomic_directory(final) as tmp:
        (tmp / "b.txt").write_text("two")
        assert (final / "a.txt").read_text() == "one"                            # the old one, until the end
    assert names(tmp_path) == ["out"] and names(final) == ["b.txt"]              # replaced whole; old one removed
    with pytest.raises(Kill), atomic_directory(final) as tmp:
        (tmp / "c.txt").write_text("partial")
        raise Kill
    assert names(tmp_path) == ["out"] and names(final) == ["b.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"), atomic_directory(tmp_path / "file"):
        pass
    assert names(tmp_path) == ["file", "out"]


def test_atomic_directory_restores_the_old_folder_when_the_new_one_cannot_move_in(tmp_path, monkeypatch):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name.endswith(".tmp"):
            raise OSError("no room")
        real_rename(src, dst)

    monkeypatch.setattr(files.os, "rename", rename)
    with pytest.raises(OSError, match="no room"), atomic_directory(final) as tmp:
        (tmp / "new.txt").write_text("new")
    assert names(tmp_path) == ["out"] and names(final) == ["old.txt"]


def tiny_pixart():
    from flexgen.backbones.pixart import PixArtDenoiser
    from tests.t2i_helpers import tiny_transformer

    return PixArtDenoiser(tiny_transformer(num_layers=1), SimpleNamespace(autoencoder=SimpleNamespace(downsample=8)))


def kill_save_pretrained(monkeypatch, model) -> list[Path]:
    """diffusers' save_pretrained writes config.json and part of the weights into its folder, then the kill."""
    given: list[Path] = []

    def save_pretrained(self, save_directory, **kwargs):
        folder = Path(save_directory)
        given.append(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(dict(self.config)))
        (folder / "diffusion_pytorch_model.safetensors").write_bytes(PARTIAL)
        raise Kill("killed inside save_pretrained")

    monkeypatch.setattr(type(model.net), "save_pretrained", save_pretrained)
    return given


@pytest.mark.parametrize("existing", [False, True])
def test_pixart_export_killed_in_save_pretrained(tmp_path, monkeypatch, existing):
    from flexgen.t2i.pixart_io import load_transformer

    model = tiny_pixart()
    final = tmp_path / "transformer"
    if existing:
        assert model.export(final) == final
    old = {p.name: p.read_bytes() for p in final.iterdir()} if existing else None
    before = names(tmp_path)
    given = kill_save_pretrained(monkeypatch, model)
    with pytest.raises(Kill):
        model.export(final)
    assert given and all(p != final for p in given)
    assert names(tmp_path) == before, f"left behind: {sorted(set(names(tmp_path)) ^ set(before))}"
    if not existing:
        assert not final.exists()
        return
    assert {p.name: p.read_bytes() for p in final.iterdir()} == old
    monkeypatch.undo()
    loaded = load_transformer(final)
    assert all(torch.equal(v, model.net.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_pixart_export_replaces_an_export_and_refuses_another_folder(tmp_path):
    model = tiny_pixart()
    final = tmp_path / "transformer"
    model.export(final)
    (final / "stale.bin").write_bytes(b"from an older export")
    model.export(final)
    assert "stale.bin" not in names(final) and (final / "config.json").is_file()
    assert names(tmp_path) == ["transformer"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a transformer folder"):
        model.export(mine)
    assert names(mine) == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    model.export(tmp_path / "empty")                                # an empty folder is fine
    assert (tmp_path / "empty" / "config.json").is_file()


def convert_job(source: Path, out: Path) -> tuple[str, bool, str, int, int]:
    return str(source), False, str(out), 8, 90


@pytest.mark.parametrize("existing", [False, True])
def test_prepare_frame_folder_killed_mid_clip(tmp_path, monkeypatch, existing):
    source = write_mp4(tmp_path / "src" / "v_A_g01_c01.mp4", 6)
    dst = tmp_path / "real"
    assert _convert_clip(convert_job(write_mp4(tmp_path / "src" / "done.mp4", 4), dst / "done")) == (4, None)
    final = dst / "v_A_g01_c01"
    if existing:
        assert _convert_clip(convert_job(source, final)) == (6, None)
    old = {p.name: p.read_bytes() for p in final.iterdir()} if existing else None
    before = names(dst)
    given = kill_pil_save(monkeypatch, after=3)                     # three frames written, killed in the fourth
    with pytest.raises(Kill):
        _convert_clip(convert_job(source, final))
    assert len(given) == 4 and all(p.parent != final for p in given)
    assert names(dst) == before, f"left behind: {sorted(set(names(dst)) ^ set(before))}"
    if existing:
        assert {p.name: p.read_bytes() for p in final.iterdir()} == old
    else:
        assert not final.exists()
    monkeypatch.undo()
    assert [s.rel for s in list_sources(dst)] == (["done", "v_A_g01_c01"] if existing else ["done"])


def test_prepare_frame_folder_that_fails_is_removed(tmp_path):
    """An ordinary decoding error is reported; the clip's folder, an earlier one too, is removed (as before)."""
    source = write_mp4(tmp_path / "v.mp4", 4)
    final = tmp_path / "real" / "v"
    assert _convert_clip(convert_job(source, final)) == (4, None)
    source.write_bytes(b"not a video")
    written, reason = _convert_clip(convert_job(source, final))
    assert written == 0 and "conversion failed" in reason
    assert names(tmp_path / "real") == []


# ----------------------------------------------------------------------------------------------------------
# The leaderboard: png, markdown and html.


def test_leaderboard_png_killed_in_image_save(tmp_path, monkeypatch):
    final = tmp_path / "leaderboard.png"
    render_png([], final, size=(200, 100))
    old, before = final.read_bytes(), names(tmp_path)
    given = kill_pil_save(monkeypatch)
    with pytest.raises(Kill):
        render_png([], final, size=(300, 200))
    assert_killed_cleanly(tmp_path, final, before, old, given)


@pytest.mark.parametrize("fmt", ["md", "html"])
def test_leaderboard_text_killed_in_write_text(tmp_path, monkeypatch, fmt):
    out = tmp_path / "board"
    args = add_leaderboard_arguments(argparse.ArgumentParser()).parse_args(
        ["--records", str(tmp_path / "none.jsonl"), "--anchors", "", "--out", str(out), "--format", fmt])
    leaderboard_main(args)
    final = out / f"leaderboard.{fmt}"
    old, before = final.read_bytes(), names(out)
    given = kill_write_text(monkeypatch)
    with pytest.raises(Kill):
        leaderboard_main(args)
    assert_killed_cleanly(out, final, before, old, given)


# ----------------------------------------------------------------------------------------------------------
# What a SIGKILL leaves (the hidden temporary file, its clean-up never ran) is ignored by every folder reader.


def test_stray_temporary_files_of_a_killed_write_are_never_counted(tmp_path):
    samples = tmp_path / "samples"
    write_video(samples / "0000.mp4", frames(), threads=1)
    (samples / ".0001.mp4.k3j2h1.tmp").write_bytes(PARTIAL)        # what `kill -9` during atomic_write leaves
    (samples / "._0002.mp4").write_bytes(PARTIAL)                   # any hidden name, even with a video suffix
    Image.fromarray(frames(1)[0]).save(samples / "0000.png")
    (samples / ".0001.png.x8y7.tmp").write_bytes(PARTIAL)
    (samples / ".grid.png.abc.tmp").write_bytes(PARTIAL)
    assert [s.rel for s in list_sources(samples)] == ["0000.mp4"]
    assert [name for name, _ in listing(samples)] == ["0000.mp4", "0000.png"]
    assert [p.name for p in list_images(samples)] == ["0000.png"]

    real = tmp_path / "real"                                        # FVD frame folders: a killed conversion
    for folder in (real / "v1", real / ".v2.a1b2.tmp", real / ".v3.c3d4.old"):
        folder.mkdir(parents=True)
        Image.fromarray(frames(1)[0]).save(folder / "000000.jpg")
    assert [s.rel for s in list_sources(real)] == ["v1"]
    assert [name for name, _ in listing(real)] == ["v1/000000.jpg"]

    run = manifest()                                                # resuming `flexgen sample`: still to draw
    assert todo(run, samples, 0, 1) == [1, 2]
    run.complete = True
    run.write(samples / "samples.json")
    counted = r"\(1 not listed \(e\.g\. 0000\.png\); 2 listed but missing \(e\.g\. 0001\.mp4, 0002\.mp4\)\)"
    with pytest.raises(ValueError, match=counted):                  # the stray files are not taken for samples
        check_sample_manifest(samples)


# ----------------------------------------------------------------------------------------------------------
# A `flexgen sample` run killed while writing its last video resumes and draws exactly that one.


def test_killed_sample_run_resumes_drawing_exactly_the_missing_file(tmp_path, monkeypatch, capsys):
    from flexgen.sample import sample_main
    from tests.sample_helpers import SMALL, TINY, parse, random_model

    model, _ = random_model()
    save_weights(model.net, tmp_path / "dense.safetensors")
    out = tmp_path / "s"
    command = parse("--config", TINY, "--ckpt", tmp_path / "dense.safetensors", "--num-samples", 3, "--out", out,
                    "--sampler", "ddim", "--steps", 2, "--batch-size", 3, "--no-progress", *SMALL)
    given = kill_mux(monkeypatch, video=2)
    with pytest.raises(Kill):
        sample_main(command)
    assert len(given) == 3 and all(not p.name.endswith(".mp4") for p in given)
    assert names(out) == ["0000.mp4", "0001.mp4", "samples.json"]   # no 0002.mp4, no temporary file
    assert not SampleManifest.read(out / "samples.json").complete
    kept = {name: (out / name).read_bytes() for name in ("0000.mp4", "0001.mp4")}
    (out / ".0002.mp4.q9w8e7.tmp").write_bytes(PARTIAL)            # as if the kill had been a SIGKILL
    monkeypatch.undo()
    capsys.readouterr()
    record = sample_main(command)
    assert "(1 drawn now on rank 0)" in capsys.readouterr().out
    assert record["complete"] and read_video(out / "0002.mp4").shape == (4, 16, 16, 3)
    assert all((out / name).read_bytes() == data for name, data in kept.items())   # kept, not redrawn
    check_sample_manifest(out)
    assert names(out) == ["0000.mp4", "0001.mp4", "0002.mp4", "grid.png", "samples.json"]   # the stray file is gone


def test_one_folder_one_writing_command(tmp_path):
    """issue 30 (7): a second flexgen process writing into a folder another holds (two trainings of one run
    directory, two samplings of one folder) gets one clear error; the folder is free again once the first ends."""
    import subprocess
    import sys

    from flexgen.files import folder_lock

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom flexgen.files import folder_lock\n"
        f"with folder_lock({str(tmp_path / 'run')!r}, 'flexgen train'):\n"
        "    print('held', flush=True)\n    time.sleep(30)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=r"run is in use by flexgen train \(pid \d+\): wait for it to end"):
            with folder_lock(tmp_path / "run", "flexgen sample"):
                pass
        from flexgen.checkpoint import save_weights
        from flexgen.sample import sample_main
        from tests.sample_helpers import SMALL, TINY, parse, random_model

        model, _ = random_model()
        save_weights(model.net, tmp_path / "w.safetensors")
        with pytest.raises(ValueError, match="in use by flexgen train"):        # flexgen sample holds its folder too
            sample_main(parse("--config", TINY, "--ckpt", tmp_path / "w.safetensors", "--num-samples", 1, "--steps",
                              2, "--out", tmp_path / "run", "--no-progress", *SMALL))
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(tmp_path / "run", "flexgen sample"):                   # free once the holder is gone
        pass


def test_a_held_folder_loses_the_temporaries_of_killed_writes(tmp_path):
    """issue 30: the hidden `.NAME.*.tmp` of a killed atomic write (file or folder, in the folder or a subfolder such
    as checkpoints/) is removed once a command holds the folder; `.NAME.*.old` (the only copy after a kill between
    atomic_directory's renames) and everything else stay."""
    from flexgen.files import folder_lock

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".ema.safetensors.k3j2h1ab.tmp").write_bytes(PARTIAL)
    (run / "checkpoints" / ".latest.pt.x8y7z6w5.tmp").write_bytes(PARTIAL)
    (run / ".transformer.a1b2c3d4.tmp").mkdir()
    (run / ".transformer.e5f6g7h8.old").mkdir()
    (run / "config.yaml").write_text("x")
    (run / "other").mkdir()                                   # another command's folder (an --out under it)
    (run / "other" / ".flexgen-lock").write_text("flexgen sample (pid 1)")
    (run / "other" / ".0001.png.q1w2e3r4.tmp").write_bytes(PARTIAL)   # its write in progress
    with folder_lock(run, "flexgen train"):
        assert names(run) == [".flexgen-lock", ".transformer.e5f6g7h8.old", "checkpoints", "config.yaml", "other"]
        assert names(run / "checkpoints") == []
        assert ".0001.png.q1w2e3r4.tmp" in names(run / "other")          # not this command's to remove
    assert names(run) == [".transformer.e5f6g7h8.old", "checkpoints", "config.yaml", "other"]


@pytest.mark.parametrize("writer", ["torch", "safetensors"])
def test_a_full_disk_is_named_as_one_and_leaves_nothing(tmp_path, monkeypatch, writer):
    """issue 30: torch.save and safetensors report a full disk as RuntimeError / SafetensorError; atomic_write turns
    that into one OSError naming the file and the device (the command prints one line), and removes its
    temporary. The disk is made full by reporting no free bytes (a real full device reads the same)."""
    import shutil

    from safetensors.torch import save_file

    real_usage = shutil.disk_usage
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=0))
    path = tmp_path / ("latest.pt" if writer == "torch" else "shard.safetensors")

    def failing_write(tmp):                      # what each library raises when the device fills mid-write
        if writer == "torch":
            torch.save({"a": torch.zeros(4)}, tmp)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        save_file({"a": torch.zeros(4)}, str(tmp))
        from safetensors import SafetensorError
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(OSError, match=rf"no space left on the device of .* while writing {path.name} \("):
        with files.atomic_write(path) as tmp:
            failing_write(tmp)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(files.shutil, "disk_usage", real_usage)      # room left: another error stays itself
    with pytest.raises(RuntimeError, match="a bug"), files.atomic_write(path):
        raise RuntimeError("a bug")
