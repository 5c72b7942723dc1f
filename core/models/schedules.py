"""Learning-rate schedules shared by the training loops."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def warmup_cosine(
    opt: torch.optim.Optimizer,
    total_steps: int,
    warmup_fraction: float = 0.05,
    clock: Callable[[], float] | None = None,
    constant: bool = False,
    start_step: int = 0,
    ramp_steps: int = 0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first `warmup_fraction` of training, then cosine decay to 10% of the base rate (or,
    with `constant`, the base rate to the end).

    Progress is the share of `total_steps` done or, with `clock` (the share of a time budget used, 0..1), whichever of
    the two is further along: a time-boxed run whose step bound it will never reach still warms up and decays on
    time (without the clock, a run given 40,000 steps and stopped by its budget after a few hundred would never leave
    its warm-up).

    `start_step` continues the schedule of an earlier run that stopped at that step (the scheduler's own count starts
    at 0 in every run); `ramp_steps` additionally ramps this run's first steps up from 0, for an optimizer whose
    moments start empty again."""

    def factor(k: int) -> float:
        ramp = min(1.0, (k + 1) / ramp_steps) if ramp_steps else 1.0
        return ramp * base_factor(start_step + k)

    def base_factor(step: int) -> float:
        progress = step / max(1, total_steps)
        if clock is not None:
            progress = max(progress, clock())
        if progress < warmup_fraction:
            return max(step + 1, progress / warmup_fraction * max(1, total_steps * warmup_fraction)) / max(
                1, total_steps * warmup_fraction
            )
        if constant:
            return 1.0
        progress = min(1.0, (progress - warmup_fraction) / (1 - warmup_fraction))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
