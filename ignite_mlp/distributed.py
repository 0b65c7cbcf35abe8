"""More than one process: data-parallel training on PyTorch's own distributed engine, through Ignite.

:func:`launch` is how the CLI trains, in one of three ways:

* ``nproc_per_node == 1`` and no ``torchrun`` around: ``train(config)`` in this process, as
  always (nothing here runs);
* ``nproc_per_node = N > 1``: ``idist.Parallel(backend, nproc_per_node=N)`` spawns N processes
  on this machine and each runs ``train(config)`` as one rank;
* under ``torchrun`` (one or several nodes; it sets ``RANK``, ``WORLD_SIZE``, ...):
  ``idist.Parallel(backend)`` joins the process group torchrun prepared and this process trains
  as its rank.

Inside :func:`ignite_mlp.run.train` the helpers below decide who does what: every rank runs
every collective operation (gradient all-reduce, metric reduction, checkpoint state) in the
same order, and only rank 0 writes files or prints.

A rank that fails ends the run: with ``--nproc-per-node``, torch's process context stops the
others as soon as one exits with an error, and the launcher raises that rank's error (a
:class:`UserError` stays one, anything else becomes a :class:`RankError` with its traceback);
under ``torchrun``, torchrun stops the others.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from torch import nn
from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

from ignite_mlp.config import TrainConfig
from ignite_mlp.errors import CudaError, RankError, TrainingInterrupted, UserError

# Variables torchrun (and torch.distributed.launch) set for each process it starts.
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# Errors a rank hands to the launcher as they are; anything else becomes a RankError.
_PASSED_THROUGH = (UserError, TrainingInterrupted, CudaError, KeyboardInterrupt)


# ----------------------------------------------------------------------------- rank helpers


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return idist.get_rank()


def world_size() -> int:
    """How many processes train together (1 when not distributed)."""
    return idist.get_world_size()


def is_main() -> bool:
    """True on the process that writes files and prints: rank 0, or the only process."""
    return idist.get_rank() == 0


def under_torchrun() -> bool:
    """True when torchrun started this process as one of several."""
    return all(v in os.environ for v in _TORCHRUN_VARIABLES) and int(os.environ["WORLD_SIZE"]) > 1


def choose_backend(backend: str, device_spec: str) -> str:
    """``auto``: NCCL when the processes train on CUDA, gloo otherwise.

    >>> choose_backend("auto", "cpu")
    'gloo'
    """
    cuda = rank_device_type(device_spec) == "cuda"
    if backend == "auto":
        return "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        raise UserError("--backend nccl connects GPUs only; use --backend gloo (or auto) to train on CPU")
    if backend == "nccl" and not torch.cuda.is_available():
        raise UserError("--backend nccl: CUDA is not available on this machine; use --backend gloo or auto")
    return backend


def rank_device_type(spec: str) -> str:
    """``cuda`` or ``cpu``: where the ranks will train, known before any process starts.

    >>> rank_device_type("cpu")
    'cpu'
    """
    return "cpu" if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()) else "cuda"


def rank_device(spec: str) -> torch.device:
    """This rank's device when several processes train: its local rank's GPU, or the CPU.

    Only called in a distributed run; ``cuda:N`` would put every process on one GPU.
    """
    if rank_device_type(spec) == "cpu":
        return torch.device("cpu")
    if spec not in ("auto", "cuda"):
        raise UserError(f"--device {spec} pins one GPU; with several processes use --device cuda or auto")
    if not torch.cuda.is_available():
        raise UserError(f"--device {spec}: CUDA is not available on this machine; use --device cpu or auto")
    return torch.device("cuda", idist.get_local_rank())


def backend() -> str | None:
    """The process group's backend (gloo, nccl), or None when not distributed."""
    return idist.backend()


def wrap(
    model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model and optimiser the trainer steps: Ignite's ``auto_model`` (DistributedDataParallel,
    which averages gradients over the ranks) and ``auto_optim`` across ranks; both unchanged in
    one process.

    On a CUDA machine asked to train on the CPU, ``auto_model`` would move the model to the GPU;
    there the model is wrapped in ``DistributedDataParallel`` as it is, which is what
    ``auto_model`` does on a machine without CUDA.
    """
    if idist.get_world_size() == 1:
        return model, optimizer
    wrapped = idist.auto_model(model) if device == idist.device() else nn.parallel.DistributedDataParallel(model)
    return wrapped, idist.auto_optim(optimizer)


def main_first() -> contextlib.AbstractContextManager[None]:
    """Rank 0 of each machine goes first (then the others): it downloads and decodes the data
    and fills the cache, which the others then read instead of decoding it again."""
    if idist.get_world_size() == 1:
        return contextlib.nullcontext()
    return idist.one_rank_first(rank=0, local=True)


def attach_agreement(trainer: Engine, stop_signalled: Callable[[], bool]) -> Callable[[], bool]:
    """Make all ranks decide alike after every iteration; returns "have the ranks agreed to stop?".

    One all-reduce per iteration carries the batch loss and whether this rank got Ctrl-C. After
    it, ``state.output["loss"]`` is the mean over the ranks, the global batch's loss, so the NaN
    check, the progress bar and TensorBoard see the same value everywhere and a NaN on one rank
    stops all of them at the same iteration (one rank stopping alone would leave the others
    waiting in the next all-reduce). Attach before any handler that reads the loss or stops the
    trainer, after the training metrics (they keep each rank's own loss and reduce it at the
    epoch's end).
    """
    agreed = [False]
    size = idist.get_world_size()

    def agree(engine: Engine) -> None:
        loss = engine.state.output["loss"].detach().float().reshape(())
        flags = torch.stack([loss, torch.tensor(float(stop_signalled()), device=loss.device)])
        flags = idist.all_reduce(flags)
        engine.state.output["loss"] = flags[0] / size
        agreed[0] = bool(flags[1] > 0)

    trainer.add_event_handler(Events.ITERATION_COMPLETED, agree)
    return lambda: agreed[0]


def set_threads(device: torch.device) -> None:
    """Share the CPU cores between this machine's processes, unless OMP_NUM_THREADS says otherwise:
    two processes with a thread per core each would fight over the cores."""
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // idist.get_nproc_per_node()))


# ----------------------------------------------------------------------------- launching


def launch(config: TrainConfig, train_fn: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
    """Train as ``config`` says on as many processes as it (or torchrun) asks for.

    Returns what ``train_fn(config, **kwargs)`` (default :func:`ignite_mlp.run.train`) returned
    on rank 0, and None on every other rank of a torchrun launch. With ``nproc_per_node > 1``
    the processes are spawned, so ``train_fn`` and ``kwargs`` (extra handlers, ``write``) must
    be picklable: module-level functions, no lambdas.
    """
    if train_fn is None:
        from ignite_mlp.run import train as train_fn
    if under_torchrun():
        return _join_torchrun(config, train_fn, kwargs)
    if config.nproc_per_node == 1:
        return train_fn(config, **kwargs)
    return _spawn(config, train_fn, kwargs)


def _join_torchrun(config: TrainConfig, train_fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """Train as one rank of the process group torchrun set up; torchrun stops the rest on a failure."""
    backend = choose_backend(config.backend, config.device)
    results: list[Any] = []

    def run_rank(local_rank: int) -> None:
        set_threads(rank_device(config.device))
        try:
            result = train_fn(config, **kwargs)
        except TrainingInterrupted:
            if idist.get_rank() == 0:  # rank 0 tells the user; the others just stop
                raise
            result = None
        results.append(result if idist.get_rank() == 0 else None)

    with idist.Parallel(backend=backend) as parallel:
        parallel.run(run_rank)
    return results[0]


def _spawn(config: TrainConfig, train_fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """Start ``config.nproc_per_node`` processes through ``idist.Parallel`` and wait for them.

    Each rank leaves its outcome (rank 0: the result) in a scratch folder; the launcher returns
    rank 0's result or raises the error of the rank that failed first.
    """
    gpus = torch.cuda.device_count()
    if rank_device_type(config.device) == "cuda" and not gpus:
        raise UserError(f"--device {config.device}: CUDA is not available on this machine; use --device cpu or auto")
    if rank_device_type(config.device) == "cuda" and config.nproc_per_node > gpus:
        raise UserError(
            f"--nproc-per-node {config.nproc_per_node}: each process on CUDA takes a GPU of its own and this "
            f"machine has {gpus}; pass --nproc-per-node {gpus} or fewer, or --device cpu"
        )
    backend = choose_backend(config.backend, config.device)
    port = int(os.environ.get("MASTER_PORT") or _free_port())
    with tempfile.TemporaryDirectory(prefix="ignite-mlp-ranks-") as outbox:
        previous = _ignore_sigint()
        try:
            with idist.Parallel(backend=backend, nproc_per_node=config.nproc_per_node, master_port=port) as parallel:
                parallel.run(_spawned_rank, train_fn, config, kwargs, outbox)
        except (ProcessRaisedException, ProcessExitedException) as e:
            raise _rank_failure(Path(outbox), e) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        outcome = _read_outcome(Path(outbox) / "rank-0.pkl")
    if outcome is None:
        raise RankError("rank 0 ended without a result")
    kind, value = outcome["kind"], outcome["value"]
    if kind == "result":
        return value
    raise value  # a TrainingInterrupted: every rank stopped at the same step, rank 0 saved it


def _spawned_rank(
    local_rank: int, train_fn: Callable[..., Any], config: TrainConfig, kwargs: dict[str, Any], outbox: str
) -> None:
    """One spawned rank: train, and leave the outcome for the launcher.

    Ctrl-C on the terminal reaches every rank; the run stops at the step they agree on and ends
    normally, so no rank is killed while rank 0 still writes the interrupt checkpoint.
    """
    me = idist.get_rank()
    try:
        set_threads(rank_device(config.device))
        result = train_fn(config, **kwargs)
    except TrainingInterrupted as e:
        _write_outcome(outbox, me, {"kind": "interrupted", "value": e})
        return
    except BaseException as e:
        _write_outcome(outbox, me, _error_outcome(me, e))
        if isinstance(e, KeyboardInterrupt):
            # torch's process wrapper takes a KeyboardInterrupt for a clean exit, which would
            # leave the other ranks waiting; a non-zero status makes it stop them.
            raise SystemExit(130) from None
        raise
    if me == 0:
        _write_outcome(outbox, me, {"kind": "result", "value": result})


def _error_outcome(me: int, error: BaseException) -> dict[str, Any]:
    """What the launcher needs to raise ``error`` again, or to describe it when it cannot."""
    outcome = {
        "kind": "error",
        "time": time.time(),  # the first error is the cause; later ones are the others noticing
        "rank": me,
        "value": None,
        "text": f"rank {me} failed: {type(error).__name__}: {error}\n{traceback.format_exc()}".rstrip(),
    }
    if isinstance(error, _PASSED_THROUGH):
        try:
            pickle.loads(pickle.dumps(error))
            outcome["value"] = error
        except Exception:  # noqa: BLE001 - an unpicklable error is reported by its text
            pass
    return outcome


def _write_outcome(outbox: str, me: int, outcome: dict[str, Any]) -> None:
    path = Path(outbox) / f"rank-{me}.pkl"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(outcome))
    os.replace(tmp, path)  # the launcher never reads half an outcome


def _read_outcome(path: Path) -> dict[str, Any] | None:
    try:
        return pickle.loads(path.read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError):
        return None


def _rank_failure(outbox: Path, failure: ProcessRaisedException | ProcessExitedException) -> BaseException:
    """The error to raise for a failed run: the earliest one a rank reported (a rank that dies
    takes the others' collectives down with it, and their errors follow), else torch's report."""
    errors = [o for o in map(_read_outcome, sorted(outbox.glob("rank-*.pkl"))) if o and o["kind"] == "error"]
    if not errors:
        return RankError(f"process {failure.error_index} failed: {str(failure).strip()}")
    first = min(errors, key=lambda o: o["time"])
    return first["value"] if first["value"] is not None else RankError(first["text"])


def _free_port() -> int:
    """A TCP port free right now, so two runs on one machine do not collide on a fixed one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ignore_sigint() -> Any:
    """While the ranks run, Ctrl-C is theirs to handle (the terminal sends it to all of them):
    the launcher must stay alive to collect their outcome. Returns the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, lambda signum, frame: None)
