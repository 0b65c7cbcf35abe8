"""Step 7 of a run: record its configuration, then ``trainer.run``, with Ctrl-C routed to a clean
stop (a checkpoint where it stopped) and CUDA errors explained."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ignite.handlers import TensorboardLogger

from ignite_mlp.errors import CudaError, TrainingInterrupted
from ignite_mlp.run.engines import Engines, StopRequest
from ignite_mlp.run.plan import RunPlan
from ignite_mlp.run.prepare import RunData
from ignite_mlp.run.rundir import RunDir
from ignite_mlp.run.spec import RunSpec

if TYPE_CHECKING:
    from ignite_mlp.run.training import Attached


def fit(spec: RunSpec, plan: RunPlan, data: RunData, engines: Engines, attached: Attached) -> None:
    """Record the run's config, then train; a Ctrl-C ends in :class:`TrainingInterrupted` once
    its checkpoint is written."""
    if spec.main:
        RunDir(plan.run_dir).write_config(attached.run_info)
        if plan.resume is not None:
            plan.resume.record()
    with sigint_routed_to(engines.stop), cuda_errors_explained(), _closing(attached.tb):
        engines.trainer.run(data.train_loader, max_epochs=spec.max_epochs, epoch_length=spec.epoch_length)
    if engines.should_stop() and attached.interrupted.last_checkpoint:  # (Ctrl-C after the last step: complete)
        raise TrainingInterrupted(str(plan.run_dir), str(attached.interrupted.last_checkpoint))


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
