"""The event files under a run's TensorBoard logging: written synchronously, framed as TFRecords.

:mod:`ignite_mlp.handlers.tensorboard.logger` decides what a run shows; this module writes it: tensorboardX's
writer without its thread (:func:`write_synchronously`), scalars and PNG images added without
tensorboardX's per-call conversions, and the HParams entry as an event file of its own.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tensorboardX.proto.api_pb2 import Status
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData, SessionEndInfo
from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboardX.record_writer import masked_crc32c
from tensorboardX.summary import hparams as hparams_summaries
from tensorboardX.summary import scalar as scalar_summary

from ignite_mlp.files import write_atomic
from ignite_mlp.handlers.ignite_compat import (
    tensorboardx_file_writer,
    tensorboardx_stop_thread,
    tensorboardx_thread_known,
)
from ignite_mlp.plots import png_bytes

# The HParams entry lives in its own event file, named with this marker (see write_hparams).
HPARAMS_MARKER = ".hparams."
# Config fields that say how a run is run or logged, not what it learns: left out of HParams.
# ("device" is the request, such as "auto"; "resolved_device" the device used, is kept.)
NOT_HPARAMS = frozenset(
    {"run_dir", "resume", "overwrite", "cache_dir", "download", "progress", "device", "precision_reason"}
    | {"tensorboard", "tb_histograms", "tb_images_every", "nproc_per_node", "backend", "world_size"}
)


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
        self._events = tensorboardx_stop_thread(threaded)  # owns the open event file
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
    file_writer = tensorboardx_file_writer(writer)
    threaded = file_writer.event_writer
    if isinstance(threaded, SynchronousEventWriter):
        return
    if not tensorboardx_thread_known(threaded):
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


def add_image(writer: Any, tag: str, image: np.ndarray, step: int) -> None:
    """Log an ``(H, W, 3)`` uint8 image. Encoded here with fast PNG compression: tensorboardX's
    ``add_image`` uses the default level, two to three times slower for the same size."""
    height, width = image.shape[:2]
    encoded = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png_bytes(image, 1))
    writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=encoded)]), step)


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
