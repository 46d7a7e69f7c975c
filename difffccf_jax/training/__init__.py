"""Training: the loss terms, the adaptive weighting policy and the training loop."""
