"""One place that chooses the accelerator: CUDA, XLA (torch_xla, imported lazily) or CPU."""

from __future__ import annotations

import os

import torch


def pick_device(prefer: str | None = None) -> torch.device:
    """`prefer` (or $SUTI_DEVICE): "cuda", "xla", "cpu", or None for the best available."""
    prefer = prefer or os.environ.get("SUTI_DEVICE")
    if prefer in (None, "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if prefer == "xla":
        import torch_xla.core.xla_model as xm  # only on TPU hosts, where the `tpu` extra is installed

        return xm.xla_device()
    return torch.device("cpu")


def autocast(device: torch.device):
    """bf16 autocast where the device supports it (CUDA with bf16, XLA/TPU); a disabled context on the CPU, where
    bf16 autocast does not speed up these models."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=torch.cuda.is_bf16_supported())
    if device.type == "xla":
        return torch.autocast("xla", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def wait(device: torch.device) -> None:
    """Block until the work queued on `device` is done (CUDA runs asynchronously), so a timer read next counts it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_done(device: torch.device) -> None:
    """End of one training or sampling step. On XLA this cuts the lazily traced graph (`torch_xla.sync()`): without
    it each step's graph holds every step before it, and is compiled again, ever larger (found by the XLA check,
    benchmarks/xla_check.py). A no-op elsewhere."""
    if device.type == "xla":
        import torch_xla

        torch_xla.sync()
