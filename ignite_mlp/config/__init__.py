"""What a run is asked to do: ``TrainConfig`` (defaults, TOML and CLI overrides), the names each
option accepts, the ``--recipe`` presets and every option's checks. Knows nothing of Ignite."""

from ignite_mlp.config.train_config import TrainConfig

__all__ = ["TrainConfig"]
