"""The named presets of ``--recipe``: field values applied over TrainConfig's defaults.

Importable without torch (the CLI's ``--help`` lists them).
"""

from __future__ import annotations

from typing import Any

# Presets: field values applied over the defaults, under any TOML key or flag the user gives.
# "strong" stays a pure MLP; each ingredient was kept because it paid on CIFAR-10 (docs/recipes.md).
RECIPES: dict[str, dict[str, Any]] = {
    "tutorial": {},
    "strong": {
        "hidden_sizes": [2048, 1024, 512],
        "norm": "batch",
        "activation": "gelu",
        "dropout": 0.1,
        "label_smoothing": 0.1,
        "augment": "flip+crop",
        "crop_padding": 2,
        "normalize": "dataset",
        "lr": 0.05,
        "nesterov": True,
        "weight_decay": 5e-4,
        "lr_schedule": "onecycle",
        "batch_size": 512,
        "epochs": 40,
    },
    # "strong" without dropout, on ZCA-whitened images, validated with the mirror image averaged
    # in, for 60 epochs: above 70% in under 15 minutes on a 2-core CPU (docs/recipes.md).
    "best": {
        "hidden_sizes": [2048, 1024, 512],
        "norm": "batch",
        "activation": "gelu",
        "dropout": 0.0,
        "label_smoothing": 0.1,
        "augment": "flip+crop",
        "crop_padding": 2,
        "whiten": "zca",
        "whiten_regularizer": 0.1,
        "tta": True,
        "lr": 0.05,
        "nesterov": True,
        "weight_decay": 5e-4,
        "lr_schedule": "onecycle",
        "batch_size": 512,
        "epochs": 60,
    },
}
