"""The training loop: config, trainer, losses, metrics, checkpoints, evaluation, classifier pretraining."""
