"""User extensions: handler specs from the command line, the package's own events, and a
table of which handler runs on which event.

A handler spec is ``module.path:function`` (importable) or ``path/to/file.py:function``. The
function is called as ``function(trainer, evaluator, context)`` and attaches what it likes:

    def attach(trainer, evaluator, context):
        @trainer.on(Events.EPOCH_COMPLETED(every=2))
        def log_lr(engine):
            context.tb_logger.writer.add_scalar("my/lr", context.optimizer.param_groups[0]["lr"], engine.state.epoch)
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ignite.engine import Engine, EventEnum, Events
from ignite.engine.events import CallableEventWithFilter

from ignite_mlp.errors import UserError
from ignite_mlp.handlers.ignite_compat import event_filter_of, event_handlers, ignite_filter_arguments


class TrainEvents(EventEnum):
    """Events of ignite_mlp's own, fired on the trainer.

    ``NEW_BEST``: a validation score beat every earlier one; fired right after the best
    checkpoint was written, so ``context.run_dir / "checkpoints"`` already holds it. The
    superseded best file is still there until the epoch's last checkpoint is written (see
    :func:`ignite_mlp.handlers.checkpoints.attach_checkpoints`): the new one is the highest score,
    :func:`ignite_mlp.run.resume.best_checkpoint`.
    """

    NEW_BEST = "new_best"


def load_handler(spec: str) -> Callable[..., Any]:
    """Resolve ``module:function`` or ``file.py:function`` to the function, or a UserError."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise UserError(f"--handler {spec}: expected MODULE:FUNCTION or FILE.py:FUNCTION")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise UserError(f"--handler {spec}: no such file {path}")
            module_spec = importlib.util.spec_from_file_location(f"ignite_mlp_user_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(target)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure inside user code is reported the same way
        raise UserError(f"--handler {spec}: cannot import {target} ({type(e).__name__}: {e})") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise UserError(f"--handler {spec}: {target} has no function {name!r}")
    return function


def _describe(handler: Any) -> str:
    """A readable name for a handler Ignite stores (unwrapping its filter wrappers)."""
    inner = handler
    while True:
        if inspect.ismethod(inner):  # before unwrapping: the bound object names the class
            return f"{type(inner.__self__).__name__}.{inner.__name__}"
        if not hasattr(inner, "__wrapped__"):
            break
        inner = inner.__wrapped__
    if inspect.isfunction(inner):
        return inner.__qualname__.replace(".<locals>", "")
    return type(inner).__name__


def _filter_of(handler: Any) -> str:
    """The Ignite event filter (every/once/before/after, or a filter object) a handler was attached with."""
    event_filter = event_filter_of(handler)
    if event_filter is None:
        return ""
    arguments = ignite_filter_arguments(event_filter)
    if arguments is None:
        return repr(event_filter)
    return ", ".join(f"{k}={v}" for k, v in arguments.items() if isinstance(v, (int, list, tuple)))


def handler_table(engines: dict[str, Engine]) -> str:
    """Which handler runs on which event, in the order Ignite runs them, with filters."""
    rows = [("engine", "event", "#", "handler", "filter")]
    for engine_name, engine in engines.items():
        for event, handlers in event_handlers(engine):
            for i, handler in enumerate(handlers, 1):
                name = event.name if isinstance(event, (Events, EventEnum, CallableEventWithFilter)) else str(event)
                rows.append((engine_name, name, str(i), _describe(handler), _filter_of(handler)))
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
