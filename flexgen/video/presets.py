"""Latte / DiT size presets, keyed by the papers' names (no torch import: the config layer and the backbone
registry read the names from here).

Latte depth counts spatial + temporal blocks (Latte-XL/2: 14 + 14); DiT's depth is its blocks (Peebles & Xie 2023,
Table 1); `temporal` says whether the family has temporal blocks.
"""

_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}

PRESETS: dict[str, dict] = {
    f"{family}-{size}/{p}": dict(depth=depth, hidden_size=dim, num_heads=heads, patch_size=p,
                                 temporal=family == "Latte")
    for family in ("Latte", "DiT")
    for size, (depth, dim, heads) in _SIZES.items()
    for p in (2, 4, 8)
}
