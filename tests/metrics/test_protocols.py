"""Evaluation protocols: the registry, validation and renaming by counts."""

from __future__ import annotations

import dataclasses

import pytest

from flexgen.metrics.protocols import PROTOCOLS, get_protocol


# ---------------------------------------------------------------------------------------------------------------
# Protocols
# ---------------------------------------------------------------------------------------------------------------
def test_registry_and_rename():
    fvd = PROTOCOLS["fvd2048_16f"]
    assert (fvd.num_real, fvd.num_fake, fvd.num_frames, fvd.real_stride, fvd.fake_stride, fvd.min_real_frames) == \
        (2048, 2048, 16, 3, 1, 48)
    assert fvd.with_counts(64, 64).name == "fvd64_16f"
    assert fvd.with_counts(64, 128).name == "fvd64x128_16f"
    assert fvd.with_counts() is fvd
    assert get_protocol("kid2048_16f").metric == "kid"
    with pytest.raises(ValueError, match=r"unknown protocol 'fvd9999'; known: .*fid30k_coco, fid50k, fvd2048_16f"):
        get_protocol("fvd9999")                 # a ValueError: the command line reports it as one line
    with pytest.raises(ValueError, match="shorter than one real clip"):
        dataclasses.replace(fvd, min_real_frames=20)


def test_fewer_real_items_rename_the_protocol():
    """What `allow_fewer` evaluates under: the count of real items in the name, the generated count kept."""
    assert PROTOCOLS["fvd2048_16f"].with_counts(num_real=16).name == "fvd16x2048_16f"
    assert PROTOCOLS["fvd2048_16f"].with_counts(64, 8).with_counts(num_real=16).name == "fvd16x8_16f"
    coco = dataclasses.replace(PROTOCOLS["fid30k_coco"], name="fid30k_coco256", real_size=(256, 256))
    renamed = coco.with_counts(num_real=20_000)
    assert renamed.name == "fid20000x30000_coco256" and (renamed.num_real, renamed.num_fake) == (20_000, 30_000)
