"""Training: config, the multi-view loss and its cross-rank collectives, training data, optimiser,
checkpoints and the trainer.  Uses `infer` only through its typed options (dev-set evaluation)."""
