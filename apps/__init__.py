"""Hydra entry points, one per stage, and `apps.pipeline` chaining them. Thin: compose config, convert it once to
dataclasses, call actors/ and core/."""
