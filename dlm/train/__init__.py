"""Training: optimizer and LR schedule, checkpoints, the loop."""
