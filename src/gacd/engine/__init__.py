"""Training engine: loop, checkpoints, export, schedules, metrics."""
