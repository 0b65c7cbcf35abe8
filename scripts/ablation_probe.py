"""A handler for the ablation runs of ``--recipe best``: per epoch, the validation accuracy of
the trained weights and of their moving average, each with and without the mirrored image.

EMA and TTA change only what is validated, never the training itself, so one run with both
gives the four rows "neither / TTA / EMA / both" exactly as four runs of the same seed would
(except for their wall time). Written to ``probe.json`` in the run directory:

    ignite-mlp train --recipe best --handler scripts/ablation_probe.py:attach --data ...
"""

from __future__ import annotations

import json
import time

import torch
from ignite.engine import Engine, Events

from ignite_mlp.forward import EvalForward
from ignite_mlp.run.training import RunContext


def attach(trainer: Engine, evaluator: Engine, context: RunContext) -> None:
    # The evaluator's own function (fp32, the mirror image averaged in or not): the probe computes as it does.
    variants = {"plain": EvalForward(context.model), "tta": EvalForward(context.model, tta=True)}
    if context.eval_model is not None and context.eval_model is not context.model:
        variants.update({"ema": EvalForward(context.eval_model), "ema+tta": EvalForward(context.eval_model, tta=True)})
    path = context.run_dir / "probe.json"
    records: list[dict[str, float]] = json.loads(path.read_text()) if path.exists() else []

    def probe(engine: Engine) -> None:
        start = time.perf_counter()
        loader = evaluator.state.dataloader  # the validation batches the evaluator just ran over
        row: dict[str, float] = {"epoch": engine.state.epoch}
        for name, forward in variants.items():
            was_training = forward.training
            forward.eval()
            correct = total = 0
            with torch.no_grad():
                for x, y in loader:
                    correct += int((forward(x).argmax(1) == y).sum())
                    total += len(y)
            forward.train(was_training)
            row[name] = round(100.0 * correct / total, 4)
        row["probe_seconds"] = round(time.perf_counter() - start, 2)
        row["elapsed_seconds"] = round(time.perf_counter() - START, 1)
        records.append(row)
        path.write_text(json.dumps(records, indent=1) + "\n")

    trainer.add_event_handler(Events.EPOCH_COMPLETED, probe)


START = time.perf_counter()
