"""Training: optimizers, schedules, callbacks, checkpoints, history and the loop."""
