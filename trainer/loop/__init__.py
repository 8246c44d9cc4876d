"""The training loop, its checkpoints and distributed (torchrun) helpers."""
