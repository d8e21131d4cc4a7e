"""Training: optimizer, the jitted sharded train step, reference log-probs and the training loop."""
