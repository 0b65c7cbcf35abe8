"""Reading a run's tensor files safely: checkpoints and the whitening, never code run.

Every file is loaded with ``weights_only=True`` (a TorchScript program, which holds code, is
refused before that), and every failure is one line (a :class:`UserError`) that never passes on
torch's advice to retry with ``weights_only=False``. What is loaded must be plain dense tensors,
finite, of the shapes the run's model or images imply.
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ignite_mlp.data.whitening import Whitening
from ignite_mlp.errors import UserError


def safe_load(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``, turning every failure into a clear UserError.

    A message never passes on torch's own advice to retry with ``weights_only=False``: that
    would run whatever code the file holds."""
    path = Path(path)
    if _is_torchscript(path):
        raise UserError(
            f"{path}: a TorchScript program, not a checkpoint, refused (it holds code); give a run's checkpoint"
        )
    try:
        state = _load_quietly(path)
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
        reason = (
            "it holds objects other than tensors"
            if "weights_only" in str(e)
            else (str(e).splitlines() or [type(e).__name__])[0]
        )
        raise UserError(
            f"{path}: corrupt or truncated checkpoint ({reason}); delete it or resume from another run"
        ) from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: not an ignite_mlp checkpoint (holds a {type(state).__name__})")
    return state


def _load_quietly(path: Path) -> Any:
    """``torch.load(weights_only=True)`` without torch's warnings (one about checking a sparse
    tensor, say): the command's answer is its one line, and a sparse tensor is refused anyway."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


def _is_torchscript(path: Path) -> bool:
    """Is ``path`` a TorchScript archive (``torch.jit.save``): a zip holding a ``code/`` folder?"""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/")[1:2] == ["code"] for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def evaluation_weights(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """The state dict of the weights a run validated (and that evaluate, predict and export use),
    from a loaded checkpoint: a best checkpoint holds just them (the moving average, with
    --ema-momentum); a last one a dict with "model" and, with --ema-momentum, "ema_model"."""
    if "ema_model" in state:
        return state["ema_model"]
    return state.get("model", state)


def check_model_shapes(
    model: nn.Module,
    saved: Any,
    source: Path,
    fix: str = "resume with the run's own --hidden-sizes (drop the flag) or start a new run",
) -> None:
    """Refuse saved weights that are not plain dense tensors, and name every parameter whose
    shape differs between ``model`` and the saved state dict, and ``fix``."""
    if not isinstance(saved, Mapping):
        raise UserError(f"{source}: holds a {type(saved).__name__} where the weights go; it is damaged: {fix}")
    for key, value in saved.items():
        if not _plain_tensor(value):
            raise UserError(
                f"{source}: {key} holds {_described(value)}; the checkpoint is damaged "
                "or not ignite_mlp's: use another checkpoint"
            )
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


def refuse_non_finite(tensors: Mapping[str, torch.Tensor], source: Path, fix: str) -> None:
    """Refuse weights or a transform holding NaN or infinity: every output would be NaN, not a result."""
    for key, value in tensors.items():
        if value.dtype.is_floating_point and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise UserError(f"{source}: {key} holds {bad} non-finite value(s) (NaN or inf); the file is damaged: {fix}")


def _described(value: Any) -> str:
    """What a value that is not a plain tensor is, for a message.

    >>> _described("weights")
    'a str where a tensor goes'
    """
    if isinstance(value, torch.Tensor):
        kind = f"{str(value.layout).removeprefix('torch.')} {str(value.dtype).removeprefix('torch.')}"
        return f"a {kind} tensor, not a dense tensor of numbers"
    return f"a {type(value).__name__} where a tensor goes"


def _plain_tensor(value: Any) -> bool:
    """A dense tensor of numbers (not sparse, quantized or a subclass that could act otherwise)."""
    return (
        type(value) in (torch.Tensor, nn.Parameter)
        and value.layout == torch.strided
        and not value.is_quantized
        and (value.dtype.is_floating_point or value.dtype in (torch.int64, torch.int32, torch.uint8, torch.bool))
    )


# ------------------------------------------------------------------------------- whitening


def read_whitening_file(path: Path, features: int | None = None) -> Whitening:
    """The whitening a run trained with, read from ``path`` and checked: plain finite tensors that
    fit each other and, given ``features`` (the values of one image, C * H * W), the images."""
    try:
        state = _load_quietly(path)
        mean, matrix = state["mean"], state["matrix"]
        if not (_plain_tensor(mean) and _plain_tensor(matrix)):
            raise TypeError("not tensors")
    except FileNotFoundError:
        raise UserError(
            f"{path}: missing; a run with --whiten needs the whitening it trained with "
            "(a run trained without whitening cannot be resumed or evaluated with it)"
        ) from None
    except Exception as e:  # a corrupt or foreign file: say which, never unpickle it
        raise UserError(
            f"{path}: not a whitening file ({type(e).__name__}); training writes it: restore it or train again"
        ) from None
    d = mean.numel()
    if mean.ndim != 1 or tuple(matrix.shape) != (d, d):
        raise UserError(f"{path}: mean {tuple(mean.shape)} and matrix {tuple(matrix.shape)} differ; restore it")
    if features is not None and d != features:
        raise UserError(f"{path}: measured on images of {d} values, the run's have {features}; restore it")
    refuse_non_finite({"mean": mean, "matrix": matrix}, path, "restore it or train again")
    return Whitening(mean.float(), matrix.float())


def whitening_bytes(whitening: Whitening) -> bytes:
    """What :func:`read_whitening_file` reads back: the transform's tensors, ``torch.save``'d."""
    buffer = io.BytesIO()
    torch.save(whitening.state_dict(), buffer)
    return buffer.getvalue()
