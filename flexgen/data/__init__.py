"""The data layer: shared dataset mechanics (`base`), decoding and writing media (`media`), the video clip datasets
(`video`), image–caption data with the T5 embedding cache (`captions`), and the `flexgen data` tools (`prepare`).
Import from the submodules; this package imports nothing itself."""
