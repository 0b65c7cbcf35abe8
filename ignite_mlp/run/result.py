"""Step 8 of a run: what it produced (:class:`RunResult`), why it stopped early if it did, and
with ``--val-split`` the test split evaluated once with the best weights."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ignite.engine import Engine
from torch import nn

from ignite_mlp.config.constraints import loss_is_nan
from ignite_mlp.config.train_config import TrainConfig
from ignite_mlp.data.whitening import whiten_images
from ignite_mlp.engine.trainer import create_evaluator
from ignite_mlp.files import write_json_atomic
from ignite_mlp.handlers.guardrails import overfit_report
from ignite_mlp.handlers.tensorboard.logger import write_test_hparams
from ignite_mlp.run.checkpoint_io import evaluation_weights, safe_load
from ignite_mlp.run.engines import Engines
from ignite_mlp.run.plan import RunPlan
from ignite_mlp.run.prepare import RunData, validation_loader
from ignite_mlp.run.spec import RunSpec

if TYPE_CHECKING:
    from ignite_mlp.run.training import Attached


@dataclass
class RunResult:
    """What a finished run produced: its history and the paths it wrote."""

    run_dir: Path
    history: dict[str, list[float]]
    best_val_acc: float | None
    best_epoch: int | None
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    files: dict[str, Path] = field(default_factory=dict)
    # Set when the run failed on its own (NaN loss): why, and what to try.
    stopped: str | None = None
    # What else the user should read: early stopping, the overfit check's verdict.
    notes: list[str] = field(default_factory=list)
    # --dry-run: the run only checked the setup, so its accuracy is no result.
    dry_run: bool = False
    # --val-split: the test split, evaluated once at the end with the best weights (percent, mean loss).
    test_acc: float | None = None
    test_loss: float | None = None

    def report(self) -> str:
        """The closing lines printed after training."""
        if self.best_epoch is None:
            return f"no epoch finished; run directory {self.run_dir}"
        lead = "".join(f"{line}\n" for line in [self.stopped, *self.notes] if line)
        if self.dry_run:
            return lead + (
                "dry run finished: 1 epoch of 2 training steps and at most 2 validation batches ran; its accuracy "
                "means nothing; drop --dry-run to train\n"
                f"run directory:   {self.run_dir}"
            )
        test = "" if self.test_acc is None else f"test accuracy {self.test_acc:.2f}% (loss {self.test_loss:.4f})\n"
        return lead + (
            f"best validation accuracy {self.best_val_acc:.2f}% at epoch {self.best_epoch}\n{test}"
            f"best checkpoint: {self.best_checkpoint}\n"
            f"run directory:   {self.run_dir} (tensorboard --logdir {self.run_dir.parent})"
        )


def collect_result(spec: RunSpec, run_dir: Path, engines: Engines, attached: Attached) -> RunResult:
    """The run's history and files, why it stopped early if it did, and the notes to print."""
    config, trainer, history = spec.config, engines.trainer, attached.history
    stopped = nan_message(trainer, config)
    notes = []
    if attached.stopper is not None and trainer.state.epoch < spec.max_epochs and stopped is None:
        notes.append(
            f"early stopping: {config.early_stop_metric} did not improve for {config.patience} epochs; "
            f"stopped after epoch {trainer.state.epoch}"
        )
    if config.overfit_batches and history.values["train_acc_epoch"]:
        values = history.values
        notes.append(overfit_report(values["train_acc_epoch"][-1], config.overfit_batches, values["loss_epoch"]))
    return RunResult(
        run_dir=run_dir,
        history=history.state_dict(),
        best_val_acc=history.best_val_acc(),
        best_epoch=history.best_epoch(),
        best_checkpoint=_checkpoint_path(attached.best),
        last_checkpoint=_checkpoint_path(attached.last),
        files=attached.files,
        stopped=stopped,
        notes=notes,
        dry_run=config.dry_run,
    )


def evaluate_test_once(
    spec: RunSpec, plan: RunPlan, data: RunData, engines: Engines, best_checkpoint: Path
) -> tuple[float, float]:
    """Accuracy (percent) and mean loss of the best checkpoint's weights on the test split that
    --val-split kept aside, served as validation was (whitened, normalised, TTA): the one time
    the run reads it. Every rank evaluates its share; Ignite's metrics sum the shares."""
    assert data.held_out is not None
    config = spec.config
    model = copy.deepcopy(engines.eval_model if engines.eval_model is not None else engines.model)
    model.load_state_dict(evaluation_weights(safe_load(best_checkpoint)))
    images = data.held_out.test_images
    if data.whitening is not None:
        images = whiten_images(images, data.whitening)
    loader = validation_loader(images, data.held_out.test_labels, config, spec.device, spec.rank, spec.world_size)
    evaluator = create_evaluator(model, nn.CrossEntropyLoss(), spec.device, config.tta)
    metrics = evaluator.run(loader, epoch_length=spec.val_batches).metrics
    test_acc, test_loss = 100.0 * float(metrics["accuracy"]), float(metrics["loss"])
    plan.write(f"test split, evaluated once with the best weights: accuracy {test_acc:.2f}%, loss {test_loss:.4f}")
    return test_acc, test_loss


def record_test_metrics(
    spec: RunSpec, plan: RunPlan, engines: Engines, attached: Attached, test_acc: float, test_loss: float
) -> None:
    """``test_acc`` and ``test_loss`` in the run's history and in its TensorBoard HParams entry."""
    history = {**attached.history.state_dict(), "test_acc": test_acc, "test_loss": test_loss}
    write_json_atomic(attached.files["history"], history)
    if spec.config.tensorboard:
        write_test_hparams(plan.run_dir, attached.run_info, attached.history, engines.trainer, test_acc, test_loss)


def nan_message(trainer: Engine, config: TrainConfig) -> str | None:
    """Why TerminateOnNan stopped the run, and what to try, or None if it did not."""
    output = trainer.state.output
    if not loss_is_nan(output):
        return None
    return (
        f"training stopped: the loss became {float(output['loss'])} at epoch {trainer.state.epoch}, "
        f"iteration {trainer.state.iteration}; the learning rate is probably too high: "
        f"try --lr {config.lr / 10:g}. The best checkpoint so far is kept."
    )


def _checkpoint_path(checkpoint: Any) -> Path | None:
    # Ignite's DiskSaver reports the file with its folder already joined on.
    return Path(checkpoint.last_checkpoint) if checkpoint.last_checkpoint else None
