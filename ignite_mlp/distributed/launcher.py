"""More than one process: data-parallel training on PyTorch's own distributed engine, through Ignite.

:func:`launch` is how the CLI trains, in one of three ways:

* ``nproc_per_node == 1`` and no ``torchrun`` around: ``train(config)`` in this process, as
  always (nothing here runs);
* ``nproc_per_node = N > 1``: ``idist.Parallel(backend, nproc_per_node=N)`` spawns N processes
  on this machine and each runs ``train(config)`` as one rank;
* under ``torchrun`` (one or several nodes; it sets ``RANK``, ``WORLD_SIZE``, ...):
  ``idist.Parallel(backend)`` joins the process group torchrun prepared and this process trains
  as its rank.

Inside :func:`ignite_mlp.run.training.train` the rank helpers of :mod:`ignite_mlp.distributed.ranks` decide who
does what. The imports run one way: this launcher -> :mod:`ignite_mlp.run.training` ->
:mod:`ignite_mlp.distributed.ranks`.

A rank that fails ends the run: with ``--nproc-per-node``, torch's process context stops the
others as soon as one exits with an error, and the launcher raises that rank's error (a
:class:`UserError` stays one, anything else becomes a :class:`RankError` with its traceback);
under ``torchrun``, torchrun stops the others.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ignite.distributed as idist
from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

from ignite_mlp.config.constraints import require_cuda
from ignite_mlp.config.train_config import TrainConfig
from ignite_mlp.distributed.ranks import choose_backend, rank_device, rank_device_type, set_threads, under_torchrun
from ignite_mlp.errors import CudaError, RankError, TrainingInterrupted, UserError

# Errors a rank hands to the launcher as they are; anything else becomes a RankError.
_PASSED_THROUGH = (UserError, TrainingInterrupted, CudaError, KeyboardInterrupt)


def launch(config: TrainConfig, train_fn: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
    """Train as ``config`` says on as many processes as it (or torchrun) asks for.

    Returns what ``train_fn(config, **kwargs)`` (default :func:`ignite_mlp.run.training.train`) returned
    on rank 0, and None on every other rank of a torchrun launch. With ``nproc_per_node > 1``
    the processes are spawned, so ``train_fn`` and ``kwargs`` (extra handlers, ``write``) must
    be picklable: module-level functions, no lambdas.
    """
    if train_fn is None:
        from ignite_mlp.run.training import train as train_fn
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
            _settle()
            if idist.get_rank() == 0:  # rank 0 tells the user; the others just stop
                raise
            result = None
        results.append(result if idist.get_rank() == 0 else None)
        _settle()

    with idist.Parallel(backend=backend) as parallel:
        parallel.run(run_rank)
    return results[0]


def _spawn(config: TrainConfig, train_fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """Start ``config.nproc_per_node`` processes through ``idist.Parallel`` and wait for them.

    Each rank leaves its outcome (rank 0: the result) in a scratch folder; the launcher returns
    rank 0's result or raises the error of the rank that failed first.
    """
    if rank_device_type(config.device) == "cuda":
        # Each process on CUDA takes a GPU of its own.
        require_cuda(
            f"--device {config.device} with --nproc-per-node {config.nproc_per_node}",
            gpus=config.nproc_per_node,
            fix="each process on CUDA takes a GPU of its own: pass a smaller --nproc-per-node, or --device cpu",
        )
    backend = choose_backend(config.backend, config.device)
    port = int(os.environ.get("MASTER_PORT") or _free_port())
    with tempfile.TemporaryDirectory(prefix="ignite-mlp-ranks-") as outbox:
        previous = _ignore_sigint()
        try:
            with idist.Parallel(backend=backend, nproc_per_node=config.nproc_per_node, master_port=port) as parallel:
                parallel.run(_spawned_rank, train_fn, config, kwargs, outbox)
        except (ProcessRaisedException, ProcessExitedException) as e:
            if not _all_finished(Path(outbox), config.nproc_per_node):
                raise _rank_failure(Path(outbox), e) from None
            # Every rank had finished and rank 0 had written everything: a process that then
            # dies on its way out loses nothing, so the run stands.
            print(f"ignite-mlp: warning: after the run, {str(e).strip()} while exiting", file=sys.stderr)
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
        _settle()
        return
    except BaseException as e:
        _write_outcome(outbox, me, _error_outcome(me, e))
        if isinstance(e, KeyboardInterrupt):
            # torch's process wrapper takes a KeyboardInterrupt for a clean exit, which would
            # leave the other ranks waiting; a non-zero status makes it stop them.
            raise SystemExit(130) from None
        raise
    _write_outcome(outbox, me, {"kind": "result", "value": result} if me == 0 else {"kind": "done", "value": None})
    del result
    _settle()


def _settle() -> None:
    """Before Ignite destroys the process group: free the run's objects (DistributedDataParallel
    holds the group and its pending work; left to the interpreter's exit, gloo can abort the
    process) and wait until every rank is done with the group."""
    gc.collect()
    idist.barrier()


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


def _all_finished(outbox: Path, nproc: int) -> bool:
    """Did every rank leave an outcome that ends its run (a result, done, or the agreed interrupt)?"""
    outcomes = [_read_outcome(outbox / f"rank-{r}.pkl") for r in range(nproc)]
    return all(o is not None and o["kind"] != "error" for o in outcomes)


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
