"""Phase 4 of a run: the package's own handlers on the trainer and evaluator, in the order that matters.

Ignite runs the handlers of one event in the order they were attached, so the order below is
the run's behaviour: the NaN stop first, validation before everything that reads its metrics,
the history before TensorBoard (which logs it), TensorBoard before the last checkpoint (so an
epoch's events are on disk before the checkpoint that covers them), checkpoints before the
progress bar's summary line, and the user's handlers after all of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ignite.handlers import Checkpoint, EarlyStopping, TensorboardLogger

from ignite_mlp.distributed import ranks
from ignite_mlp.handlers.builtin import (
    History,
    attach_checkpoints,
    attach_curves,
    attach_epoch_summary,
    attach_interrupt_checkpoint,
    attach_progress_bar,
    attach_terminate_on_nan,
    attach_validation,
)
from ignite_mlp.handlers.guardrails import attach_initial_loss_check, attach_overfitting_watch
from ignite_mlp.handlers.tensorboard.images import attach_confusion_matrix
from ignite_mlp.handlers.tensorboard.logger import attach_tensorboard, environment, run_text
from ignite_mlp.handlers.training import attach_early_stopping, attach_lr_schedule, attach_new_best_event
from ignite_mlp.progress import progress_mode
from ignite_mlp.run.checkpoints import EpochMetricsState, RandomState, data_record
from ignite_mlp.run.engines import Engines
from ignite_mlp.run.plan import RunPlan
from ignite_mlp.run.prepare import RunData
from ignite_mlp.run.rundir import RunDir


@dataclass
class Hooks:
    """What the built-in handlers give the later phases: the files, the history, the checkpoints."""

    files: dict[str, Path]
    history: History
    # What the run's configuration file records: the config as resolved, and the device (and process count) used.
    run_info: dict[str, Any]
    # Everything the last checkpoint saves, which a resume restores.
    to_save: dict[str, Any]
    best: Checkpoint
    last: Checkpoint
    interrupted: Checkpoint
    scheduler: Any = None
    stopper: EarlyStopping | None = None
    tb: TensorboardLogger | None = None


def run_files(run_dir: Path) -> dict[str, Path]:
    """Where a run writes each of its files."""
    run = RunDir(run_dir)
    return {"config": run.config, "history": run.history, "checkpoints": run.checkpoints, "curves": run.curves}


def attach_builtins(plan: RunPlan, data: RunData, engines: Engines) -> Hooks:
    """Attach every built-in handler to ``engines`` and return what later phases need."""
    config, trainer, evaluator = plan.config, engines.trainer, engines.evaluator
    files = run_files(plan.run_dir)
    history = History(files["history"] if plan.main else None)
    attach_terminate_on_nan(trainer)
    attach_initial_loss_check(trainer, data.dataset.num_classes, plan.write)
    scheduler = attach_lr_schedule(
        trainer,
        engines.optimizer,
        config.lr_schedule,
        config.lr,
        plan.max_epochs * data.epoch_length,
        data.epoch_length,
        config.lr_step_epochs,
        config.lr_gamma,
    )
    attach_validation(trainer, evaluator, data.val_loader, epoch_length=2 if config.dry_run else None)
    history.attach(trainer, evaluator)
    # With the classes and image shape, so predict and export need nothing but the run directory.
    run_info = {**config.to_dict(), "resolved_device": str(plan.device), **data_record(data.dataset)}
    run_info.update(resolved_precision=data.precision.name, precision_reason=data.precision.reason)
    if plan.distributed:
        run_info["world_size"] = ranks.world_size()
    tb = _attach_tensorboard(plan, data, engines, history, run_info, lr_per_iteration=scheduler is not None)
    # Everything a resume needs. "trainer" precedes "train_metrics": the latter reads the
    # restored iteration to tell a mid-epoch checkpoint from an epoch-end one.
    to_save: dict[str, Any] = {
        "model": engines.model,
        "optimizer": engines.optimizer,
        "trainer": trainer,
        "train_metrics": EpochMetricsState(trainer, engines.train_metrics),
        "history": history,
        "random": RandomState(),
    }
    if engines.ema is not None:
        to_save["ema_model"] = engines.ema.ema_model
    stopper = attach_early_stopping(trainer, evaluator, config.patience, config.early_stop_metric)
    to_save.update({k: v for k, v in (("lr_scheduler", scheduler), ("early_stopping", stopper)) if v is not None})
    best, last = attach_checkpoints(trainer, evaluator, engines.eval_model, to_save, files["checkpoints"])
    attach_new_best_event(trainer, evaluator, best)
    bar = attach_progress_bar(trainer) if progress_mode(config.progress) == "bar" and plan.main else None
    log = bar.log_message if bar else plan.write
    attach_epoch_summary(trainer, history, log)
    attach_overfitting_watch(trainer, history, log)
    if plan.main:
        attach_curves(trainer, history, files["curves"])
    interrupted = attach_interrupt_checkpoint(trainer, last, engines.should_stop, files["checkpoints"])
    return Hooks(files, history, run_info, to_save, best, last, interrupted, scheduler, stopper, tb)


def _attach_tensorboard(
    plan: RunPlan,
    data: RunData,
    engines: Engines,
    history: History,
    run_info: dict[str, Any],
    lr_per_iteration: bool,
) -> TensorboardLogger | None:
    """TensorBoard on rank 0; on the other ranks only what rank 0's logging needs them to compute."""
    config, dataset = plan.config, data.dataset
    if config.tensorboard and not plan.main and config.tb_images_every > 0:
        # Rank 0's TensorBoard images read the confusion matrix, an Ignite metric reduced across
        # ranks: every rank must compute it, or rank 0 would wait in that reduction forever.
        attach_confusion_matrix(engines.evaluator, dataset.num_classes, plan.device)
    if not (config.tensorboard and plan.main):
        return None
    return attach_tensorboard(
        engines.trainer,
        engines.optimizer,
        history,
        plan.run_dir,
        lr_per_iteration=lr_per_iteration,
        # On resume, TensorBoard hides whatever the dead run logged after its checkpoint.
        purge_step=plan.resume.purge_step if plan.resume else None,
        evaluator=engines.evaluator,
        classes=dataset.classes,
        # Whitened images cannot be drawn back from the batch: then no misclassified grid.
        normalization=None if data.whitening is not None else (config.mean, config.std),
        device=plan.device,
        images_every=config.tb_images_every,
        train_samples=(dataset.train_images, dataset.train_labels),
        model=engines.model,
        histograms=config.tb_histograms,
        hparams=run_info,
        text=run_text(run_info, environment(plan.device)),
        processes=ranks.world_size(),
    )
