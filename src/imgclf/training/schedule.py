"""Learning-rate schedules as a multiplier of the peak rate, evaluated every optimizer step."""

import math

SCHEDULES = ("cosine", "onecycle", "constant")


def lr_multiplier(
    schedule: str, step: int, total_steps: int, warmup_steps: int, start: float = 0.0, end: float = 0.0
) -> float:
    """Multiplier at ``step``: a linear warmup from ``start`` to 1, then a cosine or linear decay to ``end``, or
    constant."""
    if step < warmup_steps:
        return start + (1 - start) * (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "onecycle":
        return end + (1 - end) * (1.0 - progress)
    raise ValueError(f"unknown schedule '{schedule}' (available: {', '.join(SCHEDULES)})")
