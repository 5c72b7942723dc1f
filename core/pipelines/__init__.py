"""Exports usable without Ray: the trained apprentice as a diffusers `DiffusionPipeline`, with its save and load."""
