"""ignite_mlp: the tutorial's CIFAR-10 multi-layer perceptron, trained by PyTorch-Ignite engines.

The names below are imported on first use, so ``import ignite_mlp`` (and the CLI's ``--help``)
does not import torch or Ignite.
"""

from __future__ import annotations

import importlib
from typing import Any

from ignite_mlp.config.train_config import TrainConfig
from ignite_mlp.errors import UserError
from ignite_mlp.version import __version__

# Public name -> the module that defines it.
_LAZY = {
    "MLP": "ignite_mlp.model",
    "RunContext": "ignite_mlp.run.training",
    "RunResult": "ignite_mlp.run.result",
    "train": "ignite_mlp.run.training",
}

__all__ = ["MLP", "RunContext", "RunResult", "TrainConfig", "UserError", "__version__", "train"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'ignite_mlp' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # once imported, a plain attribute
    return value
