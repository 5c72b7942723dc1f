"""The diffusion backbone and its parts: presets and factory, tokenizer, samplers and loss, the CLIP scorer,
accelerator choice, learning-rate schedules. Models never import pipelines (diffusers' rule)."""
