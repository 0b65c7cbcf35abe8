"""``train(config)``: the one place that wires data, model, engines and handlers into a run.

The CLI is a thin layer over this function, so a Python user gets exactly the same run:

    >>> from ignite_mlp import TrainConfig, train           # doctest: +SKIP
    >>> result = train(TrainConfig(epochs=5, data="../shared/data/cifar10-jpg.tar.gz"))  # doctest: +SKIP
    >>> result.best_val_acc, result.best_checkpoint          # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import TensorboardLogger
from ignite.utils import manual_seed
from torch import nn

from ignite_mlp import distributed as dist
from ignite_mlp.augment import make_augment, make_mix
from ignite_mlp.checkpoints import (
    EpochMetricsState,
    RandomState,
    check_model_shapes,
    latest_checkpoint,
    remove_orphans,
    restore,
    safe_load,
)
from ignite_mlp.config import TrainConfig, resolve_device
from ignite_mlp.controls import (
    attach_early_stopping,
    attach_ema,
    attach_lr_schedule,
    attach_new_best_event,
    make_optimizer,
    restore_ema,
)
from ignite_mlp.data import Dataset, TensorLoader, channel_stats, load_dataset, summarize
from ignite_mlp.engine import attach_train_metrics, create_evaluator, create_trainer
from ignite_mlp.errors import CudaError, TrainingInterrupted, UserError
from ignite_mlp.extensions import handler_table, load_handler
from ignite_mlp.files import write_json_atomic
from ignite_mlp.guardrails import (
    attach_initial_loss_check,
    attach_overfitting_watch,
    overfit_report,
    setup_warnings,
)
from ignite_mlp.handlers import (
    History,
    attach_checkpoints,
    attach_curves,
    attach_epoch_summary,
    attach_interrupt_checkpoint,
    attach_progress_bar,
    attach_terminate_on_nan,
    attach_validation,
)
from ignite_mlp.model import MLP
from ignite_mlp.tensorboard import attach_confusion_matrix, attach_tensorboard, environment, run_text
from ignite_mlp.whitening import prepare_whitening, save_whitening, whiten_dataset


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

    def report(self) -> str:
        """The closing lines printed after training."""
        if self.best_epoch is None:
            return f"no epoch finished; run directory {self.run_dir}"
        lead = "".join(f"{line}\n" for line in [self.stopped, *self.notes] if line)
        return lead + (
            f"best validation accuracy {self.best_val_acc:.2f}% at epoch {self.best_epoch}\n"
            f"best checkpoint: {self.best_checkpoint}\n"
            f"run directory:   {self.run_dir} (tensorboard --logdir {self.run_dir.parent})"
        )


def default_run_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def refuse_existing_run(path: Path, overwrite: bool) -> None:
    """A run directory that already holds a run is only reused when asked to."""
    if (path / "config.json").exists() and not overwrite:
        raise UserError(
            f"--run-dir {path} already holds a run; choose another --run-dir, pass --overwrite, "
            f"or continue it with --resume {path}"
        )


def prepare_run_dir(path: Path, overwrite: bool) -> Path:
    """Create the run directory (refusing one that holds a run unless told to overwrite)."""
    refuse_existing_run(path, overwrite)
    try:
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--run-dir {path}: cannot write there ({e.strerror}); choose a writable folder") from None
    if overwrite:  # the old run's files would otherwise mix with the new run's
        for pattern in ("checkpoints/*.pt", "events.out.tfevents.*", "history.json", "curves.png"):
            for old in path.glob(pattern):
                old.unlink()
    return path


def build_loaders(
    dataset: Dataset, config: TrainConfig, device: torch.device, rank: int = 0, world_size: int = 1
) -> tuple[TensorLoader, TensorLoader]:
    """Shuffled training batches and ordered validation batches, both from device memory.

    With ``overfit_batches=N`` the training set is N batches of random images, in a fixed order. With
    several processes each loader serves this ``rank``'s share (see :class:`TensorLoader`): an
    equal part of every training batch, and every ``world_size``-th validation image, so each
    image is validated exactly once; the validation batch is rounded up to split evenly.
    """
    images, labels = dataset.train_images, dataset.train_labels
    if config.overfit_batches:
        # A seeded random subset: the data are stored sorted by class, so the first N batches
        # would hold one class, which a constant prediction "memorises".
        pick = torch.randperm(len(labels), generator=torch.Generator().manual_seed(config.seed))
        pick = pick[: config.overfit_batches * config.batch_size]
        images, labels = images[pick], labels[pick]
    train_loader = TensorLoader(
        images,
        labels,
        config.batch_size,
        config.mean,
        config.std,
        shuffle=not config.overfit_batches,
        seed=config.seed,
        device=device,
        buffers=3,  # Ignite consumes each batch before drawing the next: recycling is safe
        augment=None if config.overfit_batches else make_augment(config.augment, config.crop_padding),
        mix=None if config.overfit_batches else make_mix(config.mixup, config.cutmix, len(dataset.classes)),
        rank=rank,
        world_size=world_size,
    )
    val_loader = TensorLoader(
        dataset.test_images,
        dataset.test_labels,
        -(-config.eval_batch_size // world_size) * world_size,
        config.mean,
        config.std,
        shuffle=False,
        device=device,
        # Normalise validation data once, unless the float copy would be large (> 1 GiB).
        keep_normalized=dataset.test_images.numel() * 4 <= 2**30,
        rank=rank,
        world_size=world_size,
        even_shards=False,  # validation runs no collective per batch: shards may differ by one image
    )
    return train_loader, val_loader


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD or AdamW as the config says (see :func:`ignite_mlp.controls.make_optimizer`)."""
    return make_optimizer(
        model, config.optimizer, config.lr, config.momentum, config.weight_decay, config.nesterov, config.decay_norms
    )


class _StopRequest:
    """SIGINT handler: the first Ctrl-C asks the trainer to stop after the current iteration
    (so the checkpoint is taken between steps, never mid-update); a second one stops at once."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


def _silent(line: str) -> None:
    """What ranks other than 0 print: nothing (rank 0 speaks for the run)."""


def train(
    config: TrainConfig,
    extra_handlers: Sequence[HandlerFn] = (),
    dataset: Dataset | None = None,
    write: Callable[[str], None] = print,
    list_handlers: bool = False,
) -> RunResult:
    """Train an MLP as ``config`` says and return what the run produced.

    ``extra_handlers`` are called as ``fn(trainer, evaluator, context)`` after the built-in
    handlers are attached, so theirs run after ours on the same event; ``config.handlers``
    names more of them by spec. ``dataset`` skips loading (for tests and notebooks that hold
    one). With ``config.resume`` the run continues from its newest checkpoint (see
    :meth:`TrainConfig.from_run`). ``list_handlers`` prints which handler runs on which event
    and returns before training.

    Inside a multi-process run (see :func:`ignite_mlp.distributed.launch`) this is one rank:
    every rank trains its share and runs every collective; only rank 0 writes and prints.
    """
    config.validate()
    if config.overfit_batches:
        # The sanity check trains on fixed batches with nothing that fights memorisation.
        config = dataclasses.replace(config, dropout=0.0, weight_decay=0.0)
    distributed, main = dist.world_size() > 1, dist.is_main()
    if config.nproc_per_node > 1 and not distributed and not list_handlers:
        raise UserError(
            f"--nproc-per-node {config.nproc_per_node}: train() is one process; start the processes with "
            "ignite_mlp.distributed.launch(config) or the ignite-mlp command"
        )
    if distributed and config.batch_size % dist.world_size():
        raise UserError(
            f"--batch-size {config.batch_size} does not split evenly over {dist.world_size()} processes; "
            f"pass a multiple of {dist.world_size()}"
        )
    if not main:
        write = _silent
    device = dist.rank_device(config.device) if distributed else resolve_device(config.device)
    handlers = [*extra_handlers, *(load_handler(spec) for spec in config.handlers)]  # fail fast on bad specs
    # Read the checkpoint before the (slower) data loading, so a bad one fails fast.
    if config.resume:
        run_dir = Path(config.resume)
        checkpoint_path: Path | None = latest_checkpoint(run_dir)
        saved: dict[str, Any] | None = safe_load(checkpoint_path)  # type: ignore[arg-type]
        resume_iteration = int(saved.get("trainer", {}).get("iteration", 0))
    else:
        run_dir = Path(config.run_dir) if config.run_dir else default_run_dir()
        if not list_handlers:
            refuse_existing_run(run_dir, config.overwrite)  # early: before seconds of data loading
        checkpoint_path, saved, resume_iteration = None, None, 0
    manual_seed(config.seed)

    if dataset is None:
        with dist.main_first():  # one download and decode per machine; the others read the cache
            dataset = load_dataset(config.data, config.cache_dir, config.download, progress=config.progress and main)
    write(summarize(dataset, config.batch_size))
    if distributed:
        size = dist.world_size()
        write(
            f"{size} processes ({dist.backend()}): each trains on {config.batch_size // size} images of every "
            f"batch of {config.batch_size} and validates on a 1/{size} share of the test images"
        )
    if config.normalize == "dataset" and saved is None:
        # Measured once; config.json keeps the values, so a resume or evaluate reuses them.
        mean, std = channel_stats(dataset.train_images)
        config = dataclasses.replace(config, mean=mean, std=std)
        write(f"normalisation from the training set: mean {mean}, std {std}")
    # --whiten: measured once (a resumed run reads its whitening.pt); the loaders serve whitened copies.
    whitening = prepare_whitening(
        config.whiten, config.whiten_regularizer, dataset.train_images, run_dir if saved is not None else None, write
    )
    loader_data = whiten_dataset(dataset, whitening)
    train_loader, val_loader = build_loaders(loader_data, config, device, dist.rank(), dist.world_size())
    epoch_length = 2 if config.dry_run else (config.epoch_length or len(train_loader))
    max_epochs = 1 if config.dry_run else config.epochs
    # The overfit check trains on fixed batches on purpose: no shuffle warning then.
    for warning in setup_warnings(
        config.batch_size,
        config.hidden_sizes,
        device,
        train_loader,
        val_loader,
        fixed_order=bool(config.overfit_batches),
    ):
        write(warning)

    model = MLP(
        dataset.in_features,
        dataset.num_classes,
        config.hidden_sizes,
        config.dropout,
        config.norm,
        config.activation,
        config.blocks,
        config.expansion,
    ).to(device)
    if saved is not None:
        check_model_shapes(model, saved.get("model", {}), checkpoint_path)  # type: ignore[arg-type]
    # Across ranks the trainer steps a DistributedDataParallel wrapper (gradients averaged over
    # the ranks); checkpoints, validation and user handlers keep the model itself.
    stepped, optimizer = dist.wrap(model, build_optimizer(model, config), device)
    if distributed:
        # Same weights everywhere (the wrapper copied rank 0's), but each rank its own dropout.
        manual_seed(config.seed + dist.rank())
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    if saved is None and not list_handlers and main:
        # Created only now, so bad data or options leave no half-made run directory behind.
        prepare_run_dir(run_dir, config.overwrite)
        if whitening is not None:
            save_whitening(whitening, run_dir)
    trainer = create_trainer(stepped, optimizer, loss_fn, device, config.precision)
    # --ema-momentum: validation, the best checkpoint and evaluate use the averaged weights.
    ema = attach_ema(trainer, model, config.ema_momentum)
    eval_model = ema.ema_model if ema is not None else model
    train_metrics = attach_train_metrics(trainer, device)
    stop = _StopRequest()
    should_stop = dist.attach_agreement(trainer, lambda: stop.requested) if distributed else lambda: stop.requested
    # Validation loss stays the plain cross-entropy, comparable across recipes and runs. It runs
    # the model itself, not its wrapper: no collective per batch, so validation shards may differ.
    evaluator = create_evaluator(eval_model, nn.CrossEntropyLoss(), device, config.precision, config.tta)

    def start_epoch(engine: Engine) -> None:
        # A fresh shuffle per epoch; on a resume mid-epoch, the epoch goes on where it stopped.
        done_in_epoch = engine.state.iteration - (engine.state.epoch - 1) * epoch_length
        train_loader.set_epoch(engine.state.epoch, start=done_in_epoch % len(train_loader))
        if epoch_length != len(train_loader) and done_in_epoch == 0:
            # A custom epoch length: start each epoch from its own shuffle. (Not on a resumed
            # epoch: Ignite then sets up the data itself and counts the iterations already done.)
            engine.set_data(train_loader)

    trainer.add_event_handler(Events.EPOCH_STARTED, start_epoch)

    files = {
        "config": run_dir / "config.json",
        "history": run_dir / "history.json",
        "checkpoints": run_dir / "checkpoints",
        "curves": run_dir / "curves.png",
    }
    history = History(files["history"] if main else None)
    attach_terminate_on_nan(trainer)
    attach_initial_loss_check(trainer, dataset.num_classes, write)
    scheduler = attach_lr_schedule(
        trainer,
        optimizer,
        config.lr_schedule,
        config.lr,
        max_epochs * epoch_length,
        epoch_length,
        config.lr_step_epochs,
        config.lr_gamma,
    )
    attach_validation(trainer, evaluator, val_loader, epoch_length=2 if config.dry_run else None)
    history.attach(trainer, evaluator)
    run_info = {**config.to_dict(), "resolved_device": str(device)}
    if distributed:
        run_info["world_size"] = dist.world_size()
    tb = None
    if config.tensorboard and not main and config.tb_images_every > 0:
        # Rank 0's TensorBoard images read the confusion matrix, an Ignite metric reduced across
        # ranks: every rank must compute it, or rank 0 would wait in that reduction forever.
        attach_confusion_matrix(evaluator, dataset.num_classes, device)
    if config.tensorboard and main:
        # On resume, TensorBoard hides whatever the dead run logged after its checkpoint.
        purge_step = resume_iteration + 1 if saved is not None else None
        tb = attach_tensorboard(
            trainer,
            optimizer,
            history,
            run_dir,
            lr_per_iteration=scheduler is not None,
            purge_step=purge_step,
            evaluator=evaluator,
            classes=dataset.classes,
            normalization=None if whitening is not None else (config.mean, config.std),
            device=device,
            images_every=config.tb_images_every,
            train_samples=(dataset.train_images, dataset.train_labels),
            model=model,
            histograms=config.tb_histograms,
            hparams=run_info,
            text=run_text(run_info, environment(device)),
            processes=dist.world_size(),
        )
    # Everything a resume needs. "trainer" precedes "train_metrics": the latter reads the
    # restored iteration to tell a mid-epoch checkpoint from an epoch-end one.
    to_save: dict[str, Any] = {
        "model": model,
        "optimizer": optimizer,
        "trainer": trainer,
        "train_metrics": EpochMetricsState(trainer, train_metrics),
        "history": history,
        "random": RandomState(),
    }
    if ema is not None:
        to_save["ema_model"] = ema.ema_model
    stopper = attach_early_stopping(trainer, evaluator, config.patience, config.early_stop_metric)
    to_save.update({k: v for k, v in (("lr_scheduler", scheduler), ("early_stopping", stopper)) if v is not None})
    best, last = attach_checkpoints(trainer, evaluator, eval_model, to_save, files["checkpoints"])
    attach_new_best_event(trainer, evaluator, best)
    bar = attach_progress_bar(trainer) if config.progress and main else None
    log = bar.log_message if bar else write
    attach_epoch_summary(trainer, history, log)
    attach_overfitting_watch(trainer, history, log)
    if main:
        attach_curves(trainer, history, files["curves"])
    interrupted = attach_interrupt_checkpoint(trainer, last, should_stop, files["checkpoints"])

    if saved is not None:
        controls = {"lr_scheduler": scheduler, "early_stopping": stopper, "ema_model": eval_model}
        core = {k: v for k, v in to_save.items() if k not in controls}
        restore({**core, "best_checkpoint": best}, saved, checkpoint_path)  # type: ignore[arg-type]
        restore_ema(ema, saved)  # after the model: a checkpoint without an average starts it from the model
        if main:
            remove_orphans(best, files["checkpoints"])
        note = restore_controls(scheduler, stopper, saved, max_epochs, trainer.state.iteration)
        if note:
            write(note)
        if trainer.state.epoch >= max_epochs and trainer.state.iteration % epoch_length == 0:
            raise UserError(
                f"--resume {run_dir}: the run already finished {trainer.state.epoch} epochs; "
                f"pass --epochs N with N > {trainer.state.epoch} to train further"
            )
        write(f"resuming {run_dir} from {checkpoint_path.name} (epoch {trainer.state.epoch} done)")  # type: ignore[union-attr]

    context = RunContext(config, run_dir, model, optimizer, dataset, tb, eval_model)
    for handler in handlers:
        handler(trainer, evaluator, context)
    if list_handlers:
        write(handler_table({"trainer": trainer, "evaluator": evaluator}))
        if tb is not None:
            tb.close()
        return RunResult(run_dir, history.state_dict(), None, None, None, None, files)

    if main:
        write_json_atomic(files["config"], run_info)
    previous_sigint = _install_sigint(stop)
    try:
        trainer.run(train_loader, max_epochs=max_epochs, epoch_length=epoch_length)
    except RuntimeError as e:
        if "CUDA" in str(e) or "cuda" in str(e):
            raise CudaError(
                f"{e}\nCUDA reports errors late and often at the wrong line: rerun with --device cpu "
                "(or with CUDA_LAUNCH_BLOCKING=1) for an accurate error"
            ) from e
        raise
    finally:
        if previous_sigint is not None:
            signal.signal(signal.SIGINT, previous_sigint)
        if tb is not None:
            tb.close()
    if should_stop() and interrupted.last_checkpoint:  # (Ctrl-C after the last step: the run is complete)
        raise TrainingInterrupted(str(run_dir), str(interrupted.last_checkpoint))

    notes = [_nan_message(trainer, config)]
    if stopper is not None and trainer.state.epoch < max_epochs and notes[0] is None:
        notes.append(
            f"early stopping: {config.early_stop_metric} did not improve for {config.patience} epochs; "
            f"stopped after epoch {trainer.state.epoch}"
        )
    if config.overfit_batches and history.values["train_acc_epoch"]:
        notes.append(overfit_report(history.values["train_acc_epoch"][-1], config.overfit_batches))
    return RunResult(
        run_dir=run_dir,
        history=history.state_dict(),
        best_val_acc=history.best_val_acc(),
        best_epoch=history.best_epoch(),
        best_checkpoint=_checkpoint_path(best),
        last_checkpoint=_checkpoint_path(last),
        files=files,
        stopped=notes[0],
        notes=[n for n in notes[1:] if n],
    )


def restore_controls(
    scheduler: Any, stopper: Any, saved: dict[str, Any], max_epochs: int, iteration: int
) -> str | None:
    """Restore the LR schedule and early stopping of a resumed run, when they still apply.

    A schedule's shape depends on the run's length: when ``--epochs`` changed (or the schedule
    is new), the new schedule continues from the restored iteration instead of replaying the
    old one. A schedule or early stopping missing from the checkpoint starts afresh.
    """
    if stopper is not None and "early_stopping" in saved:
        stopper.load_state_dict(saved["early_stopping"])
    if scheduler is None:
        return None
    same_run = "lr_scheduler" in saved and saved.get("trainer", {}).get("max_epochs") == max_epochs
    if same_run:
        scheduler.load_state_dict(saved["lr_scheduler"])
        return None
    scheduler.event_index = iteration
    if hasattr(scheduler, "lr_scheduler"):  # Ignite's wrapper of a torch scheduler counts steps itself
        scheduler.lr_scheduler.last_epoch = iteration
    return f"learning-rate schedule laid out for {max_epochs} epochs, continuing at iteration {iteration}"


def _install_sigint(stop: _StopRequest) -> Any:
    """Route Ctrl-C to ``stop``; signals can only be caught on the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, stop)


def _nan_message(trainer: Engine, config: TrainConfig) -> str | None:
    """Why TerminateOnNan stopped the run, and what to try, or None if it did not."""
    output = trainer.state.output
    if not output or bool(torch.isfinite(output["loss"]).all()):
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
