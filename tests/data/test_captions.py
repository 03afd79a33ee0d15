"""Image–caption data (flexgen/data/captions.py) and the T5 side of PixArt-α: layouts, bad input, the transform
against torchvision, flips, the text-embedding cache, `encode_prompts` against diffusers' pipeline, and
`flexgen data cache-text` (flexgen/data/prepare.py).

Images are generated here (tiny PIL files); the text encoder and tokenizer are the tiny offline ones."""

from __future__ import annotations

import argparse
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flexgen.data.base import DataWarning, MissingTextEmbedding
from flexgen.data.captions import CaptionDataset, TextEmbeddingCache, transform_image
from flexgen.data.prepare import add_cache_text_arguments, cache_text_main
from flexgen.text_encoder import encode_prompts, encoder_identity, load_text_encoder, preprocess
from tests.t2i_helpers import CAPTION_DIM, MAX_LENGTH, save_tiny_pipeline, tiny_text_encoder, tiny_tokenizer

# ----------------------------------------------------------------------------------------------------------
# Helpers.


def _pixels(width: int, height: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


def _image(path: Path, width: int = 20, height: int = 28, seed: int = 0, pixels: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_pixels(width, height, seed) if pixels is None else pixels).save(path)
    return path


def _pair(root: Path, rel: str, caption: str | None, seed: int = 0) -> Path:
    path = _image(root / rel, seed=seed)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)
    return path


def _quiet(*args, **kwargs) -> CaptionDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return CaptionDataset(*args, **kwargs)


def _reasons(dataset: CaptionDataset) -> dict[str, str]:
    return {Path(s.path).name: s.reason for s in dataset.skipped}


@pytest.fixture(scope="module")
def text_side():
    return tiny_tokenizer(), tiny_text_encoder()


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("pixart") / "pipe")


# ----------------------------------------------------------------------------------------------------------
# Layouts and bad input.


def test_folder_layout_sorted_nested_and_items(tmp_path):
    _pair(tmp_path, "b/dog.png", "A big dog\n", seed=1)
    _pair(tmp_path, "a/deep/cat.jpg", "a small cat", seed=2)
    _pair(tmp_path, "a/sky.webp", "the sky at night", seed=3)
    _pair(tmp_path, ".hidden/x.png", "hidden")
    (tmp_path / "notes.txt").write_text("a caption file without an image is ignored")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)            # nothing is skipped: no warning
        data = CaptionDataset(tmp_path, image_size=8)
    assert data.manifest is None and data.skipped == []
    assert [Path(i.path).relative_to(tmp_path).as_posix() for i in data.items] == \
        ["a/deep/cat.jpg", "a/sky.webp", "b/dog.png"]
    assert data.captions == ["a small cat", "the sky at night", "A big dog"]
    item = data[2]
    assert set(item) == {"image", "caption", "index"} and item["caption"] == "A big dog" and item["index"] == 2
    assert item["image"].shape == (3, 8, 8) and item["image"].dtype == torch.float32


def test_folder_layout_skips_with_reasons(tmp_path):
    _pair(tmp_path, "good.png", "a red cat")
    _pair(tmp_path, "nocaption.png", None)
    _pair(tmp_path, "empty.png", "  \n ")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image at all" * 5)
    (tmp_path / "corrupt.txt").write_text("a corrupt image")
    with pytest.warns(DataWarning) as record:
        data = CaptionDataset(tmp_path, image_size=8)
    assert len([w for w in record if issubclass(w.category, DataWarning)]) == 1     # warned once, listing all
    message = str(record[0].message)
    assert "skipped 3 item(s), kept 1" in message and "corrupt.png" in message and "nocaption.png" in message
    assert [Path(i.path).name for i in data.items] == ["good.png"]
    reasons = _reasons(data)
    assert set(reasons) == {"nocaption.png", "empty.png", "corrupt.png"}
    assert "no caption file nocaption.txt" in reasons["nocaption.png"]
    assert "empty caption" in reasons["empty.png"]
    assert "unreadable image" in reasons["corrupt.png"]


def test_manifest_layout_found_automatically(tmp_path):
    for name, seed in (("img/0.png", 0), ("img/1.jpg", 1), ("img/2.png", 2), ("img/3.png", 3)):
        _image(tmp_path / name, seed=seed)
    (tmp_path / "img/2.txt").write_text("caption files are not read in the manifest layout")
    (tmp_path / "bad.png").write_bytes(b"garbage bytes")
    lines = [
        {"file_name": "img/1.jpg", "text": "the first line"},
        {"image": "img/0.png", "caption": "second, with the other keys"},
        "{not json",
        {"file_name": "img/missing.png", "text": "a missing file"},
        {"file_name": "img/2.png"},
        {"file_name": "img/3.png", "text": "   "},
        ["a", "list"],
        {"text": "no path"},
        {"file_name": "bad.png", "text": "corrupt bytes"},
        {"file_name": "img/1.jpg", "text": "the same image, a second caption"},
    ]
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines)
    (tmp_path / "metadata.jsonl").write_text(text + "\n\n")
    with pytest.warns(DataWarning, match="skipped 7 item"):
        data = CaptionDataset(tmp_path, image_size=8)
    assert data.manifest == tmp_path / "metadata.jsonl"
    assert [(Path(i.path).name, i.caption) for i in data.items] == [
        ("1.jpg", "the first line"), ("0.png", "second, with the other keys"),
        ("1.jpg", "the same image, a second caption")]
    reasons = [s.reason for s in data.skipped]
    assert any("malformed JSON" in r for r in reasons)
    assert any("image file not found" in r for r in reasons)
    assert any("no caption" in r for r in reasons)
    assert any("empty caption" in r for r in reasons)
    assert any("not a JSON object" in r for r in reasons)
    assert any("no image path" in r for r in reasons)
    assert any("unreadable image" in r for r in reasons)
    malformed = next(s for s in data.skipped if "malformed" in s.reason)
    assert malformed.path == f"{tmp_path / 'metadata.jsonl'}:3"                      # file and line named


def test_explicit_manifest_and_missing_manifest(tmp_path):
    root = tmp_path / "images"
    _pair(root, "x.png", "a caption file, not used")
    manifest = tmp_path / "captions.jsonl"
    manifest.write_text(json.dumps({"file_name": "x.png", "text": "from the manifest"}) + "\n")
    data = CaptionDataset(root, image_size=8, manifest=manifest)
    assert data.manifest == manifest and data.captions == ["from the manifest"]
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        CaptionDataset(root, manifest=tmp_path / "nope.jsonl")


def test_no_usable_item_and_missing_root(tmp_path):
    _pair(tmp_path, "a.png", None)
    _pair(tmp_path, "b.png", "")
    with pytest.raises(ValueError, match=r"no usable image–caption pair \(2 image files, 2 item\(s\) skipped") as e:
        _quiet(tmp_path)
    assert str(tmp_path) in str(e.value)
    with pytest.raises(ValueError, match="is not a folder"):
        CaptionDataset(tmp_path / "absent")


def test_decode_failure_uses_the_next_item(tmp_path):
    _pair(tmp_path, "a.png", "first", seed=1)
    buffer = io.BytesIO()
    Image.fromarray(_pixels(48, 64)).save(buffer, "JPEG")
    truncated = buffer.getvalue()
    (tmp_path / "b.jpg").write_bytes(truncated[:len(truncated) * 3 // 4])   # PIL verifies it, decoding fails
    (tmp_path / "b.txt").write_text("truncated")
    _pair(tmp_path, "c.png", "third", seed=3)
    data = CaptionDataset(tmp_path, image_size=8)
    assert data.captions == ["first", "truncated", "third"] and data.skipped == []
    with pytest.warns(DataWarning, match="another image is used instead"):
        item = data[1]
    assert item["caption"] == "third" and item["index"] == 2
    assert torch.equal(item["image"], data[2]["image"])
    assert len(data.skipped) == 1 and "decoding failed" in data.skipped[0].reason
    assert data[1]["index"] == 2 and len(data.skipped) == 1                       # not retried, not recounted


# ----------------------------------------------------------------------------------------------------------
# Transform and flips.


def test_transform_matches_torchvision_pixart_default_train():
    from torchvision import transforms as T

    for width, height, size in ((20, 28, 8), (28, 20, 8), (20, 28, 16), (13, 13, 13), (9, 31, 12)):
        image = Image.fromarray(_pixels(width, height, seed=width + height))
        reference = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                               T.ToTensor(), T.Normalize([0.5], [0.5])])(image)
        x = transform_image(image, size)
        assert x.shape == (3, size, size) and x.dtype == torch.float32
        assert x.min() >= -1 and x.max() <= 1
        torch.testing.assert_close(x, reference, atol=1e-6, rtol=0)
        assert torch.equal(transform_image(image, size, flip=True), x.flip(-1))


def test_centre_crop_keeps_the_centre():
    tall = np.zeros((40, 20, 3), np.uint8)
    tall[..., 2] = 255                                          # blue above and below ...
    tall[16:24] = (255, 0, 0)                                   # ... a red stripe across the middle
    x = transform_image(Image.fromarray(tall), 10, interpolation="bilinear")     # 10×20 -> rows 5..14
    middle = x[:, 4:6]
    assert torch.all(middle[0] > 0.9) and torch.all(middle[2] < -0.9)
    assert torch.all(x[2, 0] > 0.9) and torch.all(x[2, -1] > 0.9)               # blue at the crop's edges
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 18:22] = (0, 255, 0)                                # a green column in the centre of a wide image
    y = (transform_image(Image.fromarray(wide), 20) + 1) * 127.5
    assert y.shape == (3, 20, 20)
    assert torch.all(y[1, :, 8:12] > 250) and torch.all(y[1, :, :6] < 5) and torch.all(y[1, :, 14:] < 5)


def test_flips_are_a_function_of_seed_epoch_and_index(tmp_path):
    for k in range(6):
        _pair(tmp_path, f"{k}.png", f"caption {k}", seed=k)
    plain = CaptionDataset(tmp_path, image_size=8)
    data = CaptionDataset(tmp_path, image_size=8, hflip=True, seed=3)
    seen = set()
    for epoch in range(3):
        data.set_epoch(epoch)
        for i in range(len(data)):
            expected = bool(np.random.default_rng([3, epoch, i, 0]).random() < 0.5)    # the documented draw
            assert data.flips(i) == expected
            image, reference = data[i]["image"], plain[i]["image"]
            assert torch.equal(image, reference.flip(-1) if expected else reference)
            seen.add(expected)
    assert seen == {True, False}
    again = CaptionDataset(tmp_path, image_size=8, hflip=True, seed=3)
    again.set_epoch(2)
    assert all(torch.equal(again[i]["image"], data[i]["image"]) for i in reversed(range(len(data))))
    other = CaptionDataset(tmp_path, image_size=8, hflip=True, seed=4)
    draws = []
    for dataset in (data, other):
        for epoch in range(3):
            dataset.set_epoch(epoch)
            draws.append([dataset.flips(i) for i in range(6)])
    assert draws[:3] != draws[3:]                                               # another seed, other flips
    assert not any(plain.flips(i) for i in range(6))                             # hflip=False never flips


# ----------------------------------------------------------------------------------------------------------
# T5: the pipeline's encode_prompt, loading, identity.


def test_encode_prompts_equals_pixart_pipeline(text_side):
    from diffusers import PixArtAlphaPipeline

    tokenizer, encoder = text_side
    pipe = PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=None, transformer=None, scheduler=None)
    captions = ["A Photo of the red CAT  ", "", "a dog " * 20, "unknown words"]
    with torch.no_grad():                                       # as the pipeline's __call__
        embeds, mask, _, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False, clean_caption=False,
                                                max_sequence_length=MAX_LENGTH, device="cpu")
    ours, our_mask = encode_prompts(captions, tokenizer, encoder, max_length=MAX_LENGTH)
    assert ours.shape == (4, MAX_LENGTH, CAPTION_DIM) and our_mask.dtype == torch.long
    assert torch.equal(ours, embeds) and torch.equal(our_mask, mask)
    assert our_mask[2].all() and our_mask[1].sum() == 1                           # truncated; "" is </s> alone
    assert preprocess("  A Red Cat ") == "a red cat"
    with pytest.raises(ValueError, match="non-empty list"):
        encode_prompts("a cat", tokenizer, encoder)


def test_load_text_encoder_from_pipeline_and_t5_folders(pipeline_dir, tmp_path, text_side):
    tokenizer, encoder = text_side
    captions = ["a red cat", ""]
    expected, _ = encode_prompts(captions, tokenizer, encoder, MAX_LENGTH)     # same seed: the same weights
    loaded_tokenizer, loaded = load_text_encoder(pipeline_dir)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    torch.testing.assert_close(encode_prompts(captions, loaded_tokenizer, loaded, MAX_LENGTH)[0], expected)
    t5 = tmp_path / "t5"
    encoder.save_pretrained(t5)
    tokenizer.save_pretrained(t5)
    plain_tokenizer, plain = load_text_encoder(t5, dtype=torch.bfloat16)
    assert plain.dtype == torch.bfloat16
    assert torch.equal(encode_prompts(captions, plain_tokenizer, plain, MAX_LENGTH)[1],
                       encode_prompts(captions, tokenizer, encoder, MAX_LENGTH)[1])


def test_load_text_encoder_missing_files_name_the_path(tmp_path):
    absent = tmp_path / "absent"
    with pytest.raises(FileNotFoundError, match="t5-v1_1-xxl") as e:
        load_text_encoder(absent)
    assert str(absent) in str(e.value)
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    (pipe / "model_index.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no text_encoder/ and no tokenizer/"):
        load_text_encoder(pipe)
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model weights") as e:
        load_text_encoder(half)
    assert "tokenizer files" in str(e.value) and str(half) in str(e.value)


def test_encoder_identity(pipeline_dir, text_side):
    _, loaded = load_text_encoder(pipeline_dir)
    identity = encoder_identity(pipeline_dir)
    assert identity.startswith(str((pipeline_dir / "text_encoder").resolve()) + "#")
    assert encoder_identity(loaded) == identity == encoder_identity(pipeline_dir / "text_encoder")
    memory = encoder_identity(text_side[1])
    assert memory.startswith("in-memory#") and memory == encoder_identity(tiny_text_encoder(0))
    assert encoder_identity(tiny_text_encoder(1)) != memory


# ----------------------------------------------------------------------------------------------------------
# The text-embedding cache.


class _Counting(torch.nn.Module):
    """A text encoder that counts the captions it encodes."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder, self.captions = encoder, 0

    def forward(self, ids, attention_mask=None):
        self.captions += ids.shape[0]
        return self.encoder(ids, attention_mask=attention_mask)


def test_cache_round_trip_and_only_missing_captions_are_encoded(tmp_path, text_side):
    tokenizer, encoder = text_side
    counting = _Counting(encoder)
    cache = TextEmbeddingCache(tmp_path / "cache", "tiny-t5#0", MAX_LENGTH)
    captions = ["a red cat", "the blue sky at night", "A Red Cat ", "a dog"]      # "A Red Cat " = "a red cat"
    assert cache.missing(captions) == ["a red cat", "the blue sky at night", "a dog"]
    assert cache.fill(captions, tokenizer, counting, batch_size=2, progress=False) == 4    # with ""
    assert counting.captions == 4
    files = sorted((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == 4 and all(f.parent.name == f.stem[:2] for f in files)
    assert not list((tmp_path / "cache").rglob("*.tmp"))

    direct, mask = encode_prompts(["a red cat", "", "a dog"], tokenizer, encoder, MAX_LENGTH)
    for k, caption in enumerate(["A Red Cat ", "", "a dog"]):
        embeds, got_mask = cache.get(caption)
        assert embeds.shape == (MAX_LENGTH, CAPTION_DIM) and embeds.dtype == torch.float32
        assert got_mask.dtype == torch.long and torch.equal(got_mask, mask[k])
        valid = mask[k].bool()
        torch.testing.assert_close(embeds[valid], direct[k][valid], atol=2e-3, rtol=1e-3)      # float16 rounding
        assert torch.equal(embeds[valid], direct[k][valid].half().float())
        assert not embeds[~valid].any()                                             # padding stored as zeros

    assert cache.fill(captions + [""], tokenizer, counting, progress=False) == 0
    assert counting.captions == 4
    assert cache.fill(captions + ["a small tree"], tokenizer, counting, progress=False) == 1
    assert counting.captions == 5 and cache.missing(captions + ["a small tree", ""]) == []

    bf16 = TextEmbeddingCache(tmp_path / "bf16", "tiny-t5#0", MAX_LENGTH, dtype="bfloat16")
    bf16.fill(["a red cat"], tokenizer, encoder, progress=False)
    torch.testing.assert_close(bf16.get("a red cat")[0][mask[0].bool()], direct[0][mask[0].bool()],
                               atol=3e-2, rtol=1e-2)


def test_cache_key_depends_on_length_and_encoder_and_missing_entry_is_clear(tmp_path, text_side):
    tokenizer, encoder = text_side
    cache = TextEmbeddingCache(tmp_path, "tiny-t5#0", MAX_LENGTH)
    shorter = TextEmbeddingCache(tmp_path, "tiny-t5#0", MAX_LENGTH - 1)
    other = TextEmbeddingCache(tmp_path, "other-t5#1", MAX_LENGTH)
    assert len({cache.key("a cat"), shorter.key("a cat"), other.key("a cat"), cache.key("a dog")}) == 4
    assert cache.key("a cat") == cache.key("  A CAT")
    cache.fill(["a cat"], tokenizer, encoder, progress=False)
    assert "a cat" in cache and "a cat" not in shorter and "a cat" not in other
    with pytest.raises(MissingTextEmbedding, match="flexgen data cache-text") as e:
        other.get("a cat")
    assert "a cat" in str(e.value) and str(tmp_path) in str(e.value)
    cache.path("a dog").parent.mkdir(parents=True, exist_ok=True)
    cache.path("a dog").write_bytes(b"damaged")
    with pytest.raises(RuntimeError, match="delete it"):
        cache.get("a dog")


def test_dataset_with_attached_cache(tmp_path, text_side):
    tokenizer, encoder = text_side
    _pair(tmp_path / "data", "0.png", "a red cat")
    _pair(tmp_path / "data", "1.png", "the sea at night", seed=1)
    data = CaptionDataset(tmp_path / "data", image_size=8)
    cache = TextEmbeddingCache(tmp_path / "cache", "tiny-t5#0", MAX_LENGTH)
    with pytest.raises(MissingTextEmbedding, match="3 of the captions"):
        data.attach_text_cache(cache)
    cache.fill(data.captions, tokenizer, encoder, progress=False)
    data.attach_text_cache(cache)
    item = data[1]
    assert item["text"].shape == (MAX_LENGTH, CAPTION_DIM) and item["text_mask"].shape == (MAX_LENGTH,)
    assert torch.equal(item["text"], cache.get("the sea at night")[0])
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=2)))
    assert batch["image"].shape == (2, 3, 8, 8) and batch["text"].shape == (2, MAX_LENGTH, CAPTION_DIM)
    assert batch["caption"] == ["a red cat", "the sea at night"]


def test_cache_text_command_end_to_end(tmp_path, pipeline_dir, capsys):
    root = tmp_path / "data"
    _pair(root, "0.png", "a red cat")
    _pair(root, "1.png", "A red cat", seed=1)                   # same preprocessed caption
    _pair(root, "2.png", "a green tree", seed=2)
    _pair(root, "3.png", None, seed=3)
    parser = add_cache_text_arguments(argparse.ArgumentParser())
    argv = ["--root", str(root), "--text-encoder", str(pipeline_dir), "--cache", str(tmp_path / "cache"),
            "--max-length", str(MAX_LENGTH), "--batch-size", "2"]
    report = cache_text_main(parser.parse_args(argv))
    out = capsys.readouterr().out
    assert (report.items, report.skipped, report.captions, report.written, report.cached) == (3, 1, 3, 3, 0)
    assert "3 items" in out and "skipped 1 item" in out and "3.png" in out and "wrote 3 embedding(s)" in out
    again = cache_text_main(parser.parse_args(argv))
    assert (again.written, again.cached) == (0, 3) and "3 already cached" in capsys.readouterr().out

    tokenizer, encoder = load_text_encoder(pipeline_dir)
    cache = TextEmbeddingCache(tmp_path / "cache", encoder_identity(encoder), MAX_LENGTH)
    data = _quiet(root, image_size=8)
    data.attach_text_cache(cache)
    direct, mask = encode_prompts(["a green tree"], tokenizer, encoder, MAX_LENGTH)
    valid = mask[0].bool()
    torch.testing.assert_close(data[2]["text"][valid], direct[0][valid], atol=2e-3, rtol=1e-3)
