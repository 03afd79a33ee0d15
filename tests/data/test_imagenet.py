"""ImageNet-layout image folders (flexgen.data.images) and latent stores (flexgen.data.latents): ADM's centre crop,
labels, bad files, encode -> read back, and training from latents = training from pixels through the same VAE."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from flexgen.config import load_config
from flexgen.data.base import DatasetLayoutError, DataWarning
from flexgen.data.images import ImageFolderDataset, center_crop_arr, flip_of
from flexgen.data.latents import LatentDataset, encode_dataset, finish_store
from tests.data_helpers import SYNSETS, noise_image
from tests.t2i_helpers import tiny_vae


def adm_reference_crop(pil_image, image_size):
    """guided-diffusion `image_datasets.center_crop_arr`, written out step by step (box halving, bicubic to the
    short side, centre square)."""
    while min(pil_image.width, pil_image.height) >= 2 * image_size:
        pil_image = pil_image.resize((pil_image.width // 2, pil_image.height // 2), resample=Image.BOX)
    scale = image_size / min(pil_image.width, pil_image.height)
    pil_image = pil_image.resize((round(pil_image.width * scale), round(pil_image.height * scale)),
                                 resample=Image.BICUBIC)
    arr = np.array(pil_image)
    y0 = (arr.shape[0] - image_size) // 2
    x0 = (arr.shape[1] - image_size) // 2
    return arr[y0:y0 + image_size, x0:x0 + image_size]


def test_crop_is_adms_center_crop_exactly():
    rng = np.random.default_rng(1)
    for w, h, size in [(500, 375, 256), (256, 256, 256), (300, 1024, 256), (1200, 800, 512), (37, 20, 16)]:
        image = noise_image(rng, w, h)
        ours, theirs = center_crop_arr(image, size), adm_reference_crop(image, size)
        assert ours.shape == (size, size, 3) and np.array_equal(ours, theirs)


def test_labels_subsets_and_bad_files(imagenet, tmp_path):
    with pytest.warns(DataWarning, match="notes.txt"):
        data = ImageFolderDataset(imagenet, image_size=16, seed=3)
    assert data.classes == list(SYNSETS) and len(data) == 3 * 4 + 3
    labels = {path.split("/")[-2]: label for path, label in data.items}
    assert labels == {s: i for i, s in enumerate(SYNSETS)}                     # sorted synsets, as DiT's ImageFolder
    items = [data[i] for i in range(len(data))]
    assert all(item["video"].shape == (3, 16, 16) and -1 <= item["video"].min() <= item["video"].max() <= 1
               for item in items)                                             # greyscale and CMYK come out RGB
    assert any(s.path.endswith("truncated.JPEG") for s in data.skipped)       # skipped, counted, replaced
    assert not any(item["path"].endswith("truncated.JPEG") for item in items)
    flips = [flip_of(3, 0, j) for j in range(len(data))]
    assert any(flips) and not all(flips)
    j = flips.index(True)
    assert torch.equal(data[j]["video"], torch.from_numpy(np.ascontiguousarray(data.crop(j)[:, ::-1]))
                       .permute(2, 0, 1).float() / 127.5 - 1)
    subset = tmp_path / "classes.txt"
    subset.write_text(f"{SYNSETS[2]}\n")
    only = ImageFolderDataset(imagenet, image_size=16, class_list=subset)
    assert {label for _, label in only.items} == {2}                           # the global label is kept
    subset.write_text("n99999999\n")
    with pytest.raises(DatasetLayoutError, match="n99999999"):
        ImageFolderDataset(imagenet, image_size=16, class_list=subset)


def store_run(imagenet, vae_folder, *extra):
    return load_config("configs/demo/tiny.yaml", [
        "model.preset=DiT-S/2", "model.depth=2", "model.hidden_size=32", "model.num_heads=2", "model.num_classes=3",
        "model.in_channels=4", "autoencoder.kind=sd-vae", f"autoencoder.path={vae_folder}", "autoencoder.downsample=2",
        "data.dataset=imagenet", f"data.root={imagenet}", "data.image_size=16", "data.num_frames=1",
        "data.hflip=true",
        "train.batch_size=4", "train.log_every_samples=4", "train.ckpt_every_samples=1000", "train.total_samples=16",
        "train.lr=1e-3", *extra])


def test_encode_read_back_and_train_from_latents_equals_pixels(imagenet, tmp_path):
    from flexgen.autoencoder import Autoencoder
    from flexgen.train import train

    vae_folder = tmp_path / "vae"
    tiny_vae().save_pretrained(vae_folder)
    with pytest.warns(DataWarning):
        images = ImageFolderDataset(imagenet, image_size=16, hflip=False)
    autoencoder = Autoencoder.from_config(store_run(imagenet, vae_folder).autoencoder)
    store = tmp_path / "latents"
    with pytest.warns(DataWarning, match="truncated"):
        counts = encode_dataset(images, autoencoder, vae_folder, store, shard_size=4, batch_size=3)
    manifest = finish_store(store)
    assert counts["written"] == manifest["num_images"] == len(images) - 1 and manifest["num_skipped"] == 1
    assert len(manifest["shards"]) == 4

    latents = LatentDataset(store, image_size=16, scale_factor=0.18215, vae_folder=vae_folder, seed=5)
    for i in (0, 7, len(latents) - 1):                                       # read back = the VAE's output
        j = int(latents.source_index[i])
        crop = torch.from_numpy(np.ascontiguousarray(images.crop(j))).permute(2, 0, 1).float() / 127.5 - 1
        expected = autoencoder.encode_moments(torch.stack([crop, crop.flip(-1)]))
        torch.testing.assert_close(latents.moments(i), expected, rtol=0, atol=1e-5)

    # resume: a missing shard is written again, the others are kept
    before = (store / "shard-00000.safetensors").stat().st_mtime_ns
    (store / "shard-00002.safetensors").unlink()
    again = encode_dataset(images, autoencoder, vae_folder, store, shard_size=4, batch_size=3)
    assert again["shards"] == 4 and again["written"] == 4 and (store / "shard-00002.safetensors").is_file()
    assert (store / "shard-00000.safetensors").stat().st_mtime_ns == before

    # training: the same crops, flips, posterior noise and timesteps from pixels and from the store (on the
    # readable images only: a skipped file changes the dataset's length, so its order)
    (imagenet / SYNSETS[2] / "truncated.JPEG").unlink()
    clean = tmp_path / "clean"
    with pytest.warns(DataWarning, match="notes.txt"):
        encode_dataset(ImageFolderDataset(imagenet, image_size=16, hflip=False), autoencoder, vae_folder, clean,
                       shard_size=4, batch_size=3)
    finish_store(clean)
    with pytest.warns(DataWarning, match="notes.txt"):
        pixels = train(store_run(imagenet, vae_folder), tmp_path / "pixels", progress=False)
    stored = train(store_run(imagenet, vae_folder, "data.dataset=latents", f"data.root={clean}"),
                   tmp_path / "stored", progress=False)
    a, b = pixels["model"].state_dict(), stored["model"].state_dict()
    # (equal here to the bit; the VAE sees other batch compositions, so allow rounding. Latents mirrored where the
    # pixels are not would differ by ~5e-3)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    moved = max((a[k] - train_start(store_run(imagenet, vae_folder))[k]).abs().max().item() for k in a)
    assert moved > 1e-3                                                      # training did move the weights
    info = json.loads((tmp_path / "stored" / "data.json").read_text())
    assert info["vae_sha256"] == manifest["vae_sha256"] and info["image_size"] == 16

    # a store of another VAE, size or scale is refused
    other = tmp_path / "vae2"
    tiny_vae(seed=1).save_pretrained(other)
    with pytest.raises(DatasetLayoutError, match="another VAE"):
        LatentDataset(store, image_size=16, scale_factor=0.18215, vae_folder=other)
    with pytest.raises(DatasetLayoutError, match="32"):
        LatentDataset(store, image_size=32, scale_factor=0.18215)
    with pytest.raises(DatasetLayoutError, match="another encoding"):
        encode_dataset(ImageFolderDataset(imagenet, image_size=8, hflip=False), autoencoder, vae_folder, store)
    # issue 30: training from a store checks the VAE it decodes with; unset or missing is named first (before data)
    with pytest.raises(FileNotFoundError, match="autoencoder.path is not set"):
        train(store_run(imagenet, vae_folder, "data.dataset=latents", f"data.root={clean}", 'autoencoder.path=""'),
              tmp_path / "no_vae", progress=False)
    with pytest.raises(FileNotFoundError, match=r"no AutoencoderKL at .*gone \(autoencoder.path\)"):
        train(store_run(imagenet, vae_folder, "data.dataset=latents", f"data.root={tmp_path / 'nowhere'}",
                        f"autoencoder.path={tmp_path / 'gone'}"), tmp_path / "no_vae", progress=False)
    with pytest.raises(DatasetLayoutError, match="another VAE"):
        train(store_run(imagenet, vae_folder, "data.dataset=latents", f"data.root={clean}",
                        f"autoencoder.path={other}"), tmp_path / "other_vae", progress=False)

    # issue 30 (3): a killed encode re-run with other settings: the identity is written first, so it is refused;
    # a killed store of the older code (identity written last) has each kept shard checked instead
    killed = tmp_path / "killed"
    shutil.copytree(store, killed)
    for name in ("manifest.json", "shard-00002.safetensors", "shard-00003.safetensors"):
        (killed / name).unlink()
    with pytest.raises(DatasetLayoutError, match="another encoding \\(differs in vae_sha256\\)"):
        encode_dataset(images, autoencoder, other, killed, shard_size=4, batch_size=3)
    with pytest.raises(DatasetLayoutError, match="another encoding \\(differs in shard_size"):
        encode_dataset(images, autoencoder, vae_folder, killed, shard_size=3, batch_size=3)
    (killed / "identity.json").unlink()
    with pytest.raises(DatasetLayoutError, match="shard-00000.safetensors is of another encoding .*vae_sha256"):
        encode_dataset(images, autoencoder, other, killed, shard_size=4, batch_size=3)
    with pytest.raises(ValueError, match="--shard-size and --batch-size must be >= 1"):
        encode_dataset(images, autoencoder, vae_folder, killed, shard_size=0)

    # issue 30 (6): the manifest is checked against its shards: counts from the shards, repeats, unreadable shards
    def edited(change):
        damaged = tmp_path / f"damaged-{len(list(tmp_path.glob('damaged-*')))}"
        shutil.copytree(store, damaged)
        m = json.loads((damaged / "manifest.json").read_text())
        change(m, damaged)
        (damaged / "manifest.json").write_text(json.dumps(m))
        return LatentDataset(damaged, image_size=16, scale_factor=0.18215)

    def count(m, _):
        m["shards"][1]["count"] -= 1

    def repeat(m, _):
        m["shards"][2] = dict(m["shards"][1])

    def truncate(m, folder):
        shard = folder / m["shards"][3]["file"]
        shard.write_bytes(shard.read_bytes()[:100])

    for change, message in ((count, "holds 4 latents, 4 labels and 4 source indices, and .* counts 3"),
                            (repeat, "lists shard-00001.safetensors more than once"),
                            (truncate, "shard-00003.safetensors \\(a shard of .*\\) cannot be read")):
        with pytest.raises(DatasetLayoutError, match=message):
            edited(change)


def train_start(run):
    from flexgen.registry import build_denoiser

    torch.manual_seed(run.train.seed)
    return build_denoiser(run).state_dict()


@pytest.mark.slow
def test_two_ranks_encode_their_shards_into_one_store(imagenet, tmp_path, free_port):
    import os
    import subprocess
    import sys

    vae_folder = tmp_path / "vae"
    tiny_vae().save_pretrained(vae_folder)
    args = ["--config", "configs/demo/tiny.yaml", "--shard-size", "4", "--no-progress", "model.preset=DiT-S/2",
            "model.in_channels=4", "autoencoder.kind=sd-vae", f"autoencoder.path={vae_folder}",
            "autoencoder.downsample=2", "data.dataset=imagenet", f"data.root={imagenet}", "data.image_size=16",
            "data.num_frames=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             f"--master_port={free_port}", "-m", "flexgen", "data", "encode", "--out",
                             str(tmp_path / "two"), *args], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    from flexgen.cli import main

    with pytest.warns(DataWarning):
        assert main(["data", "encode", "--out", str(tmp_path / "one"), *args]) == 0
    two, one = (LatentDataset(tmp_path / d, image_size=16, scale_factor=0.18215) for d in ("two", "one"))
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["num_skipped"] == 1
    assert torch.equal(two.source_index, one.source_index) and torch.equal(two.labels, one.labels)
    for i in range(len(one)):
        torch.testing.assert_close(two.moments(i), one.moments(i), rtol=0, atol=1e-5)
