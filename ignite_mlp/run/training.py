"""``train(config)``: a run, told as its phases in order. Each phase has one job and its own test:

1. :func:`~ignite_mlp.run.plan.resolve_plan`: check the config, pick the device, read the checkpoint
   to resume from (a :class:`~ignite_mlp.run.resume.Resume`); nothing read or written yet;
2. :func:`prepare_data`: load (or read the cache), summarise, measure statistics, build loaders;
3. :func:`build_engines`: model, optimizer, trainer with its metrics, evaluator, the stop agreement;
4. :func:`~ignite_mlp.run.wiring.attach_builtins`: the package's handlers, in the order that matters;
5. :meth:`Resume.apply <ignite_mlp.run.resume.Resume.apply>`: restore the saved state before anything is written;
6. :func:`fit`: write config.json and train, with Ctrl-C routed to a clean stop;
7. :func:`collect_result`: what the run produced, and what the user should read.

The CLI is a thin layer over this function, so a Python user gets exactly the same run:

    >>> from ignite_mlp import TrainConfig, train           # doctest: +SKIP
    >>> result = train(TrainConfig(epochs=5, data="../shared/data/cifar10-jpg.tar.gz"))  # doctest: +SKIP
    >>> result.best_val_acc, result.best_checkpoint          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import json
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine
from ignite.handlers import TensorboardLogger
from ignite.utils import manual_seed
from torch import nn

from ignite_mlp.config.constraints import loss_is_nan
from ignite_mlp.config.train_config import TrainConfig
from ignite_mlp.data import Dataset
from ignite_mlp.data.whitening import save_whitening, whiten_images
from ignite_mlp.distributed import ranks
from ignite_mlp.engine.trainer import create_evaluator
from ignite_mlp.errors import CudaError, TrainingInterrupted
from ignite_mlp.files import write_json_atomic
from ignite_mlp.handlers.extensions import handler_table
from ignite_mlp.handlers.guardrails import overfit_report
from ignite_mlp.handlers.tensorboard.logger import write_test_hparams
from ignite_mlp.run.checkpoints import safe_load, validated_weights
from ignite_mlp.run.engines import Engines, StopRequest, build_engines, build_optimizer
from ignite_mlp.run.lr_finder import record_lr_curve, resolve_auto_lr
from ignite_mlp.run.plan import RunPlan, prepare_run_dir, resolve_plan
from ignite_mlp.run.prepare import RunData, build_loaders, prepare_data, validation_loader
from ignite_mlp.run.wiring import Hooks, attach_builtins

# build_loaders and build_optimizer live with their phases; they stay importable from here.
__all__ = ["RunContext", "RunResult", "build_loaders", "build_optimizer", "train"]


@dataclass
class RunContext:
    """What a user handler gets besides the two engines."""

    config: TrainConfig
    run_dir: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    dataset: Dataset
    tb_logger: TensorboardLogger | None
    # The weights validation and the best checkpoint use: the moving average with --ema-momentum.
    eval_model: nn.Module | None = None


# A user handler: receives (trainer, evaluator, context) and attaches what it likes.
HandlerFn = Callable[[Engine, Engine, RunContext], Any]


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
    # --val-split: the test split, evaluated once at the end with the best weights (percent, mean loss).
    test_acc: float | None = None
    test_loss: float | None = None

    def report(self) -> str:
        """The closing lines printed after training."""
        if self.best_epoch is None:
            return f"no epoch finished; run directory {self.run_dir}"
        lead = "".join(f"{line}\n" for line in [self.stopped, *self.notes] if line)
        test = "" if self.test_acc is None else f"test accuracy {self.test_acc:.2f}% (loss {self.test_loss:.4f})\n"
        return lead + (
            f"best validation accuracy {self.best_val_acc:.2f}% at epoch {self.best_epoch}\n{test}"
            f"best checkpoint: {self.best_checkpoint}\n"
            f"run directory:   {self.run_dir} (tensorboard --logdir {self.run_dir.parent})"
        )


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
    one). With ``config.resume`` the run continues from its newest checkpoint (see
    :meth:`TrainConfig.from_run`). ``list_handlers`` prints which handler runs on which event
    and returns before training. With ``config.val_split`` the test split is evaluated once at
    the end, unless ``evaluate_test`` is False (a sweep evaluates its best trial only).

    Inside a multi-process run (see :func:`ignite_mlp.distributed.launcher.launch`) this is one rank:
    every rank trains its share and runs every collective; only rank 0 writes and prints.
    """
    plan = resolve_plan(config, extra_handlers, write, list_handlers)
    manual_seed(plan.config.seed)
    data = prepare_data(plan, dataset)
    plan.config = data.config  # with the training set's statistics, when they were measured
    # --lr auto: Ignite's learning-rate finder picks the rate (lr_finder.py); config.json keeps it.
    plan.config, lr_curve = resolve_auto_lr(plan.config, data.dataset, plan.device, plan.write, run=not list_handlers)
    engines = build_engines(plan, data)
    if plan.main and plan.resume is None and not list_handlers:
        # Created only now, so bad data or options leave no half-made run directory behind.
        prepare_run_dir(plan.run_dir, plan.config.overwrite)
        if data.whitening is not None:
            save_whitening(data.whitening, plan.run_dir)
    hooks = attach_builtins(plan, data, engines)
    if lr_curve is not None and plan.main:  # lr_finder.png and TensorBoard's lr_finder/loss
        record_lr_curve(lr_curve, plan.run_dir, hooks.tb.writer if hooks.tb is not None else None)
    if plan.resume is not None:
        plan.resume.apply(
            hooks.to_save, hooks.best, engines.trainer, plan.max_epochs, plan.main, plan.write, engines.ema
        )
    context = RunContext(
        plan.config, plan.run_dir, engines.model, engines.optimizer, data.dataset, hooks.tb, engines.eval_model
    )
    for handler in plan.handlers:
        handler(engines.trainer, engines.evaluator, context)
    if list_handlers:
        plan.write(handler_table({"trainer": engines.trainer, "evaluator": engines.evaluator}))
        if hooks.tb is not None:
            hooks.tb.close()
        return RunResult(plan.run_dir, hooks.history.state_dict(), None, None, None, None, hooks.files)
    fit(plan, data, engines, hooks)
    result = collect_result(plan, engines, hooks)
    if evaluate_test and data.held_out is not None and result.best_checkpoint is not None:  # --val-split: now only
        result.test_acc, result.test_loss = evaluate_test_once(plan, data, engines, result.best_checkpoint)
        if plan.main:
            record_test_metrics(plan, engines, hooks, result.test_acc, result.test_loss)
    return result


# ----------------------------------------------------------------------------- 6. fit


def fit(plan: RunPlan, data: RunData, engines: Engines, hooks: Hooks) -> None:
    """Record the run's config, then train; a Ctrl-C ends in :class:`TrainingInterrupted` once
    its checkpoint is written."""
    if plan.main:
        write_json_atomic(hooks.files["config"], hooks.run_info)
        if plan.resume is not None:
            plan.resume.record()
    with sigint_routed_to(engines.stop), cuda_errors_explained(), _closing(hooks.tb):
        engines.trainer.run(data.train_loader, max_epochs=plan.max_epochs, epoch_length=data.epoch_length)
    if engines.should_stop() and hooks.interrupted.last_checkpoint:  # (Ctrl-C after the last step: complete)
        raise TrainingInterrupted(str(plan.run_dir), str(hooks.interrupted.last_checkpoint))


@contextlib.contextmanager
def sigint_routed_to(stop: StopRequest) -> Iterator[None]:
    """Route Ctrl-C to ``stop`` inside the block; signals can only be caught on the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def cuda_errors_explained() -> Iterator[None]:
    """A CUDA error becomes a :class:`CudaError` that says how to find where it really happened."""
    try:
        yield
    except RuntimeError as e:
        if "CUDA" in str(e) or "cuda" in str(e):
            raise CudaError(
                f"{e}\nCUDA reports errors late and often at the wrong line: rerun with --device cpu "
                "(or with CUDA_LAUNCH_BLOCKING=1) for an accurate error"
            ) from e
        raise


@contextlib.contextmanager
def _closing(tb: TensorboardLogger | None) -> Iterator[None]:
    try:
        yield
    finally:
        if tb is not None:
            tb.close()


# ----------------------------------------------------------------------------- 7. result


def collect_result(plan: RunPlan, engines: Engines, hooks: Hooks) -> RunResult:
    """The run's history and files, why it stopped early if it did, and the notes to print."""
    config, trainer, history = plan.config, engines.trainer, hooks.history
    stopped = nan_message(trainer, config)
    notes = []
    if hooks.stopper is not None and trainer.state.epoch < plan.max_epochs and stopped is None:
        notes.append(
            f"early stopping: {config.early_stop_metric} did not improve for {config.patience} epochs; "
            f"stopped after epoch {trainer.state.epoch}"
        )
    if config.overfit_batches and history.values["train_acc_epoch"]:
        notes.append(overfit_report(history.values["train_acc_epoch"][-1], config.overfit_batches))
    return RunResult(
        run_dir=plan.run_dir,
        history=history.state_dict(),
        best_val_acc=history.best_val_acc(),
        best_epoch=history.best_epoch(),
        best_checkpoint=_checkpoint_path(hooks.best),
        last_checkpoint=_checkpoint_path(hooks.last),
        files=hooks.files,
        stopped=stopped,
        notes=notes,
    )


def evaluate_test_once(plan: RunPlan, data: RunData, engines: Engines, best_checkpoint: Path) -> tuple[float, float]:
    """Accuracy (percent) and mean loss of the best checkpoint's weights on the test split that
    --val-split kept aside, served as validation was (whitened, normalised, TTA): the one time
    the run reads it. Every rank evaluates its share; Ignite's metrics sum the shares."""
    assert data.held_out is not None
    config = plan.config
    model = copy.deepcopy(engines.eval_model if engines.eval_model is not None else engines.model)
    model.load_state_dict(validated_weights(safe_load(best_checkpoint)))
    images = data.held_out.test_images
    if data.whitening is not None:
        images = whiten_images(images, data.whitening)
    loader = validation_loader(images, data.held_out.test_labels, config, plan.device, ranks.rank(), ranks.world_size())
    evaluator = create_evaluator(model, nn.CrossEntropyLoss(), plan.device, data.precision.name, config.tta)
    metrics = evaluator.run(loader, epoch_length=2 if config.dry_run else None).metrics
    test_acc, test_loss = 100.0 * float(metrics["accuracy"]), float(metrics["loss"])
    plan.write(f"test split, evaluated once with the best weights: accuracy {test_acc:.2f}%, loss {test_loss:.4f}")
    return test_acc, test_loss


def record_test_metrics(plan: RunPlan, engines: Engines, hooks: Hooks, test_acc: float, test_loss: float) -> None:
    """``test_acc`` and ``test_loss`` in history.json and in the run's TensorBoard HParams entry."""
    history = {**hooks.history.state_dict(), "test_acc": test_acc, "test_loss": test_loss}
    write_json_atomic(hooks.files["history"], history)
    if plan.config.tensorboard:
        write_test_hparams(plan.run_dir, hooks.run_info, hooks.history, engines.trainer, test_acc, test_loss)


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


def read_history(run_dir: str | Path) -> dict[str, list[float]]:
    """The ``history.json`` of a run directory."""
    return json.loads((Path(run_dir) / "history.json").read_text())
