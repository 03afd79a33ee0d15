"""Pre-extracted autoencoder latents of an image dataset (`flexgen data encode`), and training from them.

As fast-DiT and the released FlexDiT code, the SD-VAE runs once over the dataset instead of at every step; unlike
them the store keeps the encoder's posterior parameters (mean and log-variance, diffusers' `latent_dist.parameters`)
of each image and of its mirror image, so a run draws a fresh posterior sample every step with the step's
generator, exactly as pixel training does (`StoredLatents.encode` is diffusers' own `DiagonalGaussianDistribution`),
and random flipping survives.

    <store>/manifest.json              VAE identity (sha256 of its folder), image size, crop, scale, shards, counts
    <store>/shard-00000.safetensors    moments (n, 2, 2C, h, w) [image, mirror], labels (n,), source_index (n,)

Shard k holds images k·S … (k+1)·S − 1 of the dataset's sorted list (minus the unreadable ones, named in its
metadata); under torchrun rank r writes the shards k ≡ r (mod W). Every shard is written atomically and skipped when
it exists, so a killed run resumes; the manifest is written last.
"""

from __future__ import annotations

import collections
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from flexgen.arguments import POSITIVE
from flexgen.autoencoder import vae_folder
from flexgen.data.base import DatasetLayoutError, DataWarning, SkipAndReplaceDataset, Skipped, describe_error
from flexgen.data.images import ImageFolderDataset, flip_of, to_tensor
from flexgen.files import atomic_write, atomic_write_text

MANIFEST = "manifest.json"
STORE_VERSION = 1
CROP = "adm_center_crop"


def vae_identity(folder: str | Path) -> str:
    """sha256 over an AutoencoderKL folder's config and weight files (names and bytes, sorted)."""
    folder = Path(folder)
    folder = folder / "vae" if (folder / "vae" / "config.json").is_file() else folder
    h = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file() and (p.name == "config.json" or p.suffix in
                                                                     (".safetensors", ".bin")))
    if not files:
        raise FileNotFoundError(f"no AutoencoderKL files in {folder}")
    for path in files:
        h.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Encoding.


@torch.no_grad()
def encode_dataset(images: ImageFolderDataset, autoencoder: Any, vae_folder: str | Path, out: str | Path, *,
                   shard_size: int = 1024, batch_size: int = 32, rank: int = 0, world_size: int = 1,
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   progress: bool = False) -> dict:
    """Write this rank's shards of `images`' latents to `out` (see the module docstring); rank 0 then writes the
    manifest once every shard exists (call it after a barrier under torchrun). Returns this rank's counts."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"--shard-size and --batch-size must be >= 1, got {shard_size} and {batch_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sources = hashlib.sha256("\n".join(f"{path}\t{label}" for path, label in images.items).encode()).hexdigest()
    identity = {"version": STORE_VERSION, "vae_sha256": vae_identity(vae_folder), "image_size": images.image_size,
                "crop": CROP, "scale_factor": float(autoencoder.scale_factor), "shard_size": shard_size,
                "num_source_images": len(images), "classes": images.classes, "dtype": str(dtype).removeprefix("torch."),
                "sources_sha256": sources}
    _check_existing(out, identity)
    identity_path = out / "identity.json"
    if rank == 0 and not identity_path.is_file():       # first: a killed run's kept shards are checked against it
        atomic_write_text(identity_path, json.dumps(identity))
    num_shards = (len(images) + shard_size - 1) // shard_size
    written = skipped = 0
    mine = [k for k in range(num_shards) if k % world_size == rank]
    for k in tqdm(mine, desc="encode", unit="shard", disable=not progress):
        path = out / f"shard-{k:05d}.safetensors"
        if path.is_file():                             # kept from a killed run: only if it is of this encoding
            _check_shard(path, identity)
            continue
        indices = list(range(k * shard_size, min(len(images), (k + 1) * shard_size)))
        crops, kept, bad = [], [], []
        for j in indices:
            try:
                crops.append(images.crop(j))
                kept.append(j)
            except Exception as e:                     # unreadable: named in the shard, counted in the manifest
                bad.append(Skipped(images.item_path(j), describe_error(e)).__dict__)
                warnings.warn(f"{images.item_path(j)}: unreadable ({describe_error(e)}); left out of the store",
                              DataWarning, stacklevel=2)
        moments = []
        for start in range(0, len(kept), batch_size):
            pixels = torch.stack([torch.stack([to_tensor(c), to_tensor(c[:, ::-1])])
                                  for c in crops[start:start + batch_size]])                 # (b, 2, 3, S, S)
            moments.append(autoencoder.encode_moments(pixels.to(device, dtype)).to("cpu", dtype))
        tensors = {"moments": torch.cat(moments) if moments else torch.zeros(0),
                   "labels": torch.tensor([images.items[j][1] for j in kept], dtype=torch.long),
                   "source_index": torch.tensor(kept, dtype=torch.long)}
        with atomic_write(path) as tmp:
            save_file(tensors, str(tmp), metadata={"skipped": json.dumps(bad), "identity": json.dumps(identity)})
        written += len(kept)
        skipped += len(bad)
    return {"written": written, "skipped": skipped, "shards": len(mine)}


def _differences(saved: dict, identity: dict) -> list[str]:
    """The identity keys `saved` records with another value (a store written before a key existed is not compared
    on it)."""
    return [k for k in identity if k in saved and saved[k] != identity[k]]


def _check_existing(out: Path, identity: dict) -> None:
    for name in ("identity.json", MANIFEST):
        path = out / name
        if path.is_file():
            changed = _differences(json.loads(path.read_text()), identity)
            if changed:
                raise DatasetLayoutError(f"{out} holds latents of another encoding (differs in {', '.join(changed)});"
                                         " use another output folder")


def _check_shard(path: Path, identity: dict) -> None:
    """A shard found in the store is of this encoding (its metadata's identity), and readable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            saved = json.loads((f.metadata() or {}).get("identity", "{}"))
    except Exception as e:                             # (safetensors' errors: truncated, another layout)
        raise DatasetLayoutError(f"{path} cannot be read ({' '.join(str(e).split())}): delete it and run flexgen "
                                 "data encode again (it resumes)") from None
    changed = _differences(saved, identity)
    if changed:
        raise DatasetLayoutError(f"{path} is of another encoding (differs in {', '.join(changed)}) than this run: use "
                                 "another output folder, or the first run's settings")


def finish_store(out: str | Path) -> dict:
    """Write the manifest once every shard exists (rank 0, after the other ranks finished): identity, counts and
    the unreadable files."""
    from safetensors import safe_open

    out = Path(out)
    identity = json.loads((out / "identity.json").read_text())
    num_shards = (identity["num_source_images"] + identity["shard_size"] - 1) // identity["shard_size"]
    shards, skipped, total = [], [], 0
    for k in range(num_shards):
        path = out / f"shard-{k:05d}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `flexgen data encode` again (it resumes)")
        _check_shard(path, identity)
        with safe_open(str(path), framework="pt") as f:
            n = f.get_slice("labels").get_shape()[0]
            skipped += json.loads(f.metadata()["skipped"])
        shards.append({"file": path.name, "count": n})
        total += n
    if total + len(skipped) != identity["num_source_images"]:
        raise DatasetLayoutError(f"{out}'s shards hold {total} latents and {len(skipped)} skipped images, and the "
                                 f"source has {identity['num_source_images']}: delete the shards and encode again")
    manifest = {**identity, "num_images": total, "num_skipped": len(skipped), "skipped": skipped, "shards": shards}
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


# ----------------------------------------------------------------------------------------------------------------
# Training from a store.


class StoredLatents:
    """The training loop's encoder for a latent store: stored posterior parameters -> a posterior sample (drawn
    with the step's generator, as `Autoencoder.encode` draws it) × the scale factor. No VAE is loaded."""

    is_identity = False

    def __init__(self, scale_factor: float):
        self.scale_factor = scale_factor

    def to(self, *args, **kwargs) -> StoredLatents:
        return self

    def encode(self, moments: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        from flexgen.autoencoder import Autoencoder

        return Autoencoder.sample_moments(moments, self.scale_factor, generator)


class LatentDataset(SkipAndReplaceDataset):
    """Items {"video": posterior parameters (2C, h, w) of the image or its mirror, "label", "path"}; the mirror is
    chosen as `ImageFolderDataset` chooses it for the same source image, so a run on the store sees what a run on
    the pixels sees."""

    item_name = "latent"

    def __init__(self, root: str | Path, *, image_size: int, scale_factor: float, vae_folder: str | Path | None = None,
                 hflip: bool = True, seed: int = 0):
        from safetensors import safe_open

        super().__init__(root, seed)
        path = self.root / MANIFEST
        if not path.is_file():
            raise DatasetLayoutError(f"{self.root} is not a finished latent store (no {MANIFEST}): run "
                                     "`flexgen data encode` to completion (it resumes)")
        self.manifest = json.loads(path.read_text())
        m = self.manifest
        if m["image_size"] != image_size:
            raise DatasetLayoutError(f"{self.root} holds latents of {m['image_size']} px images, the run trains at "
                                     f"data.image_size = {image_size}")
        if abs(m["scale_factor"] - scale_factor) > 1e-12:
            raise DatasetLayoutError(f"{self.root} was encoded with scale factor {m['scale_factor']}, the run's "
                                     f"autoencoder.scale_factor is {scale_factor}")
        if vae_folder is not None and vae_identity(vae_folder) != m["vae_sha256"]:
            raise DatasetLayoutError(f"{self.root} was encoded by another VAE (sha256 {m['vae_sha256'][:12]}…) than "
                                     f"autoencoder.path = {vae_folder}: decode-time samples would not match")
        # Only the small per-image tables are read here; an item's moments are read from its shard when it is asked
        # for (a 256 px ImageNet store is ~84 GB: no process, and no data-loader worker, holds it in memory).
        labels, sources, where = [], [], []
        shards = m.get("shards")
        if not isinstance(shards, list) or not all(isinstance(x, dict) and "file" in x for x in shards):
            raise DatasetLayoutError(f"{path} lists no shards (a 'shards' list of files): run `flexgen data encode` "
                                     "again")
        repeated = sorted(f for f, n in collections.Counter(x["file"] for x in shards).items() if n > 1)
        if repeated:
            raise DatasetLayoutError(f"{path} lists {repeated[0]} more than once: the store is damaged; encode it "
                                     "again")
        for k, shard in enumerate(shards):      # every shard opens, and its rows are what the manifest counts
            file = self.root / shard["file"]
            try:
                with safe_open(str(file), framework="pt") as f:
                    shard_labels, shard_sources = f.get_tensor("labels"), f.get_tensor("source_index")
                    rows = f.get_slice("moments").get_shape()[0]
            except Exception as e:              # (safetensors' errors: missing, truncated, another layout)
                raise DatasetLayoutError(f"{file} (a shard of {self.root}) cannot be read ({' '.join(str(e).split())})"
                                         ": encode the store again (flexgen data encode resumes)") from None
            if not len(shard_labels) == len(shard_sources) == rows == shard.get("count"):
                raise DatasetLayoutError(f"{file} holds {rows} latents, {len(shard_labels)} labels and "
                                         f"{len(shard_sources)} source indices, and {path} counts "
                                         f"{shard.get('count')}: the store is damaged; encode it again")
            if not rows:
                continue
            labels.append(shard_labels)
            sources.append(shard_sources)
            where.append(torch.stack([torch.full((rows,), k), torch.arange(rows)], dim=1))
        if not labels:
            raise DatasetLayoutError(f"{self.root} holds no latents: every image was skipped ({len(m['skipped'])})")
        self.labels, self.source_index = torch.cat(labels), torch.cat(sources)
        if len(self.labels) != m.get("num_images", len(self.labels)):
            raise DatasetLayoutError(f"{self.root}'s shards hold {len(self.labels)} latents and {path} counts "
                                     f"{m['num_images']}: the store is damaged; encode it again")
        self._where = torch.cat(where)                                               # (N, 2): shard, row
        self._shards: dict[int, Any] = {}                                            # opened lazily, per process
        self.classes, self.hflip = m["classes"], hflip
        self.skipped = [Skipped(s["path"], s["reason"]) for s in m["skipped"]]

    def __len__(self) -> int:
        return len(self.labels)

    def moments(self, index: int) -> torch.Tensor:
        """(2, 2C, h, w): the posterior parameters of item `index` and of its mirror, read from its shard."""
        from safetensors import safe_open

        shard, row = (int(v) for v in self._where[index])
        if shard not in self._shards:
            self._shards[shard] = safe_open(str(self.root / self.manifest["shards"][shard]["file"]), framework="pt")
        return self._shards[shard].get_slice("moments")[row]

    def __getstate__(self) -> dict:               # data-loader workers open their own shard handles
        return {**self.__dict__, "_shards": {}}

    def item_path(self, j: int) -> str:
        return f"{self.root}#{int(self.source_index[j])}"

    @property
    def encoder(self) -> StoredLatents:
        """What the training loop encodes batches with instead of the VAE."""
        return StoredLatents(self.manifest["scale_factor"])

    def describe(self) -> dict:
        """What a run records about its data: the store and the VAE that made it."""
        return {"latent_store": str(self.root), **{k: self.manifest[k] for k in ("vae_sha256", "image_size", "crop",
                                                                               "scale_factor", "num_images",
                                                                               "num_skipped")}}

    def __getitem__(self, index: int) -> dict:
        source = int(self.source_index[index])
        mirror = self.hflip and flip_of(self.seed, self.epoch, source)
        return {"video": self.moments(index)[int(mirror)].float(), "label": int(self.labels[index]),
                "path": self.item_path(index)}



def build_image_dataset(data: Any, autoencoder: Any, seed: int = 0) -> ImageFolderDataset | LatentDataset:
    """The image dataset of a run's `data` section: `imagenet` (pixels, encoded by the run's VAE every step) or
    `latents` (a store; its manifest must match the run's image size, scale factor and VAE)."""
    if not data.root:
        what = "ImageNet train/ folder" if data.dataset == "imagenet" else "latent store (flexgen data encode --out)"
        raise ValueError(f"data.root is empty: set it to the {what}")
    if data.dataset == "imagenet":
        return ImageFolderDataset(data.root, image_size=data.image_size, hflip=data.hflip,
                                  class_list=data.class_list or None, seed=seed)
    if data.class_list:
        raise ValueError("data.class_list selects classes when encoding (flexgen data encode); a latent store holds "
                         "the classes it was encoded with")
    if autoencoder.kind != "sd-vae":
        raise ValueError("data.dataset latents holds VAE latents: set autoencoder.kind sd-vae and autoencoder.path to "
                         "the VAE the store was encoded with (samples are decoded with it)")
    return LatentDataset(data.root, image_size=data.image_size, scale_factor=autoencoder.scale_factor,
                         vae_folder=vae_folder(autoencoder), hflip=data.hflip, seed=seed)


# ----------------------------------------------------------------------------------------------------------------
# `flexgen data encode`.


def add_encode_arguments(parser):
    """The options of `flexgen data encode` (returned)."""
    parser.add_argument("--config", required=True, help="run config with data.dataset imagenet (root, image_size, "
                        "class_list) and the autoencoder (path, scale_factor)")
    parser.add_argument("--out", required=True, help="the latent store folder (resumable: existing shards are kept)")
    parser.add_argument("--shard-size", type=POSITIVE, default=1024, help="images per shard")
    parser.add_argument("--batch-size", type=POSITIVE, default=32, help="images per VAE forward (each encoded twice: "
                        "as it is and mirrored)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda:LOCAL_RANK if available)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                        help="storage dtype of the posterior parameters (the VAE runs in float32)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    return parser


def encode_main(args) -> dict | None:
    """`flexgen data encode`: every rank writes its shards, rank 0 writes the manifest (torchrun: one rank per GPU).
    Returns the manifest on rank 0."""
    import contextlib
    import os

    import torch.distributed as dist

    from flexgen.autoencoder import Autoencoder
    from flexgen.config import load_config
    from flexgen.dist import parse_device
    from flexgen.files import folder_lock

    run = load_config(args.config, args.overrides)
    if run.data.dataset != "imagenet":
        raise ValueError(f"flexgen data encode reads an image folder: data.dataset must be imagenet, got "
                         f"{run.data.dataset}")
    if run.autoencoder.kind != "sd-vae":
        raise ValueError("flexgen data encode needs a VAE (autoencoder.kind sd-vae); pixel-space models train on "
                         "the images directly")
    vae_folder(run.autoencoder)                 # before the image folder is scanned
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    device = parse_device(args.device or None)            # (this rank's GPU: cuda:LOCAL_RANK)
    held = folder_lock(args.out, "flexgen data encode", clean=world == 1) if rank == 0 else contextlib.nullcontext()
    with held:                                  # a second encode into this store is refused while it runs
        own_group = world > 1 and not dist.is_initialized()
        if own_group:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        try:
            images = ImageFolderDataset(run.data.root, image_size=run.data.image_size, hflip=False,
                                        class_list=run.data.class_list or None)
            autoencoder = Autoencoder.from_config(run.autoencoder).to(device)
            counts = encode_dataset(images, autoencoder, run.autoencoder.path, args.out, shard_size=args.shard_size,
                                    batch_size=args.batch_size, rank=rank, world_size=world, device=device,
                                    dtype=getattr(torch, args.dtype), progress=rank == 0 and not args.no_progress)
            if world > 1:
                dist.barrier()
            if rank != 0:
                return None
            manifest = finish_store(args.out)
            print(f"wrote {manifest['num_images']} images ({counts['written']} encoded now on rank 0, "
                  f"{manifest['num_skipped']} unreadable skipped) in {len(manifest['shards'])} shards to {args.out}")
            return manifest
        finally:
            if own_group:
                dist.destroy_process_group()
