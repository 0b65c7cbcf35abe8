"""Extend the trainer without editing it: two custom Ignite handlers, ready to copy.

    python scripts/custom_handler.py --data ../shared/data/cifar10-jpg.tar.gz --epochs 5

The same file works from the command line, since `attach` has the handler signature:

    ignite-mlp train --data ../shared/data/cifar10-jpg.tar.gz --handler scripts/custom_handler.py:attach
"""

from __future__ import annotations

import sys

from ignite.engine import Engine, Events

from ignite_mlp import RunContext, TrainConfig, UserError, train
from ignite_mlp.handlers.extensions import TrainEvents


def attach(trainer: Engine, evaluator: Engine, context: RunContext) -> None:
    """Called once with both engines after the built-in handlers; attach anything here."""

    # 1. An extra TensorBoard scalar each epoch: the gap between training and validation
    #    accuracy, a direct picture of overfitting (tag "custom/generalisation_gap").
    @trainer.on(Events.EPOCH_COMPLETED)
    def log_gap(engine: Engine) -> None:
        gap = 100.0 * (engine.state.metrics["accuracy"] - evaluator.state.metrics["accuracy"])
        if context.tb_logger is not None:
            context.tb_logger.writer.add_scalar("custom/generalisation_gap", gap, engine.state.iteration)

    # 2. React to the package's own event: a new best validation score was just saved.
    @trainer.on(TrainEvents.NEW_BEST)
    def celebrate(engine: Engine) -> None:
        accuracy = 100.0 * evaluator.state.metrics["accuracy"]
        print(f"  new best: {accuracy:.2f}% at epoch {engine.state.epoch}")

    # Ignite's filters work as usual: here, a note every 10 epochs only.
    @trainer.on(Events.EPOCH_COMPLETED(every=10))
    def milestone(engine: Engine) -> None:
        print(f"  {engine.state.epoch} epochs done; checkpoints in {context.run_dir / 'checkpoints'}")


def main() -> int:
    from ignite_mlp.cli import build_parser, config_from_namespace

    ns = build_parser().parse_args(["train", *sys.argv[1:]])
    try:
        config: TrainConfig = config_from_namespace(ns)
        result = train(config, extra_handlers=[attach])
    except UserError as e:
        print(f"custom_handler.py: error: {e}", file=sys.stderr)
        return 2
    print(result.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
