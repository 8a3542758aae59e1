"""Learning-rate schedules as a multiplier of the peak rate, evaluated every optimizer step."""

import math

SCHEDULES = ("cosine", "onecycle", "constant")


def lr_multiplier(schedule: str, step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier in [0, 1] at ``step``: linear warmup, then cosine or linear decay to zero, or constant."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "onecycle":
        return 1.0 - progress
    raise ValueError(f"unknown schedule '{schedule}' (available: {', '.join(SCHEDULES)})")
