"""Training: the state a checkpoint holds, the loop in parts, optimizer, EMA, distributed wrapping, logs."""
