"""The few places this package reads Ignite's and tensorboardX's private attributes, each behind
one small adapter, and nowhere else.

Ignite's were read from pytorch-ignite 0.5.5 (``ignite/engine/engine.py``,
``ignite/handlers/checkpoint.py``, ``ignite/engine/events.py``, ``ignite/metrics/metric.py``),
tensorboardX's from 2.6 (``tensorboardX/writer.py``, ``tensorboardX/event_file_writer.py``).
``tests/test_ignite_compat.py`` checks each against the installed libraries, so an upgrade that
changes one fails there, by name, instead of somewhere deep in a run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from ignite.engine import Engine
from ignite.handlers import Checkpoint
from ignite.metrics import Metric


def event_handlers(engine: Engine) -> Iterator[tuple[Any, list[Callable[..., Any]]]]:
    """Each event an engine has handlers for, with the handlers in the order Ignite runs them.

    Ignite 0.5.5 keeps them in ``engine._event_handlers``: ``{event: [(handler, args, kwargs)]}``.
    """
    for event, entries in engine._event_handlers.items():
        yield event, [entry[0] for entry in entries]


def saved_filenames(checkpoint: Checkpoint) -> list[str]:
    """The file names an Ignite ``Checkpoint`` tracks as saved (its ``n_saved`` newest or best).

    Ignite 0.5.5 keeps them in ``checkpoint._saved``, a list of ``Checkpoint.Item(priority, filename)``.
    """
    return [item.filename for item in checkpoint._saved]


def event_filter_of(handler: Callable[..., Any]) -> Callable[..., bool] | None:
    """The event filter a handler was attached with (``Events.X(every=5)``, or a callable given as
    ``event_filter``), or None for a handler attached without one.

    Ignite 0.5.5 wraps a filtered handler in ``Engine._handler_wrapper``, a closure over a
    variable named ``event_filter``.
    """
    code = getattr(handler, "__code__", None)
    if code is None or "event_filter" not in code.co_freevars:
        return None
    return handler.__closure__[code.co_freevars.index("event_filter")].cell_contents


def ignite_filter_arguments(event_filter: Callable[..., bool]) -> dict[str, Any] | None:
    """The arguments of one of Ignite's own filters (``every=5``, ``once=[3]``, ...), or None for
    any other callable.

    Ignite 0.5.5 makes them as closures in ``CallableEventWithFilter`` (``every_event_filter``
    and friends) whose free variables are the arguments.
    """
    if not getattr(event_filter, "__qualname__", "").startswith("CallableEventWithFilter"):
        return None
    names = event_filter.__code__.co_freevars
    return dict(zip(names, (c.cell_contents for c in event_filter.__closure__ or ()), strict=True))


def metric_device(metric: Metric) -> torch.device:
    """The device an Ignite metric accumulates on. Ignite 0.5.5 keeps it in ``metric._device``."""
    return metric._device


# tensorboardX 2.6's threaded event writer: the worker thread, its queue, and the writer of the
# open event file that the thread writes through.
_TBX_THREAD_PARTS = ("_worker", "_event_queue", "_ev_writer", "get_logdir")


def tensorboardx_file_writer(writer: Any) -> Any:
    """A tensorboardX ``SummaryWriter``'s file writer, made if it is not yet (``_get_file_writer()``)."""
    return writer._get_file_writer()


def tensorboardx_thread_known(threaded: Any) -> bool:
    """Whether a file writer's ``event_writer`` is tensorboardX 2.6's threaded writer, as
    :func:`tensorboardx_stop_thread` expects it."""
    return all(hasattr(threaded, name) for name in _TBX_THREAD_PARTS)


def tensorboardx_stop_thread(threaded: Any) -> Any:
    """Let tensorboardX's event-writer thread write what is queued, end it (and its queue's feeder
    thread), and return the writer of the open event file it wrote through."""
    threaded._worker.stop()
    threaded._event_queue.close()
    threaded._event_queue.join_thread()
    return threaded._ev_writer
