"""The engine: run configs and builders, training loop, evaluation, checkpoints, logging, distributed helpers."""
