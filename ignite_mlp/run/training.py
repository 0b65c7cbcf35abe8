"""``train(config)``: a run, read top to bottom like Ignite's examples' ``training(local_rank, config)``:

1. :func:`~ignite_mlp.run.plan.resolve_plan`: check the config, pick the device, read the checkpoint
   to resume from (a :class:`~ignite_mlp.run.resume.Resume`), decide the precision; nothing read or
   written yet;
2. :func:`~ignite_mlp.run.prepare.prepare_data`, the dataflow: load, summarise, measure statistics,
   build loaders; then ``--lr auto``;
3. :func:`~ignite_mlp.run.spec.resolve_spec`: the :class:`~ignite_mlp.run.spec.RunSpec`, every
   "auto" resolved, which everything after reads;
4. :func:`~ignite_mlp.run.engines.build_engines`: model, optimizer, trainer with its metrics, evaluator;
5. the built-in handlers, one per line in :func:`train`;
6. :meth:`Resume.apply <ignite_mlp.run.resume.Resume.apply>`: restore the saved state before anything
   is written; then the user's handlers;
7. :func:`~ignite_mlp.run.fit.fit`: record the run's configuration and ``trainer.run``, with Ctrl-C
   routed to a clean stop;
8. :func:`~ignite_mlp.run.result.collect_result`: what the run produced, and what the user should
   read; with ``--val-split`` the test split evaluated once.

Ignite runs the handlers of one event in the order they were attached, so the order of step 5
is the run's behaviour: the NaN stop first, validation before everything that reads its metrics,
the history before TensorBoard (which logs it), TensorBoard before the last checkpoint (so an
epoch's events are on disk before the checkpoint that covers them), checkpoints before the
progress bar's summary line, and the user's handlers after all of these.

The CLI is a thin layer over this function, so a Python user gets exactly the same run:

    >>> from ignite_mlp import TrainConfig, train           # doctest: +SKIP
    >>> result = train(TrainConfig(epochs=5, data="../shared/data/cifar10-jpg.tar.gz"))  # doctest: +SKIP
    >>> result.best_val_acc, result.best_checkpoint          # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine
from ignite.handlers import Checkpoint, EarlyStopping, TensorboardLogger
from ignite.utils import manual_seed
from torch import nn

from ignite_mlp.config.train_config import TrainConfig
from ignite_mlp.data import Dataset
from ignite_mlp.data.identity import data_record
from ignite_mlp.distributed import ranks
from ignite_mlp.handlers.checkpoints import attach_checkpoints, attach_interrupt_checkpoint
from ignite_mlp.handlers.console import attach_epoch_summary, attach_progress_bar
from ignite_mlp.handlers.controls import (
    attach_early_stopping,
    attach_lr_schedule,
    attach_new_best_event,
    attach_terminate_on_nan,
)
from ignite_mlp.handlers.extensions import handler_table
from ignite_mlp.handlers.guardrails import attach_initial_loss_check, attach_overfitting_watch
from ignite_mlp.handlers.history import History, attach_curves, attach_validation
from ignite_mlp.handlers.tensorboard.images import attach_confusion_matrix
from ignite_mlp.handlers.tensorboard.logger import TensorboardView, attach_tensorboard, environment, run_text
from ignite_mlp.run.engines import Engines, build_engines, build_optimizer
from ignite_mlp.run.fit import fit
from ignite_mlp.run.lr_finder import record_lr_curve, resolve_auto_lr
from ignite_mlp.run.plan import RunPlan, config_to_train, prepare_run_dir, resolve_plan
from ignite_mlp.run.prepare import RunData, build_loaders, prepare_data
from ignite_mlp.run.result import RunResult, collect_result, evaluate_test_once, record_test_metrics
from ignite_mlp.run.resume import EpochMetricsState, RandomState
from ignite_mlp.run.rundir import RunDir, RunLock
from ignite_mlp.run.spec import RunSpec, resolve_spec

# build_loaders and build_optimizer live with their phases; they stay importable from here.
__all__ = ["RunContext", "RunResult", "RunSpec", "build_loaders", "build_optimizer", "train"]


@dataclass
class RunContext:
    """What a user handler gets besides the two engines."""

    # The run as resolved: ``spec.precision`` is "fp32" or "bf16", ``spec.config.lr`` a number.
    spec: RunSpec
    run_dir: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    dataset: Dataset
    tb_logger: TensorboardLogger | None
    # The weights validation and the best checkpoint use: the moving average with --ema-momentum.
    eval_model: nn.Module | None = None

    @property
    def config(self) -> TrainConfig:
        """The config as resolved (the spec's): lr a number, mean and std measured, precision chosen."""
        return self.spec.config


# A user handler: receives (trainer, evaluator, context) and attaches what it likes.
HandlerFn = Callable[[Engine, Engine, RunContext], Any]


def train(
    config: TrainConfig,
    extra_handlers: Sequence[HandlerFn] = (),
    dataset: Dataset | None = None,
    write: Callable[[str], None] = print,
    list_handlers: bool = False,
    evaluate_test: bool = True,
) -> RunResult:
    """Train an MLP as ``config`` says and return what the run produced.

    ``extra_handlers`` are called as ``fn(trainer, evaluator, context)`` after the built-in
    handlers are attached, so theirs run after ours on the same event; ``config.handlers``
    names more of them by spec. ``dataset`` skips loading (for tests and notebooks that hold
    one). With ``config.resume`` the run continues from its newest checkpoint, with its saved
    configuration under the fields the caller set (see
    :func:`ignite_mlp.run.plan.config_to_train`). ``list_handlers`` prints which handler
    runs on which event and returns before training. With ``config.val_split`` the test split is
    evaluated once at the end, unless ``evaluate_test`` is False (a sweep evaluates its best trial only).

    Inside a multi-process run (see :func:`ignite_mlp.distributed.launcher.launch`) this is one rank:
    every rank trains its share and runs every collective; only rank 0 writes and prints.
    """
    # A resume trains with the run's saved configuration under what the caller set, as the CLI's.
    config = config_to_train(config)
    with RunLock() as lock:  # one writer per run (RunDir.lock): a second is refused, naming the first
        if config.resume and Path(config.resume).is_dir() and ranks.is_main() and not list_handlers:
            lock.acquire(Path(config.resume))  # before its checkpoint is read
        plan = resolve_plan(config, extra_handlers, write, list_handlers)
        manual_seed(plan.config.seed)
        # The dataflow: the data (read once per machine), its statistics, this rank's loaders.
        data = prepare_data(plan, dataset)
        # --lr auto: Ignite's learning-rate finder picks the rate (lr_finder.py) on the normalised data.
        normalized = data.normalized(plan.config)
        tuned, lr_curve = resolve_auto_lr(
            normalized, data, plan.device, plan.write, run=not list_handlers, main=plan.main
        )
        # Every "auto" resolved, once: from here on the run reads the spec.
        spec = resolve_spec(plan, data, lr=tuned.lr)
        # The model and its optimizer, the trainer and the evaluator.
        engines = build_engines(spec, data, plan.resume)
        trainer, evaluator = engines.trainer, engines.evaluator
        if spec.main and plan.resume is None and not list_handlers:
            # Created only now, so bad data or options leave no half-made run directory behind.
            prepare_run_dir(plan.run_dir, spec.config.overwrite, lock)
            if data.whitening is not None:
                RunDir(plan.run_dir).write_whitening(data.whitening)
        # The built-in handlers, in the order that is the run's behaviour (see the module docstring).
        files = run_files(plan.run_dir)
        history = History(files["history"] if spec.main else None)
        attach_terminate_on_nan(trainer)
        attach_initial_loss_check(trainer, data.dataset.num_classes, plan.write)
        scheduler = attach_schedule(spec, engines)
        attach_validation(trainer, evaluator, data.val_loader, epoch_length=spec.val_batches)
        history.attach(trainer, evaluator)
        # With the classes and image shape, so predict and export need nothing but the run directory.
        run_info = {**spec.record(), **data_record(data.loaded)}
        tb = _attach_tensorboard(spec, plan, data, engines, history, run_info, lr_per_iteration=scheduler is not None)
        stopper = attach_early_stopping(trainer, evaluator, spec.config.patience, spec.config.early_stop_metric)
        to_save = _resume_state(engines, history, scheduler, stopper)
        best, last = attach_checkpoints(trainer, evaluator, engines.eval_model, to_save, files["checkpoints"])
        attach_new_best_event(trainer, evaluator, best)
        bar = attach_progress_bar(trainer) if spec.progress == "bar" else None
        log = bar.log_message if bar else plan.write  # (lines printed under a bar keep it intact)
        attach_epoch_summary(trainer, history, log, evaluator)
        attach_overfitting_watch(trainer, history, log)
        if spec.main:
            attach_curves(trainer, history, files["curves"])
        interrupted = attach_interrupt_checkpoint(trainer, last, engines.should_stop, files["checkpoints"])
        attached = Attached(files, history, run_info, to_save, best, last, interrupted, scheduler, stopper, tb)
        if lr_curve is not None and spec.main:  # lr_finder.png and TensorBoard's lr_finder/loss
            record_lr_curve(lr_curve, plan.run_dir, tb.writer if tb is not None else None)
        if plan.resume is not None:
            plan.resume.apply(to_save, best, trainer, spec.max_epochs, spec.main, plan.write, engines.ema)
        # The user's handlers, after ours on every event.
        context = RunContext(spec, plan.run_dir, engines.model, engines.optimizer, data.dataset, tb, engines.eval_model)
        for handler in plan.handlers:
            handler(trainer, evaluator, context)
        if list_handlers:
            return _list_handlers(plan, engines, attached)
        fit(spec, plan, data, engines, attached)
        result = collect_result(spec, plan.run_dir, engines, attached)
        if evaluate_test and data.held_out is not None and result.best_checkpoint is not None:  # --val-split
            result.test_acc, result.test_loss = evaluate_test_once(spec, plan, data, engines, result.best_checkpoint)
            if spec.main:
                record_test_metrics(spec, plan, engines, attached, result.test_acc, result.test_loss)
        return result


def _list_handlers(plan: RunPlan, engines: Engines, attached: Attached) -> RunResult:
    """``--list-handlers``: which handler runs on which event; nothing trained, nothing written."""
    plan.write(handler_table({"trainer": engines.trainer, "evaluator": engines.evaluator}))
    if attached.tb is not None:
        attached.tb.close()
    return RunResult(plan.run_dir, attached.history.state_dict(), None, None, None, None, attached.files)


# ----------------------------------------------------------------------------- the built-in handlers' helpers


@dataclass
class Attached:
    """What attaching the built-in handlers made, for the phases after it (fit, the result): the
    run's files, the history, the checkpoints, the schedule, early stopping, TensorBoard."""

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
    """Where a run writes each of its files (named by :class:`RunDir`)."""
    run = RunDir(run_dir)
    return {"config": run.config, "history": run.history, "checkpoints": run.checkpoints, "curves": run.curves}


def attach_schedule(spec: RunSpec, engines: Engines) -> Any:
    """``--lr-schedule`` over the run's iterations: Ignite's param scheduler, or None for a constant rate."""
    config = spec.config
    return attach_lr_schedule(
        engines.trainer,
        engines.optimizer,
        config.lr_schedule,
        config.lr,
        spec.total_iterations,
        spec.epoch_length,
        config.lr_step_epochs,
        config.lr_gamma,
    )


def _resume_state(engines: Engines, history: History, scheduler: Any, stopper: EarlyStopping | None) -> dict[str, Any]:
    """Everything the last checkpoint saves for a resume. "trainer" precedes "train_metrics": the
    latter reads the restored iteration to tell a mid-epoch checkpoint from an epoch-end one."""
    to_save: dict[str, Any] = {
        "model": engines.model,
        "optimizer": engines.optimizer,
        "trainer": engines.trainer,
        "train_metrics": EpochMetricsState(engines.trainer, engines.train_metrics),
        "history": history,
        "random": RandomState(),
    }
    if engines.ema is not None:
        to_save["ema_model"] = engines.ema.ema_model
    to_save.update({k: v for k, v in (("lr_scheduler", scheduler), ("early_stopping", stopper)) if v is not None})
    return to_save


def _attach_tensorboard(
    spec: RunSpec,
    plan: RunPlan,
    data: RunData,
    engines: Engines,
    history: History,
    run_info: dict[str, Any],
    lr_per_iteration: bool,
) -> TensorboardLogger | None:
    """TensorBoard on rank 0; on the other ranks only what rank 0's logging needs them to compute."""
    config, dataset = spec.config, data.dataset
    if config.tensorboard and not spec.main and config.tb_images_every > 0:
        # Rank 0's TensorBoard images read the confusion matrix, an Ignite metric reduced across
        # ranks: every rank must compute it, or rank 0 would wait in that reduction forever.
        attach_confusion_matrix(engines.evaluator, dataset.num_classes, spec.device)
    if not (config.tensorboard and spec.main):
        return None
    view = TensorboardView(
        plan.run_dir,
        classes=dataset.classes,
        # Whitened images cannot be drawn back from the batch: then no misclassified grid.
        normalization=None if spec.whiten else (config.mean, config.std),
        device=spec.device,
        images_every=config.tb_images_every,
        train_samples=(dataset.train_images, dataset.train_labels),
        histograms=config.tb_histograms,
        hparams=run_info,
        text=run_text(run_info, environment(spec.device)),
        processes=spec.world_size,
        lr_per_iteration=lr_per_iteration,
        # On resume, TensorBoard hides whatever the dead run logged after its checkpoint.
        purge_step=plan.resume.purge_step if plan.resume else None,
    )
    return attach_tensorboard(engines.trainer, engines.optimizer, history, view, engines.evaluator, engines.model)
