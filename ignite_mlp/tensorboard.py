"""TensorBoard logging: everything a run shows in TensorBoard, written in its run directory.

Through Ignite's ``TensorboardLogger`` (a tensorboardX writer). What lands where:

* Scalars: ``train/loss`` every iteration; ``train/lr/group_0``; per epoch ``epoch/<key>`` for
  the four values of the logging dictionary (``history.json``), ``time/epoch_seconds`` and
  ``time/samples_per_second`` (training only) and ``time/validation_seconds``.
* Images: ``train/samples`` (a grid of training images, once, when a run starts) and, every
  ``images_every`` epochs and at the last, ``val/confusion_matrix`` and ``val/misclassified``.
* Text: ``run/config`` (the resolved configuration) and ``run/environment`` (versions, device).
* HParams: the configuration with ``hparams/best_val_acc`` and ``hparams/best_val_loss``.
* Histograms (``histograms=True``): ``weights/<layer>`` and ``grads/<layer>`` with their norms
  ``weights_norm/<layer>`` and ``grads_norm/<layer>``, through Ignite's handlers.

Every step is the global iteration: per-epoch values sit at the iteration that ends the epoch.
Nothing new runs per training iteration except the histograms' event filter when they are on.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import struct
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers.tensorboard_logger import (
    GradsHistHandler,
    GradsScalarHandler,
    TensorboardLogger,
    WeightsHistHandler,
    WeightsScalarHandler,
)
from ignite.metrics import ConfusionMatrix
from tensorboardX.proto.api_pb2 import Status
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData, SessionEndInfo
from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboardX.record_writer import masked_crc32c
from tensorboardX.summary import hparams as hparams_summaries
from tensorboardX.summary import scalar as scalar_summary
from torch import nn

from ignite_mlp.data import denormalize
from ignite_mlp.files import write_atomic
from ignite_mlp.handlers import History
from ignite_mlp.plots import confusion_matrix_figure, image_grid, png_bytes

SAMPLE_IMAGES = 32  # training images in the grid logged at the start
MISCLASSIFIED_IMAGES = 32  # at most this many misclassified validation images per grid
GRID_COLUMNS = 8
CONFUSION_MATRIX = "confusion_matrix"  # the evaluator metric's name
# The HParams entry lives in its own event file, named with this marker (see write_hparams).
HPARAMS_MARKER = ".hparams."
# Config fields that say how a run is run or logged, not what it learns: left out of HParams.
# ("device" is the request, such as "auto"; "resolved_device" the device used, is kept.)
NOT_HPARAMS = frozenset(
    {"run_dir", "resume", "overwrite", "cache_dir", "download", "progress", "device", "precision_reason"}
    | {"tensorboard", "tb_histograms", "tb_images_every", "nproc_per_node", "backend", "world_size"}
)


def attach_tensorboard(
    trainer: Engine,
    optimizer: torch.optim.Optimizer,
    history: History,
    log_dir: str | Path,
    lr_per_iteration: bool = False,
    purge_step: int | None = None,
    *,
    evaluator: Engine | None = None,
    classes: Sequence[str] | None = None,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    device: torch.device | str = "cpu",
    images_every: int = 1,
    train_samples: tuple[torch.Tensor, torch.Tensor] | None = None,
    model: nn.Module | None = None,
    histograms: bool = False,
    hparams: Mapping[str, Any] | None = None,
    text: Mapping[str, str] | None = None,
    processes: int = 1,
) -> TensorboardLogger:
    """Log a run to TensorBoard in ``log_dir`` (see the module docstring for the tags).

    Always: ``train/loss``, ``train/lr/group_<i>`` at each epoch's first iteration (every
    iteration with ``lr_per_iteration``, for schedules that move within epochs), the four
    ``epoch/<key>`` values of ``history`` and the epoch timings. The keyword options add the rest:

    * ``evaluator`` and ``classes``: the confusion matrix (Ignite's ``ConfusionMatrix`` attached
      to the evaluator, on ``device``) every ``images_every`` epochs and at the last one (0:
      never); with ``normalization`` (mean, std) also a grid of misclassified validation images.
    * ``train_samples`` (uint8 images and labels) and ``classes``: a grid of training images at
      step 0, when the run starts fresh.
    * ``model`` with ``histograms``: weight and gradient histograms and norms per layer, at each
      epoch's last iteration.
    * ``hparams``: the HParams entry, written when training ends (see :func:`write_hparams`).
    * ``text``: ``{tag: markdown}`` entries written when training starts.
    * ``processes``: how many ranks train (on rank 0, the only one that logs); samples per
      second count all of them, each rank's batches being equal in size.

    Attach after ``history`` and before the last checkpoint: the epoch's events are flushed to
    disk before the checkpoint that covers them, and ``purge_step`` (the checkpoint's iteration
    + 1, on resume) hides anything a killed run logged after its checkpoint, so no step is ever
    duplicated. This session's start entries (text) go at ``purge_step`` for the same reason.
    """
    # Event files are named by the second they were opened; a resumed run's file gets a suffix
    # that sorts after the original's, so even a resume within the same second appends a new
    # file (tensorboardX opens with "wb") and TensorBoard reads the purge in the right order.
    suffix = f".{purge_step or 0:012d}"
    tb = TensorboardLogger(log_dir=str(log_dir), purge_step=purge_step, filename_suffix=suffix)
    writer = tb.writer
    write_synchronously(writer)

    # Not Ignite's OptimizerParamsHandler: on EPOCH_STARTED its step is the epoch number.
    def log_lr(step: int) -> None:
        for i, group in enumerate(optimizer.param_groups):
            writer.add_scalar(f"train/lr/group_{i}", float(group["lr"]), step)

    if lr_per_iteration:
        trainer.add_event_handler(Events.ITERATION_STARTED, lambda engine: log_lr(engine.state.iteration))
    else:

        def log_epoch_lr(engine: Engine) -> None:
            # At the epoch's first iteration; not again when a resume restarts an epoch midway,
            # since the session that began the epoch logged it and its step was not purged.
            if engine.state.iteration % engine.state.epoch_length == 0:
                log_lr(engine.state.iteration + 1)

        trainer.add_event_handler(Events.EPOCH_STARTED, log_epoch_lr)

    start_step = purge_step or 0

    def log_start(engine: Engine) -> None:
        for tag, markdown in (text or {}).items():
            writer.add_text(tag, markdown, start_step)
        if train_samples is not None and classes and engine.state.iteration == 0:
            add_image(writer, "train/samples", sample_grid(*train_samples, classes), 0)
        writer.flush()

    trainer.add_event_handler(Events.STARTED, log_start)

    images = None
    if evaluator is not None and classes and images_every > 0:
        images = ValidationImages(trainer, evaluator, classes, images_every, normalization, device)
    if model is not None and histograms:
        attach_histograms(tb, trainer, model)

    # Per-iteration losses are kept as tensors and written in one burst per epoch: one
    # device-to-host copy for the epoch instead of a GPU sync per step for .item().
    pending: list[tuple[int, torch.Tensor]] = []
    samples = [0]  # training samples seen this epoch, for samples per second

    def start_epoch(engine: Engine) -> None:
        samples[0] = 0

    def keep_loss(engine: Engine) -> None:
        pending.append((engine.state.iteration, engine.state.output["loss"].detach()))
        samples[0] += len(engine.state.output["y"])  # a shape, no device sync

    def write_losses(engine: Engine) -> None:
        if pending:
            values = torch.stack([loss for _, loss in pending]).float().cpu().tolist()
            for (step, _), value in zip(pending, values, strict=True):
                add_scalar(writer, "train/loss", value, step)
            pending.clear()
        writer.flush()

    def log_epoch(engine: Engine) -> None:
        step = engine.state.iteration
        write_losses(engine)
        for key, value in history.latest().items():
            writer.add_scalar(f"epoch/{key}", value, step)
        # Ignite's timer: this epoch's training iterations (and EPOCH_STARTED handlers), this
        # session only on a resumed epoch, which is what ``samples`` counts too.
        seconds = engine.state.times[Events.EPOCH_COMPLETED.name] or 0.0
        writer.add_scalar("time/epoch_seconds", seconds, step)
        if seconds > 0:
            writer.add_scalar("time/samples_per_second", samples[0] * processes / seconds, step)
        if evaluator is not None and evaluator.state.times.get(Events.EPOCH_COMPLETED.name):
            # The evaluator's pass and metrics, without its COMPLETED handlers (the best checkpoint).
            writer.add_scalar("time/validation_seconds", evaluator.state.times[Events.EPOCH_COMPLETED.name], step)
        if images is not None:
            images.log(writer, step)
        writer.flush()

    trainer.add_event_handler(Events.EPOCH_STARTED, start_epoch)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, keep_loss)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, log_epoch)
    trainer.add_event_handler(Events.TERMINATE, write_losses)  # a run stopped mid-epoch
    trainer.add_event_handler(Events.COMPLETED, lambda _: writer.flush())
    if hparams is not None:

        def log_hparams(engine: Engine) -> None:
            best = best_metrics(history)
            if best:
                write_hparams(log_dir, hparams, best, engine.state.iteration, session_status(engine))

        trainer.add_event_handler(Events.COMPLETED, log_hparams)
    return tb


# ----------------------------------------------------------------------------- writing


class SynchronousEventWriter:
    """Stands in for tensorboardX's event file writer: each event is written on the caller's
    thread, into the same file, with the same framing, and ``flush()`` means on disk.

    tensorboardX passes every event through a multiprocessing queue to a writer thread. That
    costs ~50 µs of CPU per event (pickled, piped, unpickled, checksummed), spent while the
    next epoch trains on the same two cores, and its ``flush()`` only flushes the file, not
    the queue, so an epoch's events could still be queued when its checkpoint is written and a
    ``kill -9`` then would lose them. Written here, an event costs ~10 µs and what was logged
    before a ``flush()`` is in the file after it.

    >>> import tempfile
    >>> from tensorboardX import SummaryWriter
    >>> log_dir = Path(tempfile.mkdtemp())
    >>> writer = SummaryWriter(str(log_dir))
    >>> write_synchronously(writer)
    >>> event_file = next(log_dir.glob("events.out.tfevents.*"))
    >>> size = event_file.stat().st_size
    >>> add_scalar(writer, "loss", 0.5, 1); writer.flush()
    >>> event_file.stat().st_size > size
    True
    """

    def __init__(self, threaded: Any) -> None:
        # Its thread writes what is queued so far (the file header, a purge marker), then ends.
        threaded._worker.stop()
        threaded._event_queue.close()
        threaded._event_queue.join_thread()  # and the queue's feeder thread with it
        self._events = threaded._ev_writer  # owns the open event file
        self._logdir = threaded.get_logdir()
        self._closed = False

    def get_logdir(self) -> str:
        return self._logdir

    def add_event(self, event: Event) -> None:
        if not self._closed:
            self._events.write_event(event)

    def flush(self) -> None:
        if not self._closed:
            self._events.flush()

    def close(self) -> None:
        if not self._closed:
            self._events.close()
            self._closed = True

    def reopen(self) -> None:
        """tensorboardX's writer reopens a closed file writer on the next event; one that is
        closed here stays closed (a closed run logs nothing more)."""


def write_synchronously(writer: Any) -> None:
    """Make a tensorboardX ``SummaryWriter`` write its events without a thread (see
    :class:`SynchronousEventWriter`). Call it right after creating the writer.

    It relies on tensorboardX's internals (checked on 2.6); if a later version lays them out
    differently, the writer keeps its thread and training goes on, with a warning.
    """
    file_writer = writer._get_file_writer()
    threaded = file_writer.event_writer
    if isinstance(threaded, SynchronousEventWriter):
        return
    if not all(hasattr(threaded, name) for name in ("_worker", "_event_queue", "_ev_writer", "get_logdir")):
        warnings.warn(
            "this tensorboardX version's event writer is unknown to ignite_mlp: TensorBoard events are written "
            "by tensorboardX's thread, and a kill -9 may lose the last epoch's",
            stacklevel=2,
        )
        return
    file_writer.event_writer = SynchronousEventWriter(threaded)


def add_scalar(writer: Any, tag: str, value: float, step: int) -> None:
    """``writer.add_scalar`` without its conversions and checks: a quarter of the time, for
    the per-iteration losses (a few hundred per epoch)."""
    writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, simple_value=value)]), step)


# ----------------------------------------------------------------------------- images


def add_image(writer: Any, tag: str, image: np.ndarray, step: int) -> None:
    """Log an ``(H, W, 3)`` uint8 image. Encoded here with fast PNG compression: tensorboardX's
    ``add_image`` uses the default level, two to three times slower for the same size."""
    height, width = image.shape[:2]
    encoded = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png_bytes(image, 1))
    writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=encoded)]), step)


def sample_grid(
    images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], count: int = SAMPLE_IMAGES
) -> np.ndarray:
    """``count`` training images picked by a fixed seed, sorted by class, titled with it."""
    # A generator of its own: drawing from the global one would change the training run.
    picked = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:count]
    picked = picked[torch.argsort(labels[picked], stable=True)]
    titles = [classes[int(k)] for k in labels[picked]]
    return image_grid(images[picked].cpu(), titles, ncols=GRID_COLUMNS)


def attach_confusion_matrix(evaluator: Engine, num_classes: int, device: torch.device | str = "cpu") -> None:
    """Ignite's ``ConfusionMatrix`` on the evaluator, as ``metrics["confusion_matrix"]``.

    Reduced across ranks like every Ignite metric, so in a multi-process run every rank attaches
    it, not only rank 0 that draws it (see :func:`ignite_mlp.run.train`).
    """
    ConfusionMatrix(num_classes, device=device).attach(evaluator, CONFUSION_MATRIX)


class ValidationImages:
    """The confusion matrix and a grid of misclassified validation images, every ``every``
    epochs and at the last one.

    The matrix is Ignite's ``ConfusionMatrix`` attached to the evaluator. The misclassified
    images are collected during evaluation: the first ``count`` in validation order, their
    pixels recovered from the normalised batch (``normalization`` = (mean, std)). Once enough
    are found, later batches cost nothing. In a multi-process run they come from rank 0's share
    of the validation set; the matrix counts every rank's.
    """

    def __init__(
        self,
        trainer: Engine,
        evaluator: Engine,
        classes: Sequence[str],
        every: int = 1,
        normalization: tuple[Sequence[float], Sequence[float]] | None = None,
        device: torch.device | str = "cpu",
        count: int = MISCLASSIFIED_IMAGES,
    ) -> None:
        self.trainer, self.evaluator, self.classes = trainer, evaluator, list(classes)
        self.every, self.normalization, self.count = every, normalization, count
        attach_confusion_matrix(evaluator, len(self.classes), device)
        self.images: list[torch.Tensor] = []
        self.predicted: list[torch.Tensor] = []
        self.true: list[torch.Tensor] = []
        self.found = 0
        if normalization is not None:
            evaluator.add_event_handler(Events.STARTED, self._reset)
            evaluator.add_event_handler(Events.ITERATION_COMPLETED, self._collect)

    def due(self) -> bool:
        epoch = self.trainer.state.epoch
        return epoch % self.every == 0 or epoch == self.trainer.state.max_epochs

    def _reset(self, _: Engine) -> None:
        self.images, self.predicted, self.true, self.found = [], [], [], 0

    def _collect(self, engine: Engine) -> None:
        if self.found >= self.count or not self.due():
            return
        x = engine.state.batch[0]
        y_pred, y = engine.state.output[:2]
        predicted = y_pred.argmax(dim=1)
        wrong = torch.nonzero(predicted != y).flatten()[: self.count - self.found]
        if len(wrong):
            assert self.normalization is not None
            self.images.append(denormalize(x.index_select(0, wrong.to(x.device)), *self.normalization).cpu())
            self.predicted.append(predicted[wrong].cpu())
            self.true.append(y[wrong].cpu())
            self.found += len(wrong)

    def log(self, writer: Any, step: int) -> None:
        """Write this epoch's images, if it is due; call after validation."""
        if not self.due():
            return
        matrix = self.evaluator.state.metrics[CONFUSION_MATRIX].cpu().numpy()
        add_image(writer, "val/confusion_matrix", confusion_matrix_figure(matrix, self.classes), step)
        if self.images:
            titles = [
                f"pred {self.classes[p]}\ntrue {self.classes[t]}"
                for p, t in zip(torch.cat(self.predicted).tolist(), torch.cat(self.true).tolist(), strict=True)
            ]
            add_image(writer, "val/misclassified", image_grid(torch.cat(self.images), titles, GRID_COLUMNS), step)


# ----------------------------------------------------------------------------- histograms


def _epoch_end(engine: Engine, iteration: int) -> bool:
    # True at each epoch's last iteration, also in a resumed run (iterations count globally).
    return iteration % engine.state.epoch_length == 0


def attach_histograms(tb: TensorboardLogger, trainer: Engine, model: nn.Module) -> None:
    """Weight and gradient histograms and norms per parameter, through Ignite's handlers, at
    each epoch's last iteration: the step is the global iteration like every other tag, and
    the gradients are that iteration's, still in ``.grad`` after the optimiser step."""
    event = Events.ITERATION_COMPLETED(event_filter=_epoch_end)
    for handler in (WeightsHistHandler, GradsHistHandler, WeightsScalarHandler, GradsScalarHandler):
        tb.attach(trainer, handler(model), event)


# ----------------------------------------------------------------------------- text


def environment(device: torch.device | str) -> dict[str, str]:
    """Versions and the device, for the ``run/environment`` text entry."""
    import ignite
    import tensorboardX

    from ignite_mlp import __version__

    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.machine()}, {torch.get_num_threads()} threads"
    return {
        "ignite_mlp": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch-ignite": ignite.__version__,
        "tensorboardX": tensorboardX.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda or "none",
        "device": f"{device} ({name})",
        "platform": platform.platform(),
        "host": socket.gethostname(),
    }


def run_text(run_info: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """The ``run/config`` (indented JSON, a Markdown code block) and ``run/environment`` (a
    Markdown table) text entries."""
    config = "\n".join("    " + line for line in json.dumps(run_info, indent=2).splitlines())
    table = "| | |\n| --- | --- |\n" + "\n".join(f"| {key} | {value} |" for key, value in env.items())
    return {"run/config": config, "run/environment": table}


# ----------------------------------------------------------------------------- HParams


def hparam_values(run_info: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """The configuration as HParams values: scalars as they are, lists as JSON text, None and
    the fields in ``NOT_HPARAMS`` left out.

    >>> hparam_values({"lr": 0.01, "hidden_sizes": [512, 256], "progress": True, "cache_dir": None})
    {'lr': 0.01, 'hidden_sizes': '[512, 256]'}
    """
    values: dict[str, bool | int | float | str] = {}
    for key, value in run_info.items():
        if key in NOT_HPARAMS or value is None:
            continue
        values[key] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return values


def best_metrics(history: History) -> dict[str, float]:
    """The best validation accuracy (percent) and loss over all epochs so far (not the last)."""
    acc, loss = history.values["val_acc_epoch"], history.values["val_loss"]
    return {"hparams/best_val_acc": max(acc), "hparams/best_val_loss": min(loss)} if acc else {}


def session_status(trainer: Engine) -> str:
    """How the training session ended, in the HParams plugin's terms."""
    state = trainer.state
    if state.output is not None and not bool(torch.isfinite(state.output["loss"]).all()):
        return "STATUS_FAILURE"  # stopped by a NaN loss
    if state.epoch_length and state.iteration >= state.epoch_length * state.max_epochs:
        return "STATUS_SUCCESS"
    return "STATUS_UNKNOWN"  # interrupted: a resume may finish it


def write_hparams(
    log_dir: str | Path,
    hparams: Mapping[str, Any],
    metrics: Mapping[str, float],
    step: int,
    status: str = "STATUS_SUCCESS",
) -> Path:
    """Write the run's HParams entry and return its event file.

    The entry is one event file of its own in ``log_dir`` (so TensorBoard shows one entry per
    run directory), written whole and atomically, after which the entry an earlier session of
    the same run wrote is deleted. That is what keeps it right across a resume: TensorBoard
    keeps the first HParams metadata it reads for a run, so a second entry in the run's main
    event files would be ignored, and a purge does not remove metadata. The metric values are
    scalars at ``step`` (the global iteration) in the same file.
    """
    log_dir = Path(log_dir)
    exp, ssi, _ = hparams_summaries(hparam_values(hparams), dict(metrics))
    end = HParamsPluginData(session_end_info=SessionEndInfo(status=Status.Value(status)), version=0)
    sei = Summary(
        value=[
            Summary.Value(
                tag="_hparams_/session_end_info",
                metadata=SummaryMetadata(
                    plugin_data=SummaryMetadata.PluginData(plugin_name="hparams", content=end.SerializeToString())
                ),
            )
        ]
    )
    now = time.time()
    events = [Event(wall_time=now, file_version="brain.Event:2")]
    events += [Event(wall_time=now, step=step, summary=summary) for summary in (exp, ssi, sei)]
    events += [Event(wall_time=now, step=step, summary=scalar_summary(k, v)) for k, v in metrics.items()]
    # Named like tensorboardX's files, so it sorts after the main event files of this session.
    path = log_dir / f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}{HPARAMS_MARKER}{step:012d}"
    # Staged under a name TensorBoard ignores (no "tfevents"), then renamed: a TensorBoard
    # reading the folder meanwhile never sees a partial file.
    staging = log_dir / f".hparams-{step}.partial"
    write_atomic(staging, b"".join(_record(event) for event in events))
    os.replace(staging, path)
    for old in log_dir.glob(f"events.out.tfevents.*{HPARAMS_MARKER}*"):
        if old != path:
            old.unlink(missing_ok=True)
    return path


def _record(event: Event) -> bytes:
    """One event in TFRecord framing: length, its checksum, the bytes, their checksum."""
    data = event.SerializeToString()
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))
