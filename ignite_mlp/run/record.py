"""A run's configuration file read back: :class:`RunRecord`, checked field by field.

A damaged or tampered file is refused with one line (a :class:`UserError`) naming the file and
the field: the configuration is checked against :class:`TrainConfig`'s own types and ranges, and
every other record (classes, image shape, handlers, the data's fingerprint and counts, the
precision) against what training writes. :class:`~ignite_mlp.run.rundir.RunDir` names the file.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ignite_mlp.config.choices import PRECISIONS
from ignite_mlp.config.train_config import TrainConfig
from ignite_mlp.data.limits import check_pixels
from ignite_mlp.errors import UserError


@dataclass
class RunRecord:
    """A run's configuration file, checked: the config it trained with, the class names in label
    order and the image shape ``(C, H, W)`` (None for runs older than those records)."""

    config: TrainConfig
    classes: list[str] | None
    image_shape: tuple[int, int, int] | None
    values: dict[str, Any]  # the whole file, as read (its extra keys: resolved_device, world_size)


def read_record(path: Path, run_path: Path) -> RunRecord:
    """The configuration file ``path`` of the run in ``run_path``, checked; anything unexpected is
    a one-line UserError."""
    if not path.is_file():
        raise UserError(f"{run_path}: no run there ({path.name} missing); give a run directory")
    try:
        values = json.loads(path.read_bytes())
    # (UnicodeDecodeError and JSONDecodeError are ValueErrors; RecursionError: arrays nested too deep)
    except (OSError, ValueError, RecursionError) as e:
        reason = "nested too deep" if isinstance(e, RecursionError) else e
        raise UserError(f"{path}: unreadable ({reason}); restore it from a copy or train again") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: holds a {type(values).__name__}, not a run's configuration; restore it")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    fields = {k: v for k, v in values.items() if k in known and k != "resume"}
    try:
        config = TrainConfig(**fields)
    except UserError as e:
        raise UserError(
            f"{path}: {e}".replace("fix the value in the flag or config file", "restore the file")
        ) from None
    _check_run_records(values, path)
    shape = values.get("image_shape")
    return RunRecord(
        config=config,
        classes=values.get("classes"),
        image_shape=tuple(shape) if shape else None,  # type: ignore[arg-type]
        values=values,
    )


def _check_run_records(values: dict[str, Any], path: Path) -> None:
    """Refuse the records beside the configuration that are not what training writes."""
    classes = values.get("classes")
    if classes is not None:
        distinct = isinstance(classes, list) and all(isinstance(c, str) for c in classes)
        if not distinct or len(set(classes)) != len(classes) or len(classes) < 1:
            raise UserError(f"{path}: classes must be a list of distinct names (got {classes!r}); restore the file")
    shape = values.get("image_shape")
    if shape is not None:
        ints = isinstance(shape, list) and all(type(v) is int and v > 0 for v in shape)
        if not ints or len(shape) != 3:
            raise UserError(f"{path}: image_shape must be three positive ints (got {shape!r}); restore the file")
        check_pixels(shape[2], shape[1], f"{path}: image_shape")  # no model sized for a bomb's pixels
    handlers = values.get("handlers", [])
    if not (isinstance(handlers, list) and all(isinstance(h, str) for h in handlers)):
        raise UserError(f"{path}: handlers must be a list of specs (got {handlers!r}); restore the file")
    fingerprint = values.get("data_fingerprint")
    if fingerprint is not None and not (isinstance(fingerprint, str) and re.fullmatch(r"[0-9a-f]{64}", fingerprint)):
        raise UserError(f"{path}: data_fingerprint must be 64 hex digits (got {repr(fingerprint)[:40]}); restore it")
    counts = values.get("data_counts")
    if counts is not None and not (
        isinstance(counts, dict) and all(type(counts.get(k)) is int and counts[k] >= 0 for k in ("train", "test"))
    ):
        raise UserError(f"{path}: data_counts must hold train and test counts (got {repr(counts)[:40]}); restore it")
    precision = values.get("resolved_precision")  # (runs that recorded "precision": "auto" kept it here)
    if precision is not None and precision not in PRECISIONS:
        raise UserError(f"{path}: resolved_precision must be one of {PRECISIONS} (got {precision!r}); restore it")
