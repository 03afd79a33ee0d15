"""Layouts: which pretrained block plays which FlexDiT role.

A layout is a string with one letter per (spatial) block of the backbone, bottom to top:

    P  Poolingformer       all dense tokens; attention is the token mean of V (Q and K dropped)
    G  sparse generation   pools the dense tokens; sparse queries attend to the dense tokens
    S  sparse block        sparse tokens attend to sparse tokens
    R  dense recovery      fuse(upsample(sparse), dense) queries attend to the sparse tokens
    D  dense block         dense tokens (inside or between SDTMs)
    T  top block           dense tokens after the last SDTM

A Sparse-Dense Token Module (SDTM) is G S* R. For Latte, a letter names a spatial block; the temporal block that
follows it runs on the token set the spatial block outputs (sparse positions inside an SDTM), so a letter is a
(spatial, temporal) pair and the pretrained blocks keep their order. Spaces are ignored.
"""

from __future__ import annotations

import re

ROLES = {"P": "poolingformer", "G": "sparse generation", "S": "sparse", "R": "dense recovery", "D": "dense",
         "T": "top"}

# FlexDiT's DiT-XL/2 layouts (paper: 2 PF + 4 × [1 gen, 3 sparse, 1 rec, 1 dense] + 2 top; the released 256 px
# log: 1 PF + 4 SDTMs + 3 top). The rest are our documented choices; the paper gives no layout for them.
LAYOUTS: dict[str, str] = {
    "DiT-XL/2": "PP GSSSRD GSSSRD GSSSRD GSSSRD TT",
    "DiT-XL/2-1pf": "P GSSSRD GSSSRD GSSSRD GSSSRD TTT",
    # PixArt-α XL/2 has DiT-XL/2's 28 blocks; the paper names no PixArt layout, we use DiT-XL/2's.
    "PixArt-XL/2": "PP GSSSRD GSSSRD GSSSRD GSSSRD TT",
    # 12 blocks: 1 PF + 2 × [1, 2, 1, 1] + 1 top (fits FlexDiT-B's published 14.34 GFLOPs best; flexdit.md §2).
    "DiT-B/2": "P GSSRD GSSRD T",
    "DiT-S/2": "P GSSRD GSSRD T",
    # Latte, in (spatial, temporal) pairs: one Poolingformer pair, SDTMs without the dense block (the rec pair's
    # temporal block already runs dense), one top pair.
    "Latte-S/2": "P GSSR T",
    "Latte-B/2": "P GSSR T",
    "Latte-L/2": "P GSSSR GSSSR T",
    "Latte-XL/2": "P GSSSSR GSSSSR T",
}


def parse_layout(layout: str, num_blocks: int) -> str:
    """A preset name or a role string -> a validated role string of length num_blocks."""
    roles = re.sub(r"\s+", "", LAYOUTS.get(layout, layout))
    if not roles or set(roles) - set(ROLES):
        raise ValueError(f"layout {layout!r} is neither a preset ({', '.join(LAYOUTS)}) nor a string of the role "
                         f"letters {', '.join(f'{k}={v}' for k, v in ROLES.items())}")
    if len(roles) != num_blocks:
        raise ValueError(f"layout {layout!r} has {len(roles)} roles but the model has {num_blocks} blocks")
    if not re.fullmatch(r"[PD]+(GS*R[PD]*)*T*", roles) or "T" in roles and "G" not in roles:
        raise ValueError(f"layout {layout!r} ({roles}): each SDTM must be G S* R; P and D may stand between SDTMs "
                         "(at least one before the first, which keeps block 0 dense), T only after the last SDTM")
    return roles


def sdtm_count(roles: str) -> int:
    return roles.count("G")
