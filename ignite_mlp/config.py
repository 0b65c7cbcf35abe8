"""The typed run configuration: the tutorial's recipe as defaults, overridable from TOML and CLI.

Every field carries its own help text, so the command-line flags are generated from this
class (see :func:`add_config_arguments`) and never written twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ignite_mlp.augment import AUGMENTS
from ignite_mlp.errors import UserError
from ignite_mlp.model import ACTIVATIONS, NORMS
from ignite_mlp.whitening import WHITENINGS

PRECISIONS = ("fp32", "bf16")
LR_SCHEDULES = ("none", "step", "cosine", "onecycle")
STOP_METRICS = ("val_loss", "val_acc")
BACKENDS = ("auto", "gloo", "nccl")
OPTIMIZERS = ("sgd", "adamw")

# Presets: field values applied over the defaults, under any TOML key or flag the user gives.
# "strong" stays a pure MLP; each ingredient was kept because it paid on CIFAR-10 (README).
RECIPES: dict[str, dict[str, Any]] = {
    "tutorial": {},
    "strong": {
        "hidden_sizes": [2048, 1024, 512],
        "norm": "batch",
        "activation": "gelu",
        "dropout": 0.1,
        "label_smoothing": 0.1,
        "augment": "flip+crop",
        "crop_padding": 2,
        "normalize": "dataset",
        "lr": 0.05,
        "nesterov": True,
        "weight_decay": 5e-4,
        "lr_schedule": "onecycle",
        "batch_size": 512,
        "epochs": 40,
        "precision": "bf16",
    },
    # "strong" without dropout, on ZCA-whitened images, validated with the mirror image averaged
    # in, for 60 epochs: above 70% in under 15 minutes on a 2-core CPU (README, "The best recipe").
    "best": {
        "hidden_sizes": [2048, 1024, 512],
        "norm": "batch",
        "activation": "gelu",
        "dropout": 0.0,
        "label_smoothing": 0.1,
        "augment": "flip+crop",
        "crop_padding": 2,
        "whiten": "zca",
        "whiten_regularizer": 0.1,
        "tta": True,
        "lr": 0.05,
        "nesterov": True,
        "weight_decay": 5e-4,
        "lr_schedule": "onecycle",
        "batch_size": 512,
        "epochs": 60,
        "precision": "bf16",
    },
}


def _opt(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field with CLI help; lists get a fresh copy per instance."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """One training run. Defaults reproduce the tutorial (53.52% on CIFAR-10 in 50 epochs).

    >>> TrainConfig().hidden_sizes, TrainConfig().lr, TrainConfig().batch_size
    ([128], 0.001, 256)
    >>> TrainConfig(epochs=0)
    Traceback (most recent call last):
    ...
    ignite_mlp.errors.UserError: --epochs must be >= 1 (got 0); pass a positive number of epochs
    """

    # A named preset of the fields below (see RECIPES); explicit flags and TOML keys win over it.
    recipe: str = _opt(
        "tutorial", "tutorial (the default recipe) | strong (a regularised, wider MLP) | best (the most accurate)"
    )
    # Where the data comes from: a folder (CIFAR-10 pickles, downloaded there if missing,
    # or a class-folder tree with train/ and test/), or a .tar.gz of such a tree.
    data: str = _opt("./data", "data folder or .tar.gz (CIFAR-10 is downloaded here if absent)")
    # Where this run writes; None means runs/<timestamp>.
    run_dir: str | None = _opt(None, "run directory (default: runs/<timestamp>)")
    # Where decoded uint8 tensors are cached, so a second run does not decode again.
    # A run directory that already holds a run is refused unless this is set.
    overwrite: bool = _opt(False, "replace the run already in --run-dir")
    # Continue a run from its newest checkpoint ("auto": the newest run under runs/).
    resume: str | None = _opt(None, "RUN_DIR or auto: continue that run from its last checkpoint")
    cache_dir: str | None = _opt(None, "decoded-data cache (default: ~/.cache/ignite_mlp)")
    download: bool = _opt(True, "download CIFAR-10 into --data when nothing is there")

    epochs: int = _opt(50, "number of epochs")
    batch_size: int = _opt(256, "training batch size")
    # Evaluation keeps no activations for backward, so it can take far bigger batches.
    eval_batch_size: int = _opt(1024, "validation batch size (no gradients, so larger)")
    hidden_sizes: list[int] = _opt([128], "hidden layer widths, e.g. --hidden-sizes 512 256")

    lr: float = _opt(1e-3, "learning rate")
    momentum: float = _opt(0.9, "SGD momentum (AdamW: beta1)")
    weight_decay: float = _opt(1e-4, "weight decay (SGD: L2; AdamW: decoupled)")

    # Per-channel normalisation; one value applies to every channel. 0.5/0.5 maps [0,1] to [-1,1].
    mean: list[float] = _opt([0.5], "per-channel mean for normalisation (one value = all channels)")
    std: list[float] = _opt([0.5], "per-channel std for normalisation (one value = all channels)")

    # Ingredients beyond the tutorial (see --recipe strong); each off by default.
    norm: str = _opt("none", "none | batch | layer: normalisation after each hidden Linear")
    activation: str = _opt("relu", "relu | gelu")
    label_smoothing: float = _opt(0.0, "cross-entropy label smoothing in [0, 1)")
    augment: str = _opt("none", "none | flip | crop | flip+crop: on-device batch augmentation")
    crop_padding: int = _opt(4, "random crop: pad by this many pixels, then cut the original size")
    nesterov: bool = _opt(False, "SGD with Nesterov momentum")
    # "dataset": per-channel mean/std measured on the training split replace --mean/--std.
    normalize: str = _opt("fixed", "fixed (use --mean/--std) | dataset (measure them on the training set)")

    # Ingredients of --recipe best (README, "The best recipe"); each off by default.
    # ZCA whitening measured on the training split replaces --mean/--std; kept in whitening.pt.
    whiten: str = _opt("none", "none | zca: whiten the images with statistics of the training set")
    whiten_regularizer: float = _opt(0.1, "ZCA: added to every eigenvalue, as a share of their mean")
    blocks: int = _opt(0, "residual inverted-bottleneck blocks after the hidden layers, at the last width")
    expansion: int = _opt(4, "residual blocks: how much wider their inner layer is")
    # Batch mixing on the normalised batch; the loss takes the mixed labels.
    mixup: float = _opt(0.0, "MixUp: Beta(a, a) mixing of image pairs and their labels (0: off)")
    cutmix: float = _opt(
        0.0, "CutMix: paste a Beta(a, a)-sized box of another image (0: off; with --mixup, each half the batches)"
    )
    # Ignite's EMAHandler: validation and the best checkpoint use the averaged weights.
    ema_momentum: float = _opt(0.0, "EMA of the weights for validation: weight of the new weights per step (0: off)")
    tta: bool = _opt(False, "validate (and evaluate) on the mean logits of each image and its mirror image")
    optimizer: str = _opt("sgd", "sgd | adamw (decoupled weight decay)")
    decay_norms: bool = _opt(True, "weight decay on biases and norm weights too (--no-decay-norms: on weights only)")

    # Training controls, on Ignite's own EarlyStopping and parameter schedulers.
    dropout: float = _opt(0.0, "dropout probability after each hidden layer")
    lr_schedule: str = _opt("none", "none | step | cosine | onecycle (Ignite param schedulers)")
    lr_step_epochs: int = _opt(0, "step schedule: epochs between drops (0: a third of --epochs)")
    lr_gamma: float = _opt(0.1, "step schedule: factor applied at each drop")
    patience: int = _opt(0, "early stopping: epochs without improvement before stopping (0: off)")
    early_stop_metric: str = _opt("val_loss", "val_loss | val_acc: what early stopping watches")
    # None: one pass over the training set per epoch.
    epoch_length: int | None = _opt(None, "iterations per epoch (default: one pass over the training set)")
    dry_run: bool = _opt(False, "run 2 iterations of training and validation, to check a setup in seconds")
    # The tutorial's sanity check: a model that cannot memorise a few batches has a bug.
    overfit_batches: int = _opt(0, "train on N fixed batches, no shuffling or regularisation, and report")
    # User handlers, loaded by spec; saved in config.json so a resume attaches them again.
    handlers: list[str] = _opt([], "MODULE:FUNCTION or FILE.py:FUNCTION to attach (repeatable)", flag="handler")

    seed: int = _opt(0, "random seed (weights, shuffling)")
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N (auto takes CUDA when present)")
    # bf16 autocast: several times faster matrix work on CPUs and GPUs that support it.
    precision: str = _opt("fp32", "fp32 | bf16 (autocast for the forward pass)")
    # Data-parallel processes started through ignite.distributed (see ignite_mlp/distributed.py);
    # --batch-size stays the global batch, split evenly between them.
    nproc_per_node: int = _opt(1, "training processes on this machine (data-parallel; the batch is split between them)")
    backend: str = _opt("auto", "auto | gloo | nccl: how processes talk (auto: nccl on CUDA, gloo on CPU)")

    progress: bool = _opt(True, "show a progress bar")
    tensorboard: bool = _opt(True, "write TensorBoard event files in the run directory")
    # Off by default: histograms of every layer cost milliseconds per epoch and fill the logs.
    tb_histograms: bool = _opt(False, "also log weight and gradient histograms and norms per layer to TensorBoard")
    # Drawing and encoding the images costs ~20 ms; every 5th epoch keeps that off most epochs.
    tb_images_every: int = _opt(5, "log a confusion matrix and misclassified images every N epochs (0: never)")

    def __post_init__(self) -> None:
        self._coerce_types()
        self.validate()

    def _coerce_types(self) -> None:
        # TOML and Python callers may pass ints for floats or tuples for lists; accept what
        # is unambiguous, refuse the rest with the field's flag name.
        hints = typing.get_type_hints(TrainConfig)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            setattr(self, f.name, _coerce(f.name, value, hints[f.name]))

    def validate(self) -> None:
        """Raise :class:`UserError` naming the first impossible value and how to fix it."""
        _check(self.epochs >= 1, "--epochs", self.epochs, ">= 1", "pass a positive number of epochs")
        _check(self.batch_size >= 1, "--batch-size", self.batch_size, ">= 1", "try 256")
        _check(self.eval_batch_size >= 1, "--eval-batch-size", self.eval_batch_size, ">= 1", "try 1024")
        _check(len(self.hidden_sizes) >= 1, "--hidden-sizes", self.hidden_sizes, "non-empty", "e.g. --hidden-sizes 128")
        for h in self.hidden_sizes:
            _check(h >= 1, "--hidden-sizes", self.hidden_sizes, "all >= 1", "give positive widths such as 128")
        _check(self.lr > 0, "--lr", self.lr, "> 0", "pass a positive learning rate such as 1e-3")
        _check(0 <= self.momentum < 1, "--momentum", self.momentum, "in [0, 1)", "try 0.9")
        _check(self.weight_decay >= 0, "--weight-decay", self.weight_decay, ">= 0", "try 1e-4")
        _check(len(self.mean) >= 1, "--mean", self.mean, "non-empty", "e.g. --mean 0.5")
        _check(len(self.std) >= 1 and all(s > 0 for s in self.std), "--std", self.std, "all > 0", "e.g. --std 0.5")
        _check(
            self.tb_images_every >= 0, "--tb-images-every", self.tb_images_every, ">= 0", "pass 0 for no images, or N"
        )
        _check(self.precision in PRECISIONS, "--precision", self.precision, f"one of {PRECISIONS}", "use fp32 or bf16")
        _check(0 <= self.dropout < 1, "--dropout", self.dropout, "in [0, 1)", "try 0.2")
        _check(self.norm in NORMS, "--norm", self.norm, f"one of {NORMS}", "")
        _check(self.activation in ACTIVATIONS, "--activation", self.activation, f"one of {ACTIVATIONS}", "")
        _check(0 <= self.label_smoothing < 1, "--label-smoothing", self.label_smoothing, "in [0, 1)", "try 0.1")
        _check(self.augment in AUGMENTS, "--augment", self.augment, f"one of {AUGMENTS}", "")
        _check(self.crop_padding >= 0, "--crop-padding", self.crop_padding, ">= 0", "try 4")
        _check(self.normalize in ("fixed", "dataset"), "--normalize", self.normalize, "fixed or dataset", "")
        self._validate_best()
        _check(self.recipe in RECIPES, "--recipe", self.recipe, f"one of {tuple(RECIPES)}", "")
        _check(self.lr_schedule in LR_SCHEDULES, "--lr-schedule", self.lr_schedule, f"one of {LR_SCHEDULES}", "")
        _check(self.lr_step_epochs >= 0, "--lr-step-epochs", self.lr_step_epochs, ">= 0", "try 10")
        _check(0 < self.lr_gamma <= 1, "--lr-gamma", self.lr_gamma, "in (0, 1]", "try 0.1")
        _check(self.patience >= 0, "--patience", self.patience, ">= 0", "0 turns early stopping off")
        _check(
            self.early_stop_metric in STOP_METRICS,
            "--early-stop-metric",
            self.early_stop_metric,
            f"one of {STOP_METRICS}",
            "",
        )
        _check(
            self.epoch_length is None or self.epoch_length >= 1,
            "--epoch-length",
            self.epoch_length,
            ">= 1",
            "or leave it out for a full pass",
        )
        _check(self.overfit_batches >= 0, "--overfit-batches", self.overfit_batches, ">= 0", "try 2")
        _check(
            re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
            "--device",
            self.device,
            "auto, cpu, cuda or cuda:N",
            "e.g. --device cpu",
        )
        _check(self.nproc_per_node >= 1, "--nproc-per-node", self.nproc_per_node, ">= 1", "1 trains in this process")
        _check(self.backend in BACKENDS, "--backend", self.backend, f"one of {BACKENDS}", "auto picks the right one")
        _check(
            self.batch_size % self.nproc_per_node == 0,
            "--batch-size",
            self.batch_size,
            f"a multiple of --nproc-per-node {self.nproc_per_node}",
            "each process takes an equal share of the global batch",
        )
        _check(
            self.nproc_per_node == 1 or re.fullmatch(r"cuda:\d+", self.device) is None,
            "--device",
            self.device,
            "auto, cpu or cuda with --nproc-per-node > 1",
            "each process takes the GPU of its local rank",
        )
        _check(
            self.backend != "nccl" or self.device != "cpu",
            "--backend",
            self.backend,
            "gloo or auto with --device cpu",
            "NCCL only connects GPUs",
        )

    def _validate_best(self) -> None:
        """The checks of --recipe best's ingredients."""
        _check(self.whiten in WHITENINGS, "--whiten", self.whiten, f"one of {WHITENINGS}", "")
        _check(self.whiten_regularizer >= 0, "--whiten-regularizer", self.whiten_regularizer, ">= 0", "try 0.1")
        _check(self.blocks >= 0, "--blocks", self.blocks, ">= 0", "0 keeps the plain stack")
        _check(self.expansion >= 1, "--expansion", self.expansion, ">= 1", "try 4")
        _check(self.mixup >= 0, "--mixup", self.mixup, ">= 0", "try 0.2, or 0 for none")
        _check(self.cutmix >= 0, "--cutmix", self.cutmix, ">= 0", "try 1.0, or 0 for none")
        _check(0 <= self.ema_momentum < 1, "--ema-momentum", self.ema_momentum, "in [0, 1)", "try 0.002, or 0")
        _check(self.optimizer in OPTIMIZERS, "--optimizer", self.optimizer, f"one of {OPTIMIZERS}", "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_recipe(cls, recipe: str, **overrides: Any) -> TrainConfig:
        """A named preset (see ``RECIPES``) with ``overrides`` on top, as ``--recipe`` does.

        >>> TrainConfig.from_recipe("strong", epochs=5).norm, TrainConfig.from_recipe("strong", epochs=5).epochs
        ('batch', 5)
        """
        if recipe not in RECIPES:
            raise UserError(f"--recipe must be one of {tuple(RECIPES)} (got {recipe!r})")
        return cls(**{**RECIPES[recipe], **overrides, "recipe": recipe})

    @classmethod
    def from_run(cls, run_dir: str | Path, **overrides: Any) -> TrainConfig:
        """The config a run directory was trained with, set up to resume it; ``overrides``
        change fields (e.g. ``epochs=80`` to train further)."""
        path = Path(run_dir) / "config.json"
        try:
            saved = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"--resume {run_dir}: cannot read {path} ({e}); give a run directory") from None
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in saved.items() if k in known}
        values.update(overrides)
        values.update(run_dir=str(run_dir), resume=str(run_dir), overwrite=False)
        return cls(**values)


def _check(ok: bool, flag: str, value: Any, rule: str, fix: str) -> None:
    if not ok:
        raise UserError(f"{flag} must be {rule} (got {value!r})" + (f"; {fix}" if fix else ""))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Convert ``value`` to the field type ``hint`` or raise a UserError naming the flag."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value is None and type(None) in args:
        return None
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(name, v, args[0]) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, (str, Path)):
            return str(value)
    raise UserError(f"{_flag(name)} must be {hint.__name__} (got {value!r}); fix the value in the flag or config file")


def resolve_device(spec: str) -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a device, or say clearly why CUDA cannot be had.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: CUDA is not available on this machine; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(
                f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here; "
                f"use cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    return device


# ---------------------------------------------------------------- file and CLI overrides


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a ``run.toml`` whose keys are TrainConfig fields (``-`` or ``_`` both accepted)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config {path}: no such file; give the path of a TOML file")
    try:
        raw = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"--config {path}: not valid TOML ({e}); fix the file") from None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k.replace("-", "_"): v for k, v in raw.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"--config {path}: unknown key(s) {unknown}; valid keys are the train flags, e.g. lr, epochs")
    return values


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per TrainConfig field. Defaults are SUPPRESSed so we can tell what was set."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        base = args[0] if args and typing.get_origin(hint) is not list else hint
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": f.name}
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = (
            f.metadata["help"] if "default" in f.metadata["help"] else f"{f.metadata['help']} (default: {default})"
        )
        if base is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, help=help_text, **kwargs)
            continue
        if "flag" in f.metadata:  # a repeatable flag whose name is singular: --handler A --handler B
            kwargs.update(action="append", metavar="SPEC")
            parser.add_argument("--" + f.metadata["flag"], help=help_text, **kwargs)
            continue
        if typing.get_origin(hint) is list:
            kwargs.update(nargs="+", type=_cli_type(typing.get_args(hint)[0], f.name))
        else:
            kwargs.update(type=_cli_type(base, f.name))
        parser.add_argument(_flag(f.name), help=help_text, metavar=f.name.upper(), **kwargs)


def _cli_type(kind: type, name: str) -> Any:
    def convert(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{_flag(name)} expects {kind.__name__}, got {text!r}") from None

    convert.__name__ = kind.__name__
    return convert


def config_from_sources(cli_values: dict[str, Any], toml_path: str | None = None) -> TrainConfig:
    """Defaults (or, with ``resume``, the saved config of that run directory), then the TOML
    file, then the command line: the later one wins."""
    values: dict[str, Any] = load_toml(toml_path) if toml_path else {}
    values.update(cli_values)
    if values.get("resume"):  # the run's saved config already holds its recipe's values
        run_dir = values.pop("resume")
        values.pop("run_dir", None)
        return TrainConfig.from_run(run_dir, **values)
    return TrainConfig.from_recipe(values.pop("recipe", "tutorial"), **values)
