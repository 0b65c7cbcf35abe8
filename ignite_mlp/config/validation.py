"""Every option of a :class:`~ignite_mlp.config.train_config.TrainConfig` checked once, at the start.

Each check raises :class:`UserError` with one line: the flag, the rule, the value, and a fix.
The checks that need the data (its image shape) run once it is loaded (:func:`check_data`).
Importable without torch.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import TYPE_CHECKING, Any

from ignite_mlp.config.choices import (
    ACTIVATIONS,
    AUGMENTS,
    BACKENDS,
    LR_SCHEDULES,
    NORMS,
    OPTIMIZERS,
    PRECISIONS,
    PROGRESS_MODES,
    STOP_METRICS,
    WHITENINGS,
)
from ignite_mlp.config.constraints import per_process_batch
from ignite_mlp.config.recipes import RECIPES
from ignite_mlp.errors import UserError

if TYPE_CHECKING:
    from ignite_mlp.config.train_config import TrainConfig

DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"
# 4 GiB of float32 weights (and about four times that to train): far beyond an MLP on images.
MAX_PARAMETERS = 2**30


def check(ok: bool, flag: str, value: Any, rule: str, fix: str) -> None:
    """Raise ``--flag must be RULE (got VALUE); FIX`` unless ``ok``.

    >>> check(False, "--lr", -1.0, "> 0", "try 1e-3")
    Traceback (most recent call last):
    ...
    ignite_mlp.errors.UserError: --lr must be > 0 (got -1.0); try 1e-3
    """
    if not ok:
        raise UserError(f"{flag} must be {rule} (got {value!r})" + (f"; {fix}" if fix else ""))


def flag(name: str) -> str:
    """The command-line flag of a field: ``hidden_sizes`` -> ``--hidden-sizes``."""
    return "--" + name.replace("_", "-")


def check_seed(seed: int) -> None:
    """The one rule for a seed (train's, samples', a sweep's): numpy takes seeds below 2**32.

    >>> check_seed(2**32)
    Traceback (most recent call last):
    ...
    ignite_mlp.errors.UserError: --seed must be in [0, 2**32 - 1] (got 4294967296); e.g. --seed 0
    """
    check(0 <= seed < 2**32, "--seed", seed, "in [0, 2**32 - 1]", "e.g. --seed 0")


def validate(c: TrainConfig) -> None:
    """Raise :class:`UserError` naming the first impossible value of ``c`` and how to fix it."""
    _check_finite(c)
    _check_training(c)
    _check_ingredients(c)
    # The smallest model these options describe (1 input, 2 classes): refused before any data is read.
    check_model_size(1, c.hidden_sizes, 2, c.blocks, c.expansion)
    _check_controls(c)
    _check_processes(c)


def check_data(c: TrainConfig, image_shape: tuple[int, int, int]) -> None:
    """The checks that need the data's image shape ``(C, H, W)``."""
    _, height, width = image_shape
    check(
        "crop" not in c.augment or c.crop_padding < min(height, width),
        "--crop-padding",
        c.crop_padding,
        f"below the image size {height}x{width}",
        f"try --crop-padding {max(1, min(height, width) // 8)}",
    )


def parameter_count(in_features: int, hidden_sizes: list[int], classes: int, blocks: int, expansion: int) -> int:
    """The weights and biases of the MLP these sizes describe (its norm layers' few left out).

    >>> parameter_count(3072, [100], 10, 0, 4)  # 3072*100 + 100, then 100*10 + 10
    308310
    """
    count, width = 0, in_features
    for h in hidden_sizes:
        count += width * h + h
        width = h
    count += blocks * (2 * width * width * expansion + width * expansion + width)
    return count + width * classes + classes


def check_model_size(in_features: int, hidden_sizes: list[int], classes: int, blocks: int, expansion: int) -> None:
    """Refuse a model over :data:`MAX_PARAMETERS` before a byte of it is allocated, with its size.

    >>> try:
    ...     check_model_size(1, [100000000000], 2, 0, 4)
    ... except UserError as e:
    ...     for part in str(e).split(", "):
    ...         print(part)
    --hidden-sizes [100000000000] (--blocks 0
    --expansion 4) make a model of 400000000002 parameters
    1600.0 GB of float32 weights alone
    more than the 1073741824 parameters allowed; give smaller widths such as --hidden-sizes 512 256
    """
    count = parameter_count(in_features, hidden_sizes, classes, blocks, expansion)
    if count > MAX_PARAMETERS:
        raise UserError(
            f"--hidden-sizes {hidden_sizes} (--blocks {blocks}, --expansion {expansion}) make a model of {count} "
            f"parameters, {4 * count / 1e9:.1f} GB of float32 weights alone, more than the {MAX_PARAMETERS} parameters "
            "allowed; give smaller widths such as --hidden-sizes 512 256"
        )


def _check_finite(c: TrainConfig) -> None:
    # NaN fails every range check below, but infinity passes "> 0" and ">= 0".
    for f in dataclasses.fields(c):
        value = getattr(c, f.name)
        numbers = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            example = " ".join(map(str, default)) if isinstance(default, list) else default
            raise UserError(f"{flag(f.name)} must be a finite number (got {value!r}); e.g. {flag(f.name)} {example}")


def _check_training(c: TrainConfig) -> None:
    """The tutorial's options: seed, sizes, the optimiser, normalisation, precision, logging."""
    check_seed(c.seed)
    check(c.epochs >= 1, "--epochs", c.epochs, ">= 1", "pass a positive number of epochs")
    check(c.batch_size >= 1, "--batch-size", c.batch_size, ">= 1", "try 256")
    check(c.eval_batch_size >= 1, "--eval-batch-size", c.eval_batch_size, ">= 1", "try 1024")
    check(len(c.hidden_sizes) >= 1, "--hidden-sizes", c.hidden_sizes, "non-empty", "e.g. --hidden-sizes 128")
    for h in c.hidden_sizes:
        check(h >= 1, "--hidden-sizes", c.hidden_sizes, "all >= 1", "give positive widths such as 128")
    if c.lr != "auto":
        check(isinstance(c.lr, float), "--lr", c.lr, "a number or auto", "e.g. --lr 1e-3 or --lr auto")
        check(c.lr > 0, "--lr", c.lr, "> 0", "pass a positive learning rate such as 1e-3")
    check(0 <= c.momentum < 1, "--momentum", c.momentum, "in [0, 1)", "try 0.9")
    check(c.weight_decay >= 0, "--weight-decay", c.weight_decay, ">= 0", "try 1e-4")
    nesterov_fix = "Nesterov momentum needs momentum: pass --momentum 0.9, or --no-nesterov"
    check(c.momentum > 0 or not c.nesterov, "--momentum", c.momentum, "> 0 with --nesterov", nesterov_fix)
    check(len(c.mean) >= 1, "--mean", c.mean, "non-empty", "e.g. --mean 0.5")
    check(len(c.std) >= 1 and all(s > 0 for s in c.std), "--std", c.std, "all > 0", "e.g. --std 0.5")
    check(c.tb_images_every >= 0, "--tb-images-every", c.tb_images_every, ">= 0", "pass 0 for no images, or N")
    check(c.precision in PRECISIONS, "--precision", c.precision, f"one of {PRECISIONS}", "auto picks")
    check(c.progress in PROGRESS_MODES, "--progress", c.progress, f"one of {PROGRESS_MODES}", "")
    check(c.recipe in RECIPES, "--recipe", c.recipe, f"one of {tuple(RECIPES)}", "")


def _check_ingredients(c: TrainConfig) -> None:
    """The ingredients beyond the tutorial (--recipe strong and best)."""
    check(0 <= c.dropout < 1, "--dropout", c.dropout, "in [0, 1)", "try 0.2")
    check(c.norm in NORMS, "--norm", c.norm, f"one of {NORMS}", "")
    check(c.activation in ACTIVATIONS, "--activation", c.activation, f"one of {ACTIVATIONS}", "")
    check(0 <= c.label_smoothing < 1, "--label-smoothing", c.label_smoothing, "in [0, 1)", "try 0.1")
    check(c.augment in AUGMENTS, "--augment", c.augment, f"one of {AUGMENTS}", "")
    check(c.crop_padding >= 0, "--crop-padding", c.crop_padding, ">= 0", "try 4")
    check(c.normalize in ("fixed", "dataset"), "--normalize", c.normalize, "fixed or dataset", "")
    check(c.whiten in WHITENINGS, "--whiten", c.whiten, f"one of {WHITENINGS}", "")
    check(c.whiten_regularizer >= 0, "--whiten-regularizer", c.whiten_regularizer, ">= 0", "try 0.1")
    check(c.blocks >= 0, "--blocks", c.blocks, ">= 0", "0 keeps the plain stack")
    check(c.expansion >= 1, "--expansion", c.expansion, ">= 1", "try 4")
    check(c.mixup >= 0, "--mixup", c.mixup, ">= 0", "try 0.2, or 0 for none")
    check(c.cutmix >= 0, "--cutmix", c.cutmix, ">= 0", "try 1.0, or 0 for none")
    check(0 <= c.ema_momentum < 1, "--ema-momentum", c.ema_momentum, "in [0, 1)", "try 0.002, or 0")
    check(c.optimizer in OPTIMIZERS, "--optimizer", c.optimizer, f"one of {OPTIMIZERS}", "")


def _check_controls(c: TrainConfig) -> None:
    """Schedules, early stopping, the epoch's length and the overfit check."""
    check(c.lr_schedule in LR_SCHEDULES, "--lr-schedule", c.lr_schedule, f"one of {LR_SCHEDULES}", "")
    check(c.lr_step_epochs >= 0, "--lr-step-epochs", c.lr_step_epochs, ">= 0", "try 10")
    check(0 < c.lr_gamma <= 1, "--lr-gamma", c.lr_gamma, "in (0, 1]", "try 0.1")
    check(c.patience >= 0, "--patience", c.patience, ">= 0", "0 turns early stopping off")
    metric = c.early_stop_metric
    check(metric in STOP_METRICS, "--early-stop-metric", metric, f"one of {STOP_METRICS}", "")
    length_ok = c.epoch_length is None or c.epoch_length >= 1
    check(length_ok, "--epoch-length", c.epoch_length, ">= 1", "or leave it out for a full pass")
    check(c.overfit_batches >= 0, "--overfit-batches", c.overfit_batches, ">= 0", "try 2")
    split_ok = c.val_split == 0 or 0 < c.val_split < 1 or (c.val_split >= 1 and float(c.val_split).is_integer())
    check(split_ok, "--val-split", c.val_split, "a count of images or a fraction below 1", "e.g. 5000 or 0.1")


def _check_processes(c: TrainConfig) -> None:
    """The device, the process count and how processes talk."""
    device_ok = re.fullmatch(DEVICE_PATTERN, c.device) is not None
    check(device_ok, "--device", c.device, "auto, cpu, cuda or cuda:N", "e.g. --device cpu")
    check(c.nproc_per_node >= 1, "--nproc-per-node", c.nproc_per_node, ">= 1", "1 trains in this process")
    check(c.backend in BACKENDS, "--backend", c.backend, f"one of {BACKENDS}", "auto picks the right one")
    per_process_batch(c.batch_size, c.nproc_per_node)
    one_gpu = c.nproc_per_node == 1 or re.fullmatch(r"cuda:\d+", c.device) is None
    fix = "each process takes the GPU of its local rank"
    check(one_gpu, "--device", c.device, "auto, cpu or cuda with --nproc-per-node > 1", fix)
    nccl_ok = c.backend != "nccl" or c.device != "cpu"
    check(nccl_ok, "--backend", c.backend, "gloo or auto with --device cpu", "NCCL only connects GPUs")
