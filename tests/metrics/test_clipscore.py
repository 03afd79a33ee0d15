"""CLIP detector, CLIP score and the text-to-image protocols (clipscore_*, fid30k_coco), offline.

The CLIP folder is made here: a tiny random `CLIPModel` (width 16, 32x32 images, 8x8 patches), a CLIP BPE tokenizer
built in memory from a letter vocabulary and a few merges, and a `CLIPImageProcessor` with size / crop 32, all
`save_pretrained` into a temporary folder. Its architecture is registered as the CLIP variant "test-tiny" (with a
protocol of that variant) where a test needs a variant match. transformers' own `CLIPImageProcessor` is the
reference for the preprocessing; the CLIP score is checked against a hand computation. FID protocols use a fixed
random projection of mean-pooled pixels as the detector.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flexgen.files import file_sha256
from flexgen.metrics import clip, inception
from flexgen.metrics.clip import (
    CLIP_SCORE_WEIGHTS,
    CLIPDetector,
    ClipScoreStats,
    ClipVariant,
    clip_preprocess,
    clip_score,
    config_values,
    default_clip_path,
    variant_of,
)
from flexgen.metrics.eval_command import add_eval_arguments, eval_main
from flexgen.metrics.evaluate import evaluate, evaluate_clipscore
from flexgen.metrics.generated import generated_images
from flexgen.metrics.protocols import PROTOCOLS, Protocol
from flexgen.metrics.selection import resolve_protocol, select_fake_images, select_real_images
from flexgen.metrics.sources import center_crop_resize

LETTERS = "abcdefghijklmnopqrstuvwxyz"
WORDS = ("a", "cat", "dog", "red", "blue", "tree", "photo", "depicts", "of", "the", "on")
MAX_POSITIONS = 16
PROMPTS = ["a red cat", "a blue dog on the tree", "a photo of the tree", "the cat", "a dog", "red blue"]


# ---------------------------------------------------------------------------------------------------------------
# The tiny CLIP folder
# ---------------------------------------------------------------------------------------------------------------
def tiny_tokenizer():
    """CLIP's BPE (transformers' CLIPTokenizer) over single letters, with merges that make whole words of WORDS."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in [*LETTERS, *".,!?'0123456789"]:
        vocab[token] = len(vocab)
        vocab[token + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in WORDS:                       # left-to-right merges: c a -> ca, ca t</w> -> cat</w>
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            merged = pieces[0] + pieces[1]
            if (pieces[0], pieces[1]) not in merges:
                merges.append((pieces[0], pieces[1]))
            vocab.setdefault(merged, len(vocab))
            pieces = [merged, *pieces[2:]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_POSITIONS)


def tiny_clip(vocab_size: int, seed: int = 0):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=MAX_POSITIONS, bos_token_id=0,
                         eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=12)
    torch.manual_seed(seed)
    return CLIPModel(config).eval()


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    from transformers import CLIPImageProcessor

    folder = tmp_path_factory.mktemp("clip") / "clip-tiny"
    tokenizer = tiny_tokenizer()
    tiny_clip(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_variant(monkeypatch, clip_folder) -> Protocol:
    """Register the tiny architecture as CLIP variant "test-tiny" and return its clipscore protocol (also
    registered, as are a Hessel-style one and a fixed-N one)."""
    from transformers import CLIPConfig

    spec = tuple(sorted(config_values(CLIPConfig.from_pretrained(clip_folder)).items()))
    monkeypatch.setitem(clip.CLIP_VARIANTS, "test-tiny", ClipVariant("test-tiny", "test/clip-tiny", spec))
    made = [
        Protocol("clipscore_tiny", "clipscore", num_real=0, num_fake=0, num_frames=1, real_stride=1, fake_stride=1,
                 min_real_frames=1, clip_variant="test-tiny", clip_convention="torchmetrics"),
        Protocol("clips_tiny_hessel", "clipscore", num_real=0, num_fake=0, num_frames=1, real_stride=1,
                 fake_stride=1, min_real_frames=1, clip_variant="test-tiny", clip_convention="hessel",
                 text_prefix="A photo depicts "),
        Protocol("clipscore5_tiny", "clipscore", num_real=0, num_fake=5, num_frames=1, real_stride=1, fake_stride=1,
                 min_real_frames=1, clip_variant="test-tiny", clip_convention="torchmetrics"),
    ]
    for protocol in made:
        monkeypatch.setitem(PROTOCOLS, protocol.name, protocol)
    return made[0]


@pytest.fixture
def detector(tiny_variant, clip_folder) -> CLIPDetector:
    return CLIPDetector(clip_folder, batch_size=4, variant="test-tiny")


def random_images(count: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, *size), generator=generator, dtype=torch.uint8)


def write_generate_folder(folder: Path, images: torch.Tensor, prompts: list[str], stem: str = "out") -> Path:
    """Images, a grid and FILE.json as `flexgen generate --out folder/out.png` writes them (several images:
    out-000.png, ... beside the grid out.png; the sample manifest lists file, prompt, seed and index per image)."""
    from flexgen.sampling.manifest import SampleEntry, SampleManifest

    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
        name = f"{stem}-{i:03d}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / name)
        entries.append(SampleEntry(i, name, i, prompt=prompt))
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(folder / f"{stem}.png")           # the grid
    SampleManifest(command="flexgen generate", family="pixart-alpha", model="tiny", method="baseline",
                   checkpoint="tiny", checkpoint_sha256="", sampler="dpm-solver", steps=20, cfg_scale=4.5, seed=0,
                   samples=entries, grid=f"{stem}.png", complete=True).write(folder / f"{stem}.json")
    return folder


def write_txt_folder(folder: Path, images: torch.Tensor, prompts: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"img_{i:03d}.png")
        (folder / f"img_{i:03d}.txt").write_text(prompt + "\n")
    return folder


def hand_scores(image_features: torch.Tensor, text_features: torch.Tensor, weight: float) -> np.ndarray:
    a = image_features.double().numpy()
    b = text_features.double().numpy()
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return weight * np.maximum(cos, 0.0)


# ---------------------------------------------------------------------------------------------------------------
# Preprocessing: transformers' CLIPImageProcessor is the reference
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(40, 56), (32, 32), (64, 48), (17, 90), (100, 33), (33, 100)])
def test_preprocess_matches_clip_image_processor(detector, clip_folder, shape):
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor.from_pretrained(clip_folder, local_files_only=True)
    images = random_images(3, shape, seed=sum(shape))
    ours = detector.preprocess(images)
    theirs = processor(images=list(images), return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (3, 3, 32, 32) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_preprocess_crop_smaller_than_resize_and_openai_sizes():
    """A crop inside the resized image (offsets int((H' - h) / 2)) and the OpenAI 224 pipeline (processor defaults)."""
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 30})
    for shape in [(50, 71), (80, 45)]:
        images = random_images(2, shape, seed=shape[0])
        ours = clip_preprocess(images, 36, (32, 30), processor.image_mean, processor.image_std)
        theirs = processor(images=list(images), return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    openai = CLIPImageProcessor()                                                      # 224 / 224, bicubic
    images = random_images(2, (300, 260), seed=7)
    ours = clip_preprocess(images, 224, (224, 224), openai.image_mean, openai.image_std)
    torch.testing.assert_close(ours, openai(images=list(images), return_tensors="pt")["pixel_values"], atol=1e-4,
                               rtol=0)
    with pytest.raises(ValueError, match="uint8"):
        clip_preprocess(images.float(), 224, (224, 224), openai.image_mean, openai.image_std)


# ---------------------------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------------------------
def test_detector_identity(detector, clip_folder):
    assert detector.name == "clip-tiny" and detector.variant == "test-tiny" and detector.dim == 12
    assert detector.sha256 == file_sha256(clip_folder / "model.safetensors")
    assert detector.weights_file == clip_folder / "model.safetensors"
    assert detector.image_size == 32 and detector.crop == (32, 32) and detector.resample == "bicubic"
    assert CLIPDetector(clip_folder).variant == "test-tiny"    # recognised without being asked for


def test_image_features(detector):
    images = random_images(7, (48, 40), seed=3)
    features = detector.image_features(images)
    assert features.shape == (7, 12) and features.dtype == torch.float32
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(7))
    raw = detector.image_features(images, normalize=False)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(7))
    torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=-1), features)
    with torch.no_grad():                                       # the model's own projection of processed pixels
        reference = detector.model.get_image_features(pixel_values=detector.preprocess(images)).pooler_output
    torch.testing.assert_close(raw, reference, atol=1e-5, rtol=1e-5)
    one_by_one = torch.cat([detector.image_features(images[i:i + 1]) for i in range(7)])
    torch.testing.assert_close(one_by_one, features, atol=1e-5, rtol=1e-5)        # batch size does not matter
    assert detector.image_features(images[:0]).shape == (0, 12)
    with pytest.raises(TypeError, match="uint8"):
        detector.image_features(images.float())
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        detector.image_features(images[:, :1])


def test_text_features(detector):
    features = detector.text_features(PROMPTS)
    assert features.shape == (len(PROMPTS), 12) and features.dtype == torch.float32
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(len(PROMPTS)))
    alone = torch.cat([detector.text_features([p]) for p in PROMPTS])            # no padding: same embeddings
    torch.testing.assert_close(alone, features, atol=1e-5, rtol=1e-5)
    raw = detector.text_features(PROMPTS[:2], normalize=False)
    tokens = detector.tokenizer(PROMPTS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = detector.model.get_text_features(**tokens).pooler_output
    torch.testing.assert_close(raw, reference, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(features[0], features[1])

    long_prompt = " ".join(["a red cat on the tree"] * 10)                     # far more than 16 tokens
    tokens = detector.tokenizer([long_prompt], truncation=True, max_length=detector.max_length)["input_ids"][0]
    assert len(tokens) == MAX_POSITIONS and tokens[-1] == detector.tokenizer.eos_token_id
    assert detector.text_features([long_prompt]).shape == (1, 12)
    with pytest.raises(TypeError, match="list of strings"):
        detector.text_features("a cat")


# ---------------------------------------------------------------------------------------------------------------
# clip_score and its statistics
# ---------------------------------------------------------------------------------------------------------------
def test_clip_score_hand_computation():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(20, 8, generator=generator)
    texts = torch.randn(20, 8, generator=generator)
    texts[0] = -images[0]                                       # cosine -1: clamped to 0
    texts[1] = 3.0 * images[1]                                  # cosine 1: the maximum
    scores = clip_score(images, texts)
    assert scores.dtype == torch.float64 and scores.shape == (20,)
    np.testing.assert_allclose(scores.numpy(), hand_scores(images, texts, 100.0), rtol=1e-12, atol=1e-12)
    assert scores[0] == 0 and abs(float(scores[1]) - 100.0) < 1e-9 and (scores >= 0).all()
    hessel = clip_score(images, texts, convention="hessel")
    np.testing.assert_allclose(hessel.numpy(), hand_scores(images, texts, 2.5), rtol=1e-12, atol=1e-12)
    assert CLIP_SCORE_WEIGHTS == {"torchmetrics": 100.0, "hessel": 2.5}
    torch.testing.assert_close(clip_score(5 * images.double(), 0.1 * texts.double().numpy()), scores)  # any scale
    with pytest.raises(ValueError, match="convention"):
        clip_score(images, texts, convention="other")
    with pytest.raises(ValueError, match="one shape"):
        clip_score(images, texts[:3])
    with pytest.raises(ValueError, match="zero norm"):
        clip_score(torch.zeros(1, 8), texts[:1])


def test_stats_merge_and_moments():
    scores = torch.from_numpy(np.random.default_rng(0).normal(30.0, 4.0, 51)).clamp(min=0)
    scores[[3, 17]] = 0.0
    whole = ClipScoreStats().update(scores)
    halves = ClipScoreStats().update(scores[:20]).merge(ClipScoreStats().update(scores[20:35]).update(scores[35:]))
    for stats in (whole, halves):
        assert stats.count == 51 and stats.num_zero == 2
        assert stats.mean == pytest.approx(float(scores.mean()), rel=1e-12)
        assert stats.std == pytest.approx(float(np.std(scores.numpy(), ddof=1)), rel=1e-10)
        assert stats.sem == pytest.approx(stats.std / np.sqrt(51), rel=1e-12)
    assert halves.to_dict() == pytest.approx(whole.to_dict())
    assert ClipScoreStats().merge(whole).to_dict() == whole.to_dict()
    assert whole.all_reduce() is whole                          # no process group: unchanged
    empty = ClipScoreStats()
    assert empty.to_dict() == {"mean": None, "std": None, "sem": None, "count": 0, "num_zero": 0}
    with pytest.raises(ValueError, match="empty"):
        _ = empty.mean
    with pytest.raises(ValueError, match="1-D"):
        empty.update(scores[None])
    with pytest.raises(ValueError, match="NaN"):
        empty.update(torch.tensor([float("nan")]))


# ---------------------------------------------------------------------------------------------------------------
# flexgen eval clipscore
# ---------------------------------------------------------------------------------------------------------------
def test_eval_clipscore_on_generate_output(tmp_path, tiny_variant, detector, clip_folder, capsys):
    images = random_images(len(PROMPTS), (40, 40), seed=11)
    fake = write_generate_folder(tmp_path / "fake", images, PROMPTS)
    parser = add_eval_arguments(argparse.ArgumentParser())
    result = eval_main(parser.parse_args(["clipscore", "--fake", str(fake), "--protocol", "clipscore_tiny",
                                          "--detector", str(clip_folder), "--device", "cpu", "--batch-size", "4"]))
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == json.loads(json.dumps(result))

    expected = hand_scores(detector.image_features(images), detector.text_features(PROMPTS), 100.0)
    assert result["metric"] == "clip_score" and result["protocol"] == "clipscore_tiny"
    assert result["count"] == result["num_fake"] == len(PROMPTS)                 # the grid is not scored
    assert result["value"] == result["mean"] == pytest.approx(expected.mean(), rel=1e-5)
    assert result["std"] == pytest.approx(expected.std(ddof=1), rel=1e-4)
    assert result["detector"] == "clip-tiny" and result["detector_sha256"] == detector.sha256
    assert result["clip_variant"] == "test-tiny" and result["score"].startswith("100 * max(cos, 0)")
    assert result["prompts_source"] == "flexgen generate records: out.json"
    assert result["prompts_sha256"] == hashlib.sha256(json.dumps(PROMPTS).encode()).hexdigest()
    assert result["protocol_fields"]["clip_variant"] == "test-tiny"

    hessel = evaluate_clipscore("clips_tiny_hessel", fake, detector)
    prefixed = detector.text_features(["A photo depicts " + p for p in PROMPTS])
    expected_hessel = hand_scores(detector.image_features(images), prefixed, 2.5)
    assert hessel["value"] == pytest.approx(expected_hessel.mean(), rel=1e-5)

    first = eval_main(parser.parse_args(["clipscore", "--fake", str(fake), "--protocol", "clipscore_tiny",
                                         "--detector", str(clip_folder), "--num-fake", "3"]))
    assert first["protocol"] == "clipscore3_tiny" and first["count"] == 3
    assert first["value"] == pytest.approx(expected[:3].mean(), rel=1e-5)
    with pytest.raises(ValueError, match="needs 5 generated images"):
        evaluate_clipscore("clipscore5_tiny", write_generate_folder(tmp_path / "few", images[:4], PROMPTS[:4]),
                           detector)
    with pytest.raises(ValueError, match="--num-real does not apply"):
        eval_main(parser.parse_args(["clipscore", "--fake", str(fake), "--num-real", "4"]))

    # --records appends a leaderboard record whose sampler and seeds come from the generate JSON
    from flexgen.metrics.records import read_records

    records_file = tmp_path / "records.jsonl"
    args = ["clipscore", "--fake", str(fake), "--protocol", "clipscore_tiny", "--detector", str(clip_folder),
            "--records", str(records_file)]
    with pytest.raises(ValueError, match="needs --dataset"):
        eval_main(parser.parse_args(args))
    eval_main(parser.parse_args([*args, "--dataset", "coco30k", "--method", "flexdit r=[0.75,0.90]"]))
    (record,) = read_records(records_file)
    assert (record.metric, record.protocol, record.dataset) == ("clip_score", "clipscore_tiny", "coco30k")
    assert record.value == pytest.approx(result["value"]) and record.higher_is_better
    assert record.reference_sha256 == result["prompts_sha256"] and record.detector_sha256 == detector.sha256
    assert (record.steps, record.cfg_scale, record.method) == (20, 4.5, "flexdit r=[0.75,0.90]")
    assert record.num_samples == len(PROMPTS)


def test_eval_clipscore_on_txt_captions(tmp_path, tiny_variant, detector):
    images = random_images(len(PROMPTS), (36, 52), seed=5)
    from_txt = evaluate_clipscore(tiny_variant, write_txt_folder(tmp_path / "txt", images, PROMPTS), detector,
                                  batch_size=4)
    from_json = evaluate_clipscore(tiny_variant, write_generate_folder(tmp_path / "json", images, PROMPTS), detector)
    assert from_txt["prompts_source"] == "same-stem .txt files" and from_txt["count"] == len(PROMPTS)
    assert from_txt["value"] == pytest.approx(from_json["value"], rel=1e-6)
    assert from_txt["prompts_sha256"] == from_json["prompts_sha256"]

    (tmp_path / "txt" / "img_002.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"img_002\.txt"):
        evaluate_clipscore(tiny_variant, tmp_path / "txt", detector)
    (tmp_path / "txt" / "img_002.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        evaluate_clipscore(tiny_variant, tmp_path / "txt", detector)


def test_generated_folder_listing(tmp_path, caplog):
    images = random_images(3, (20, 20))
    fake = write_generate_folder(tmp_path / "fake", images, PROMPTS[:3])
    (fake / "samples.json").write_text(json.dumps({"samples": [{"file": "x.png"}]}))      # other JSON: ignored
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(fake / "stray.png")
    with caplog.at_level(logging.WARNING, logger="flexgen.metrics.generated"):
        listed = generated_images(fake)
    assert [p.name for p in listed.paths] == ["out-000.png", "out-001.png", "out-002.png"]
    assert listed.prompts == PROMPTS[:3] and "1 images are not listed" in caplog.text
    assert [p.name for p in select_fake_images(fake, PROTOCOLS["fid50k"].with_counts(2, 2)).paths] == \
        ["out-000.png", "out-001.png"]
    plain = generated_images(write_txt_folder(tmp_path / "plain", images, PROMPTS[:3]))
    assert plain.source == "same-stem .txt files"

    (fake / "out-001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"out-001\.png is listed in .*out\.json"):
        generated_images(fake)
    from flexgen.sampling.manifest import SampleManifest

    unfinished = write_generate_folder(tmp_path / "unfinished", images, PROMPTS[:3])
    manifest = SampleManifest.read(unfinished / "out.json")
    manifest.complete = False                                    # a killed flexgen generate run
    manifest.write(unfinished / "out.json")
    with pytest.raises(ValueError, match="did not complete"):
        generated_images(unfinished)
    (fake / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        generated_images(fake)
    with pytest.raises(FileNotFoundError, match="no generated image folder"):
        generated_images(tmp_path / "absent")


# ---------------------------------------------------------------------------------------------------------------
# Errors: wrong CLIP variant, missing folder or files, missing --real
# ---------------------------------------------------------------------------------------------------------------
def test_variant_mismatch(tmp_path, monkeypatch, tiny_variant, detector, clip_folder):
    fake = write_generate_folder(tmp_path / "fake", random_images(2, (32, 32)), PROMPTS[:2])
    with pytest.raises(ValueError, match=r"is test-tiny .*not ViT-L/14.*openai/clip-vit-large-patch14"):
        CLIPDetector(clip_folder, variant="ViT-L/14")
    with pytest.raises(ValueError, match=r"clipscore_l14 is the CLIP score of CLIP ViT-L/14.*is test-tiny"):
        evaluate_clipscore("clipscore_l14", fake, detector)
    monkeypatch.delitem(clip.CLIP_VARIANTS, "test-tiny")
    unknown = CLIPDetector(clip_folder)                         # no variant asked: loads, architecture unknown
    assert unknown.variant is None
    with pytest.raises(ValueError, match="is not a known CLIP variant"):
        evaluate_clipscore(tiny_variant, fake, unknown)
    with pytest.raises(ValueError, match="is not a known CLIP variant"):
        CLIPDetector(clip_folder, variant="ViT-B/32")
    parser = add_eval_arguments(argparse.ArgumentParser())
    with pytest.raises(ValueError, match=r"not ViT-B/32"):
        eval_main(parser.parse_args(["clipscore", "--fake", str(fake), "--protocol", "clipscore_b32",
                                     "--detector", str(clip_folder)]))
    with pytest.raises(ValueError, match="measures fid, not clipscore"):
        eval_main(parser.parse_args(["clipscore", "--fake", str(fake), "--protocol", "fid50k"]))
    with pytest.raises(ValueError, match="use evaluate_clipscore"):
        evaluate("clipscore_l14", fake, fake, detector)


def test_known_variants_and_protocols():
    from transformers import CLIPConfig

    l14 = CLIPConfig(text_config=dict(hidden_size=768, num_hidden_layers=12, max_position_embeddings=77),
                     vision_config=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, patch_size=14,
                                        image_size=224),
                     projection_dim=768)
    assert variant_of(l14) == "ViT-L/14"
    assert variant_of(CLIPConfig()) == "ViT-B/32"                               # transformers' default is B/32
    assert variant_of(CLIPConfig(vision_config=dict(patch_size=16))) == "ViT-B/16"
    for name, variant, weight in [("clipscore_l14", "ViT-L/14", 100.0), ("clipscore_b32", "ViT-B/32", 100.0),
                                  ("clipscore30k_l14", "ViT-L/14", 100.0), ("clips_b32_hessel", "ViT-B/32", 2.5)]:
        p = PROTOCOLS[name]
        assert p.metric == "clipscore" and p.clip_variant == variant and p.num_real == 0
        assert CLIP_SCORE_WEIGHTS[p.clip_convention] == weight
    assert PROTOCOLS["clipscore_l14"].num_fake == 0 and PROTOCOLS["clipscore30k_l14"].num_fake == 30_000
    assert PROTOCOLS["clips_b32_hessel"].text_prefix == "A photo depicts "
    with pytest.raises(ValueError, match="num_real must be 0"):
        dataclasses.replace(PROTOCOLS["clipscore_l14"], num_real=5)
    with pytest.raises(ValueError, match="unknown CLIP variant"):
        dataclasses.replace(PROTOCOLS["clipscore_l14"], clip_variant="ViT-H/14")
    with pytest.raises(ValueError, match="only clipscore protocols"):
        dataclasses.replace(PROTOCOLS["fid50k"], clip_variant="ViT-L/14")
    with pytest.raises(ValueError, match="no real images"):
        PROTOCOLS["clipscore_l14"].with_counts(num_real=3)


def test_missing_clip_folder(tmp_path, monkeypatch, clip_folder):
    monkeypatch.delenv("FLEXGEN_CLIP", raising=False)
    monkeypatch.setenv("FLEXGEN_CACHE", str(tmp_path / "cache"))
    expected = tmp_path / "cache" / "detectors" / "clip-vit-large-patch14"
    assert default_clip_path() == expected
    assert default_clip_path("ViT-B/32") == tmp_path / "cache" / "detectors" / "clip-vit-base-patch32"
    with pytest.raises(FileNotFoundError) as missing:
        CLIPDetector()
    message = str(missing.value)
    assert f"CLIP detector folder not found: {expected}" in message
    assert "openai/clip-vit-large-patch14" in message and "FLEXGEN_CLIP" in message and "sha256" in message
    monkeypatch.setenv("FLEXGEN_CLIP", str(tmp_path / "elsewhere"))
    assert default_clip_path("ViT-B/32") == tmp_path / "elsewhere"

    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("config.json", "preprocessor_config.json", "tokenizer.json"):
        (partial / name).write_bytes((clip_folder / name).read_bytes())
    with pytest.raises(FileNotFoundError, match=r"no weights file: expected model\.safetensors or pytorch_model"):
        CLIPDetector(partial)
    (partial / "model.safetensors").write_bytes((clip_folder / "model.safetensors").read_bytes())
    (partial / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks tokenizer\.json \(or vocab\.json \+ merges\.txt\)"):
        CLIPDetector(partial)

    fake = write_txt_folder(tmp_path / "fake", random_images(2, (32, 32)), PROMPTS[:2])
    parser = add_eval_arguments(argparse.ArgumentParser())
    with pytest.raises(FileNotFoundError, match=f"CLIP detector folder not found: {tmp_path / 'elsewhere'}"):
        eval_main(parser.parse_args(["clipscore", "--fake", str(fake)]))
    with pytest.raises(ValueError, match="--real DIR is required"):
        eval_main(parser.parse_args(["fid", "--fake", str(fake)]))


# ---------------------------------------------------------------------------------------------------------------
# fid30k_coco: real images centre-cropped to the generated size, seeded 30k subset
# ---------------------------------------------------------------------------------------------------------------
class PooledDetector:
    """uint8 images (N, 3, H, W) -> float64 (N, 4): a fixed random projection of 2x2 mean-pooled pixels."""

    name = "random-pooled"

    def __init__(self, seed: int = 0):
        self.weight = torch.randn(12, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        self.sha256 = hashlib.sha256(f"random-pooled seed={seed}".encode()).hexdigest()
        self.sizes: list[tuple[int, int]] = []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        assert images.dtype == torch.uint8 and images.ndim == 4
        self.sizes.append(tuple(images.shape[-2:]))
        pooled = torch.nn.functional.adaptive_avg_pool2d(images.double() / 255.0, 2).flatten(1)
        return pooled @ self.weight


def write_real(folder: Path, count: int = 10) -> Path:
    """COCO-like real images of mixed sizes and aspect ratios (jpg, in a sub-folder for some)."""
    rng = np.random.default_rng(1)
    for i in range(count):
        size = [(30, 40), (40, 30), (24, 24), (50, 36)][i % 4]
        where = folder / ("a" if i % 3 else "b")
        where.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(where / f"COCO_val2014_{i:012d}.png")
    return folder


def test_fid30k_coco_protocol_fields():
    p = PROTOCOLS["fid30k_coco"]
    assert (p.metric, p.num_real, p.num_fake, p.seed) == ("fid", 30_000, 30_000, 0)
    assert p.real_resize == "center_crop" and p.real_size is None and p.num_frames == 1
    assert p.with_counts(8, 8).name == "fid8_coco" and p.with_counts(8, 4).name == "fid8x4_coco"
    with pytest.raises(ValueError, match="fid protocols only"):
        dataclasses.replace(PROTOCOLS["fvd2048_16f"], real_resize="center_crop")
    with pytest.raises(ValueError, match="resolve it with resolve_protocol"):
        select_real_images(Path("."), p)


def test_fid30k_coco_real_selection_and_crop(tmp_path):
    real = write_real(tmp_path / "real")
    fake = write_generate_folder(tmp_path / "fake", random_images(4, (24, 24)), PROMPTS[:4])
    protocol = resolve_protocol(PROTOCOLS["fid30k_coco"].with_counts(6, 4), fake)
    assert protocol.name == "fid6x4_coco24" and protocol.real_size == (24, 24)

    chosen = select_real_images(real, protocol, batch_size=4)
    again = select_real_images(real, protocol)
    assert len(chosen) == 6 and chosen.num_candidates == 10 and chosen.paths == again.paths
    assert chosen.paths == sorted(chosen.paths, key=lambda p: p.relative_to(real).as_posix())
    other_seed = select_real_images(real, dataclasses.replace(protocol, seed=1))
    assert other_seed.paths != chosen.paths
    batches = list(chosen)
    assert [tuple(b.shape) for b in batches] == [(4, 3, 24, 24), (2, 3, 24, 24)]
    every = select_real_images(real, protocol.with_counts(10, 4))
    assert len(every) == 10                                     # no more real images than the protocol asks for

    # The crop itself: PIL bicubic so that the image covers 24x24, centre 24x24 (offsets rounded down).
    image = np.asarray(Image.open(chosen.paths[0]).convert("RGB"))
    height, width = image.shape[:2]
    scale = max(24 / height, 24 / width)
    new_w, new_h = max(24, round(width * scale)), max(24, round(height * scale))
    expected = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - 24) // 2, (new_h - 24) // 2
    expected = np.asarray(expected.crop((left, top, left + 24, top + 24)))
    np.testing.assert_array_equal(batches[0][0].permute(1, 2, 0).numpy(), expected)
    square = np.arange(24 * 24 * 3, dtype=np.uint8).reshape(24, 24, 3)
    assert center_crop_resize(square, (24, 24)) is square
    assert center_crop_resize(square, (16, 12)).shape == (16, 12, 3)

    mixed = write_txt_folder(tmp_path / "mixed", random_images(2, (24, 24)), PROMPTS[:2])
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(mixed / "img_009.png")
    with pytest.raises(ValueError, match="several sizes"):
        resolve_protocol(PROTOCOLS["fid30k_coco"].with_counts(6, 3), mixed)


def test_evaluate_fid30k_coco(tmp_path, monkeypatch, capsys):
    real = write_real(tmp_path / "real")
    fake24 = write_generate_folder(tmp_path / "fake24", random_images(4, (24, 24), seed=2), PROMPTS[:4])
    fake16 = write_generate_folder(tmp_path / "fake16", random_images(4, (16, 16), seed=2), PROMPTS[:4])
    cache = tmp_path / "cache"
    detector = PooledDetector()
    small = PROTOCOLS["fid30k_coco"].with_counts(6, 4)
    first = evaluate(small, real, fake24, detector, cache, with_kid=False)
    assert first["protocol"] == "fid6x4_coco24" and first["protocol_fields"]["real_size"] == (24, 24)
    assert first["num_real"] == 6 and first["num_fake"] == 4 and first["value"] > 0
    assert first["fake_prompts_sha256"] == hashlib.sha256(json.dumps(PROMPTS[:4]).encode()).hexdigest()
    assert set(detector.sizes) == {(24, 24)}                     # real crops and generated images alike
    second = evaluate(small, real, fake24, detector, cache, with_kid=False)
    assert second["reference_cache_hit"] and second["value"] == first["value"]
    other = evaluate(small, real, fake16, detector, cache, with_kid=False)
    assert not other["reference_cache_hit"] and other["protocol"] == "fid6x4_coco16"   # the size is in the key
    assert other["reference_stats"] != first["reference_stats"]

    monkeypatch.setattr(inception, "InceptionDetector", lambda path=None, device="cpu", batch_size=32: PooledDetector())
    parser = add_eval_arguments(argparse.ArgumentParser())
    result = eval_main(parser.parse_args(["fid", "--real", str(real), "--fake", str(fake24), "--protocol",
                                          "fid30k_coco", "--num-real", "6", "--num-fake", "4", "--cache",
                                          str(cache), "--no-kid"]))
    assert result["protocol"] == "fid6x4_coco24" and result["value"] == pytest.approx(first["value"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["protocol"] == "fid6x4_coco24"
