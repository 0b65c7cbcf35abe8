"""Rules that several layers enforce, each written once: the CUDA check, the batch split, NaN.

Importable without torch (torch is imported where a rule needs it), so the config can use them.
"""

from __future__ import annotations

from typing import Any

from ignite_mlp.errors import UserError


def require_cuda(flag: str, gpus: int = 1, fix: str = "use --device cpu or auto") -> int:
    """Raise :class:`UserError` unless this machine has at least ``gpus`` CUDA devices; return their count.

    ``flag`` names what asked for CUDA (``"--device cuda:1"``), so the message says what to change.
    """
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise UserError(f"{flag}: CUDA is not available on this machine; {fix}")
    if count < gpus:
        raise UserError(f"{flag}: only {count} CUDA device(s) here; {fix}")
    return count


def per_process_batch(batch_size: int, processes: int, source: str = "--nproc-per-node") -> int:
    """Each process's share of the global batch; it must split evenly.

    >>> per_process_batch(256, 2)
    128
    >>> per_process_batch(256, 3)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ignite_mlp.errors.UserError: --batch-size must be a multiple of --nproc-per-node 3 (got 256): ... 255 or 258
    """
    if processes < 1:
        raise UserError(f"{source} must be >= 1 (got {processes})")
    if batch_size % processes:
        lower, upper = batch_size - batch_size % processes, batch_size + processes - batch_size % processes
        passes = f"{lower} or {upper}" if lower else str(upper)
        raise UserError(
            f"--batch-size must be a multiple of {source} {processes} (got {batch_size}): it does not split "
            f"evenly over {processes} processes; pass --batch-size {passes}"
        )
    return batch_size // processes


def loss_is_nan(output: Any) -> bool:
    """True when a training step's output (``{"loss": tensor, ...}``) holds a NaN or infinite loss.

    >>> import torch
    >>> loss_is_nan({"loss": torch.tensor(float("nan"))}), loss_is_nan({"loss": torch.tensor(0.5)}), loss_is_nan(None)
    (True, False, False)
    """
    import torch

    return bool(output) and not bool(torch.isfinite(output["loss"]).all())
