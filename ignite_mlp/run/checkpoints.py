"""Finding, safely loading and restoring checkpoints, so a run that dies loses almost nothing.

Every checkpoint is read with ``torch.load(..., weights_only=True)``: a file that would need
arbitrary unpickling (and could run code while loading) is refused, never executed.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from ignite.metrics import Metric
from torch import nn

from ignite_mlp.errors import UserError
from ignite_mlp.handlers.ignite_compat import saved_filenames

if TYPE_CHECKING:
    from ignite_mlp.data import Dataset

# Written at each epoch's end (last_*) and when Ctrl-C stops a run mid-epoch (interrupted_*).
_RESUMABLE = re.compile(r"^(last_checkpoint|interrupted_checkpoint)_(\d+)\.pt$")
# Written by the best-model checkpoint (see ignite_mlp.handlers.builtin.attach_checkpoints).
_BEST = re.compile(r"^best_model_(\d+)_val_acc=(-?\d+(?:\.\d+)?)\.pt$")


def safe_load(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``, turning every failure into a clear UserError."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: no such checkpoint file") from None
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found is None:  # not a forbidden object: the bytes are simply not a valid checkpoint
            raise UserError(f"{path}: corrupt or truncated checkpoint; delete it or resume from another run") from None
        raise UserError(
            f"{path}: refused to load: it needs arbitrary unpickling ({found.group(1)}), which can run code; "
            "only load checkpoints written by ignite_mlp or another source you trust"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise UserError(
            f"{path}: corrupt or truncated checkpoint ({e}); delete it or resume from another run"
        ) from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: not an ignite_mlp checkpoint (holds a {type(state).__name__})")
    return state


def validated_weights(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """The weights a checkpoint's run validated: a best checkpoint holds just them (the moving
    average, with --ema-momentum); a last one a dict with "model" and, with --ema-momentum,
    "ema_model", the weights that were validated."""
    if "ema_model" in state:
        return state["ema_model"]
    return state.get("model", state)


def find_run(spec: str, runs_root: str | Path = "runs") -> Path:
    """``auto`` means the newest run under ``runs_root``; anything else is a run directory."""
    if spec == "auto":
        root = Path(runs_root)
        runs = [p for p in root.glob("*/config.json") if latest_checkpoint(p.parent, required=False)]
        if not runs:
            raise UserError(f"--resume auto: no resumable run under {root}/; give the run directory instead")
        return max(runs, key=lambda p: p.stat().st_mtime).parent
    run_dir = Path(spec)
    if not (run_dir / "config.json").is_file():
        raise UserError(f"--resume {spec}: no run there (config.json missing); give a run directory or auto")
    return run_dir


def latest_checkpoint(run_dir: str | Path, required: bool = True) -> Path | None:
    """The resumable checkpoint with the highest iteration in ``run_dir/checkpoints``."""
    found = []
    for path in (Path(run_dir) / "checkpoints").glob("*.pt"):
        match = _RESUMABLE.match(path.name)
        if match:
            found.append((int(match.group(2)), match.group(1) == "interrupted_checkpoint", path))
    if not found:
        if required:
            raise UserError(f"--resume {run_dir}: no checkpoint in {run_dir}/checkpoints; start a new run instead")
        return None
    return max(found)[2]


def best_checkpoint(run_dir: str | Path) -> Path | None:
    """The best-model file in ``run_dir/checkpoints``: the highest recorded score, and of equal
    scores the earliest epoch (what Ignite's ``Checkpoint`` keeps), never the names' sort order
    (``best_model_9_...`` sorts after ``best_model_10_...``). Normally there is one file; two
    are left when a run was killed between writing a new best and deleting the old one.

    >>> import tempfile, pathlib
    >>> run = pathlib.Path(tempfile.mkdtemp()); (run / "checkpoints").mkdir()
    >>> for name in ("best_model_9_val_acc=50.0000.pt", "best_model_10_val_acc=61.2500.pt"):
    ...     _ = (run / "checkpoints" / name).write_bytes(b"")
    >>> best_checkpoint(run).name
    'best_model_10_val_acc=61.2500.pt'
    """
    found = []
    for path in (Path(run_dir) / "checkpoints").glob("best_*.pt"):
        match = _BEST.match(path.name)
        if match:
            found.append((float(match.group(2)), -int(match.group(1)), path))
    return max(found)[2] if found else None


def check_model_shapes(
    model: nn.Module,
    saved: Mapping[str, torch.Tensor],
    source: Path,
    fix: str = "resume with the run's own --hidden-sizes (drop the flag) or start a new run",
) -> None:
    """Name every parameter whose shape differs between ``model`` and a saved state dict, and ``fix``."""
    own = model.state_dict()
    problems = [
        f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in saved and tuple(saved[k].shape) != tuple(v.shape)
    ]
    problems += [f"{k}: missing from checkpoint" for k in own if k not in saved]
    problems += [f"{k}: not in model" for k in saved if k not in own]
    if problems:
        raise UserError(
            f"{source}: the checkpoint's architecture differs from this run's ({'; '.join(problems)}); {fix}"
        )


# ------------------------------------------------------------- which data a run's checkpoints fit


def data_record(dataset: Dataset) -> dict[str, Any]:
    """What a run records of its data in ``config.json``: the class names in label order and
    the image shape ``[C, H, W]``. A checkpoint's outputs mean these classes, its inputs these
    pixels; other data of the same counts would be scored against the wrong labels."""
    return {"classes": list(dataset.classes), "image_shape": list(dataset.image_shape)}


def check_same_data(record: Mapping[str, Any], dataset: Dataset, run_dir: Path, data: str) -> None:
    """Refuse ``dataset`` (read from ``data``) when its classes or image shape differ from the
    ``record`` of the run in ``run_dir`` (see :func:`data_record`; an older run without one
    is not checked).

    >>> from types import SimpleNamespace as Data
    >>> record = {"classes": ["ant", "bee"], "image_shape": [3, 8, 8]}
    >>> check_same_data(record, Data(classes=["bee", "ant"], image_shape=(3, 8, 8)), Path("run"), "d")
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ignite_mlp.errors.UserError: d: its classes are the run's in another order (['bee', 'ant'], the run: ...
    """
    saved = record.get("classes")
    if saved is not None and list(saved) != list(dataset.classes):
        raise UserError(
            f"{data}: {_class_difference(list(saved), list(dataset.classes))}; labels would be mixed up: "
            f"use data with the class folders of {run_dir} (see its config.json)"
        )
    shape = record.get("image_shape")
    if shape is not None and list(shape) != list(dataset.image_shape):
        raise UserError(
            f"{data}: its images are {'x'.join(map(str, dataset.image_shape))} but {run_dir} was trained on "
            f"{'x'.join(map(str, shape))} images; use data of that shape"
        )


def _class_difference(saved: list[str], found: list[str], show: int = 5) -> str:
    """How the data's class names differ from the run's, briefly."""

    def names(items: list[str]) -> str:
        return repr(items[:show])[:-1] + (", ...]" if len(items) > show else "]")

    if sorted(saved) == sorted(found):
        return f"its classes are the run's in another order ({names(found)}, the run: {names(saved)})"
    missing = [c for c in saved if c not in found]
    extra = [c for c in found if c not in saved]
    return (
        f"its {len(found)} classes are not the run's {len(saved)} "
        f"(only in the run: {names(missing)}; only in the data: {names(extra)})"
    )


class RandomState:
    """Torch's random generators as a checkpointable object (dropout continues identically).

    In a multi-process run each rank draws its own dropout masks: every rank's generators are
    gathered (Ignite's ``Checkpoint`` asks every rank for its state, and rank 0 saves it) under
    ``"ranks"`` and ``"cuda_ranks"``, and on resume each rank takes its own back, as long as
    the number of processes is the same.
    """

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"cpu": torch.get_rng_state()}
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        if cuda:
            state["cuda"] = torch.cuda.get_rng_state_all()
        if idist.get_world_size() > 1:
            state["ranks"] = _gather_rows(torch.get_rng_state())
            if cuda:
                state["cuda_ranks"] = _gather_rows(torch.cuda.get_rng_state())
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        rank, size = idist.get_rank(), idist.get_world_size()
        if "ranks" in state and len(state["ranks"]) == size:
            torch.set_rng_state(state["ranks"][rank].clone())
        if "cuda_ranks" in state and len(state["cuda_ranks"]) == size and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda_ranks"][rank].clone())


def _gather_rows(own: torch.Tensor) -> torch.Tensor:
    """Every rank's ``own`` (a 1-D tensor of one length), as the rows of a CPU tensor; a collective."""
    # Ignite moves the tensor to the backend's device (a GPU for NCCL) and back.
    return idist.all_gather(own.unsqueeze(0)).cpu()  # type: ignore[union-attr]


class EpochMetricsState:
    """The trainer's running epoch metrics, so a run stopped mid-epoch resumes them exactly.

    Ignite resets metrics when an epoch starts; restoring must therefore happen just after
    that reset, once, which :meth:`load_state_dict` arranges.
    """

    def __init__(self, trainer: Engine, metrics: Mapping[str, Metric]) -> None:
        self.trainer = trainer
        self.metrics = dict(metrics)

    def state_dict(self) -> dict[str, Any]:
        return {name: metric.state_dict() for name, metric in self.metrics.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        trainer_state = self.trainer.state  # loaded first: see the order in run.py
        if trainer_state.iteration % trainer_state.epoch_length == 0:
            return  # saved at an epoch's end: the next epoch starts its metrics afresh

        # Ignite keeps one metric state per rank, and a mid-epoch resume needs each rank's own:
        # Resume.check has refused a different process count before anything was restored.

        def restore(_: Engine) -> None:
            for name, metric in self.metrics.items():
                # Checkpoints load on the CPU; the metric accumulates on its own device.
                values = {k: v.to(metric._device) if torch.is_tensor(v) else v for k, v in state[name].items()}
                metric.load_state_dict(values)

        # Attached after the metrics' own EPOCH_STARTED reset, so this runs after it.
        self.trainer.add_event_handler(Events.EPOCH_STARTED(once=self.trainer.state.epoch + 1), restore)


def restore(objects: Mapping[str, Any], state: Mapping[str, Any]) -> None:
    """Load every object of a checkpoint (Ignite's ``Checkpoint.load_objects``); what the
    checkpoint must hold is checked before, by :meth:`ignite_mlp.run.resume.Resume.check`."""
    Checkpoint.load_objects(to_load=dict(objects), checkpoint=dict(state))


def remove_orphans(best: Checkpoint, dirname: Path, prefix: str = "best_") -> None:
    """Delete best-model files the restored tracker does not know (written after the checkpoint).

    Only while every file the tracker knows is on disk: otherwise (a run killed mid-update by
    an older version, or a file deleted by hand) an unknown file may be the only best model
    left, and it stays.
    """
    known = set(saved_filenames(best))
    if not all((dirname / name).is_file() for name in known):
        return
    for path in dirname.glob(f"{prefix}*.pt"):
        if path.name not in known:
            path.unlink()
