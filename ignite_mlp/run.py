"""``train(config)``: the one place that wires data, model, engines and handlers into a run.

The CLI is a thin layer over this function, so a Python user gets exactly the same run:

    >>> from ignite_mlp import TrainConfig, train           # doctest: +SKIP
    >>> result = train(TrainConfig(epochs=5, data="../shared/data/cifar10-jpg.tar.gz"))  # doctest: +SKIP
    >>> result.best_val_acc, result.best_checkpoint          # doctest: +SKIP
"""

from __future__ import annotations

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
from ignite_mlp.data import Dataset, TensorLoader, load_dataset, summarize
from ignite_mlp.engine import attach_train_metrics, create_evaluator, create_trainer
from ignite_mlp.errors import CudaError, TrainingInterrupted, UserError
from ignite_mlp.files import write_json_atomic
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
from ignite_mlp.tensorboard import attach_tensorboard, environment, run_text


@dataclass
class RunContext:
    """What a user handler gets besides the two engines."""

    config: TrainConfig
    run_dir: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    dataset: Dataset
    tb_logger: TensorboardLogger | None


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
    # Set when the run stopped early on its own (NaN loss): why, and what to try.
    stopped: str | None = None

    def report(self) -> str:
        """The closing lines printed after training."""
        if self.best_epoch is None:
            return f"no epoch finished; run directory {self.run_dir}"
        return (f"{self.stopped}\n" if self.stopped else "") + (
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


def build_loaders(dataset: Dataset, config: TrainConfig, device: torch.device) -> tuple[TensorLoader, TensorLoader]:
    """Shuffled training batches and ordered validation batches, both from device memory."""
    train_loader = TensorLoader(
        dataset.train_images,
        dataset.train_labels,
        config.batch_size,
        config.mean,
        config.std,
        shuffle=True,
        seed=config.seed,
        device=device,
        buffers=3,  # Ignite consumes each batch before drawing the next: recycling is safe
    )
    val_loader = TensorLoader(
        dataset.test_images,
        dataset.test_labels,
        config.eval_batch_size,
        config.mean,
        config.std,
        shuffle=False,
        device=device,
        # Normalise validation data once, unless the float copy would be large (> 1 GiB).
        keep_normalized=dataset.test_images.numel() * 4 <= 2**30,
    )
    return train_loader, val_loader


class _StopRequest:
    """SIGINT handler: the first Ctrl-C asks the trainer to stop after the current iteration
    (so the checkpoint is taken between steps, never mid-update); a second one stops at once."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


def train(
    config: TrainConfig,
    extra_handlers: Sequence[HandlerFn] = (),
    dataset: Dataset | None = None,
    write: Callable[[str], None] = print,
) -> RunResult:
    """Train an MLP as ``config`` says and return what the run produced.

    ``extra_handlers`` are called as ``fn(trainer, evaluator, context)`` after the built-in
    handlers are attached, so theirs run after ours on the same event. ``dataset`` skips
    loading (useful for tests and notebooks that already hold one). With ``config.resume``
    the run continues from its newest checkpoint (see :meth:`TrainConfig.from_run`).
    """
    config.validate()
    device = resolve_device(config.device)
    # Read the checkpoint before the (slower) data loading, so a bad one fails fast.
    if config.resume:
        run_dir = Path(config.resume)
        checkpoint_path = latest_checkpoint(run_dir)
        saved: dict[str, Any] | None = safe_load(checkpoint_path)
        resume_iteration = int(saved.get("trainer", {}).get("iteration", 0))
    else:
        run_dir = Path(config.run_dir) if config.run_dir else default_run_dir()
        refuse_existing_run(run_dir, config.overwrite)  # early: before seconds of data loading
        checkpoint_path, saved, resume_iteration = None, None, 0
    manual_seed(config.seed)

    if dataset is None:
        dataset = load_dataset(config.data, config.cache_dir, config.download, progress=config.progress)
    write(summarize(dataset, config.batch_size))
    train_loader, val_loader = build_loaders(dataset, config, device)

    model = MLP(dataset.in_features, dataset.num_classes, config.hidden_sizes).to(device)
    if saved is not None:
        check_model_shapes(model, saved.get("model", {}), checkpoint_path)  # type: ignore[arg-type]
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    loss_fn = nn.CrossEntropyLoss()
    if saved is None:
        # Created only now, so bad data or options leave no half-made run directory behind.
        prepare_run_dir(run_dir, config.overwrite)
    trainer = create_trainer(model, optimizer, loss_fn, device, config.precision)
    train_metrics = attach_train_metrics(trainer, device)
    evaluator = create_evaluator(model, loss_fn, device, config.precision)

    def start_epoch(engine: Engine) -> None:
        # On a resume mid-epoch, the first epoch continues at the batch where it stopped.
        done_in_epoch = engine.state.iteration - (engine.state.epoch - 1) * len(train_loader)
        train_loader.set_epoch(engine.state.epoch, start=done_in_epoch)

    trainer.add_event_handler(Events.EPOCH_STARTED, start_epoch)

    files = {
        "config": run_dir / "config.json",
        "history": run_dir / "history.json",
        "checkpoints": run_dir / "checkpoints",
        "curves": run_dir / "curves.png",
    }
    history = History(files["history"])
    attach_terminate_on_nan(trainer)
    attach_validation(trainer, evaluator, val_loader)
    history.attach(trainer, evaluator)
    run_info = {**config.to_dict(), "resolved_device": str(device)}
    tb = None
    if config.tensorboard:
        # On resume, TensorBoard hides whatever the dead run logged after its checkpoint.
        purge_step = resume_iteration + 1 if saved is not None else None
        tb = attach_tensorboard(
            trainer,
            optimizer,
            history,
            run_dir,
            purge_step=purge_step,
            evaluator=evaluator,
            classes=dataset.classes,
            normalization=(config.mean, config.std),
            device=device,
            images_every=config.tb_images_every,
            train_samples=(dataset.train_images, dataset.train_labels),
            model=model,
            histograms=config.tb_histograms,
            hparams=run_info,
            text=run_text(run_info, environment(device)),
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
    best, last = attach_checkpoints(trainer, evaluator, model, to_save, files["checkpoints"])
    bar = attach_progress_bar(trainer) if config.progress else None
    attach_epoch_summary(trainer, history, bar.log_message if bar else write)
    attach_curves(trainer, history, files["curves"])
    stop = _StopRequest()
    interrupted = attach_interrupt_checkpoint(trainer, last, lambda: stop.requested, files["checkpoints"])

    if saved is not None:
        restore({**to_save, "best_checkpoint": best}, saved, checkpoint_path)  # type: ignore[arg-type]
        remove_orphans(best, files["checkpoints"])
        if trainer.state.epoch >= config.epochs and trainer.state.iteration % len(train_loader) == 0:
            raise UserError(
                f"--resume {run_dir}: the run already finished {trainer.state.epoch} epochs; "
                f"pass --epochs N with N > {trainer.state.epoch} to train further"
            )
        write(f"resuming {run_dir} from {checkpoint_path.name} (epoch {trainer.state.epoch} done)")  # type: ignore[union-attr]

    context = RunContext(config, run_dir, model, optimizer, dataset, tb)
    for handler in extra_handlers:
        handler(trainer, evaluator, context)

    write_json_atomic(files["config"], run_info)
    previous_sigint = _install_sigint(stop)
    try:
        trainer.run(train_loader, max_epochs=config.epochs)
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
    if stop.requested:
        raise TrainingInterrupted(str(run_dir), str(files["checkpoints"] / interrupted.last_checkpoint))

    return RunResult(
        run_dir=run_dir,
        history=history.state_dict(),
        best_val_acc=history.best_val_acc(),
        best_epoch=history.best_epoch(),
        best_checkpoint=_checkpoint_path(best, files["checkpoints"]),
        last_checkpoint=_checkpoint_path(last, files["checkpoints"]),
        files=files,
        stopped=_nan_message(trainer, config),
    )


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


def _checkpoint_path(checkpoint: Any, dirname: Path) -> Path | None:
    return dirname / checkpoint.last_checkpoint if checkpoint.last_checkpoint else None


def read_history(run_dir: str | Path) -> dict[str, list[float]]:
    """The ``history.json`` of a run directory."""
    return json.loads((Path(run_dir) / "history.json").read_text())
