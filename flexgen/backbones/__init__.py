"""Backbone families behind one interface (`base.Denoiser`) and one registry (`registry`): the only place that
knows Latte / DiT from PixArt-α. The modules are imported explicitly (`flexgen.registry`, ...), so that
the config layer can read the registry's preset table without loading any model code."""
