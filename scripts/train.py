"""Train the tutorial's MLP on CIFAR-10: the script a student opens first.

    python scripts/train.py --data ../shared/data/cifar10-jpg.tar.gz --epochs 5

Every flag of ``ignite-mlp train`` works here too; this file shows the Python API that the
command line is built on: a config, a call to ``train``, and the result it returns.
"""

from __future__ import annotations

import sys

from ignite_mlp import TrainConfig, UserError, train
from ignite_mlp.cli import build_parser, config_from_namespace


def main() -> int:
    # Reuse the CLI's flags (generated from TrainConfig) instead of writing them again.
    ns = build_parser().parse_args(["train", *sys.argv[1:]])
    try:
        config: TrainConfig = config_from_namespace(ns)
        result = train(config)
    except UserError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    print(result.report())
    # The tutorial's logging dictionary, one value per epoch:
    print({key: [round(v, 2) for v in values[-3:]] for key, values in result.history.items()}, "(last 3 epochs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
