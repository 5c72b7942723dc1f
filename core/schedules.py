"""Learning-rate schedules shared by the training loops."""

from __future__ import annotations

import math
from typing import Callable

import torch


def warmup_cosine(
    opt: torch.optim.Optimizer, total_steps: int, warmup_fraction: float = 0.05, clock: Callable[[], float] | None = None
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over at least one step, then cosine decay to 10% of the base rate. With `clock` (the share
    of a time budget used, 0..1), the decay follows whichever of steps and time is further along."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if clock is not None:
            progress = min(1.0, max(progress, clock()))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
