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
    with pytest.raises(KeyError, match="unknown protocol"):
        get_protocol("fvd_nonsense")
    with pytest.raises(ValueError, match="shorter than one real clip"):
        dataclasses.replace(fvd, min_real_frames=20)
