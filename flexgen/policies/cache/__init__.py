"""Training-free step caches: whether a sampler step runs the blocks at all (FORA: every n-th step; in between, the
blocks' last residual is reused)."""
