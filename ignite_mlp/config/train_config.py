"""The typed run configuration: the tutorial's recipe as defaults, overridable from TOML and CLI.

Every field carries its own help text, so the command-line flags are generated from this
class (see :func:`add_config_arguments`) and never written twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import tomllib
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ignite_mlp.config.constraints import require_cuda
from ignite_mlp.config.recipes import RECIPES
from ignite_mlp.config.validation import DEVICE_PATTERN, check_data, validate
from ignite_mlp.config.validation import check as _check
from ignite_mlp.config.validation import flag as _flag
from ignite_mlp.errors import UserError

if TYPE_CHECKING:
    import torch


def _opt(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field with CLI help; lists get a fresh copy per instance."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """One training run. Defaults are the tutorial's recipe (it reports 53.52% on CIFAR-10 in 50
    epochs; on the JPEG pack this package measured 51.46%, docs/recipes.md).

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

    # "auto": Ignite's learning-rate finder runs first and its suggestion is used (and saved).
    lr: float | str = _opt(
        1e-3, "learning rate, or auto: run the learning-rate finder first and train with its suggestion"
    )
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

    # Ingredients of --recipe best (docs/recipes.md); each off by default.
    # ZCA whitening measured on the training split replaces --mean/--std; kept with the run.
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
    # The tutorial's rule: choose on validation data, see the test split once. 0: validate on the
    # test split, as the tutorial's own code does.
    val_split: float = _opt(
        0.0,
        "hold out N training images (or a fraction below 1), stratified by class and fixed by --seed, "
        "for validation; the test split is then evaluated once, with the best weights, at the end (0: off)",
    )
    # None: one pass over the training set per epoch.
    epoch_length: int | None = _opt(None, "iterations per epoch (default: one pass over the training set)")
    dry_run: bool = _opt(False, "run 2 iterations of training and validation, to check a setup in seconds")
    # The tutorial's sanity check: a model that cannot memorise a few batches has a bug.
    overfit_batches: int = _opt(0, "train on N fixed batches, no shuffling or regularisation, and report")
    # User handlers, loaded by spec; recorded with the run, attached on resume only when named again.
    handlers: list[str] = _opt([], "MODULE:FUNCTION or FILE.py:FUNCTION to attach (repeatable)", flag="handler")

    seed: int = _opt(0, "random seed (weights, shuffling)")
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N (auto takes CUDA when present)")
    # bf16 autocast: several times faster matrix work where the hardware computes bf16 natively,
    # several times slower where it does not; "auto" measures (see ignite_mlp/engine/precision.py).
    precision: str = _opt(
        "auto", "auto | fp32 | bf16: bf16 autocast for the forward pass (auto: where native and measured faster)"
    )
    # Data-parallel processes started through ignite.distributed (see ignite_mlp/distributed/launcher.py);
    # --batch-size stays the global batch, split evenly between them.
    nproc_per_node: int = _opt(1, "training processes on this machine (data-parallel; the batch is split between them)")
    backend: str = _opt("auto", "auto | gloo | nccl: how processes talk (auto: nccl on CUDA, gloo on CPU)")

    # A redrawn bar in a log file is a line per redraw: "auto" draws it only on a terminal.
    progress: str = _opt(
        "auto",
        "auto | on | off: Ignite's progress bar (auto: only when stderr is a terminal; "
        "otherwise epoch lines only); --no-progress is off",
        switch=("on", "off"),
    )
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
            if "switch" in f.metadata and isinstance(value, bool):  # a former on/off flag: true / false
                value = f.metadata["switch"][0 if value else 1]
            setattr(self, f.name, _coerce(f.name, value, hints[f.name]))

    def validate(self) -> None:
        """Raise :class:`UserError` naming the first impossible value and how to fix it."""
        validate(self)

    def check_data(self, image_shape: tuple[int, int, int]) -> None:
        """The checks that need the data's image shape ``(C, H, W)``, made once it is loaded.

        >>> TrainConfig(augment="crop", crop_padding=8).check_data((3, 8, 8))
        Traceback (most recent call last):
        ...
        ignite_mlp.errors.UserError: --crop-padding must be below the image size 8x8 (got 8); try --crop-padding 1
        """
        check_data(self, image_shape)

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


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Convert ``value`` to the field type ``hint`` or raise a UserError naming the flag."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value is None and type(None) in args:
        return None
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        kinds = [a for a in args if a is not type(None)]
        for kind in kinds[:-1]:  # float | str: a number if it is one, else the text (--lr auto)
            try:
                return _coerce(name, value, kind)
            except UserError:
                pass
        hint = kinds[-1]
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
    import torch  # here, not at the top: the CLI's --help builds the parser from this module

    known = re.fullmatch(DEVICE_PATTERN, spec) is not None
    _check(known, "--device", spec, "auto, cpu, cuda or cuda:N", "e.g. --device cpu")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        count = require_cuda(f"--device {spec}")
        if device.index is not None and device.index >= count:
            raise UserError(f"--device {spec}: only {count} CUDA device(s) here; use cuda:0..cuda:{count - 1}")
    return device


# ---------------------------------------------------------------- file and CLI overrides


def read_toml(path: str | Path, flag: str = "--config", what: str = "a TOML file") -> dict[str, Any]:
    """The tables of the TOML file ``path`` that ``flag`` named; a missing or invalid file is one line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{flag} {path}: no such file; give the path of {what}")
    try:
        return tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{flag} {path}: not valid TOML ({e}); fix the file") from None
    except RecursionError:  # tomllib parses nested arrays recursively
        raise UserError(f"{flag} {path}: not valid TOML (arrays or tables nested too deep); fix the file") from None


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a ``run.toml`` whose keys are the train flags' names without ``--`` (``hidden-sizes``,
    ``handler``) or TrainConfig's field names (``hidden_sizes``, ``handlers``)."""
    raw = read_toml(path)
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    # A repeatable flag is singular (--handler) and its field plural (handlers): both name it.
    aliases = {f.metadata["flag"].replace("-", "_"): name for name, f in fields.items() if "flag" in f.metadata}
    values: dict[str, Any] = {}
    keys: dict[str, str] = {}  # field name -> the key that set it
    for key, value in raw.items():
        name = key.replace("-", "_")
        name = aliases.get(name, name)
        if name in values:
            raise UserError(f"--config {path}: {keys[name]} and {key} set the same option; keep one")
        negated = name.removeprefix("no_")
        switch = negated in fields and (hints[negated] is bool or "switch" in fields[negated].metadata)
        if negated != name and switch:  # --no-progress
            raise UserError(f"--config {path}: write {negated.replace('_', '-')} = false, not {key} = true")
        if name not in fields:
            raise UserError(f"--config {path}: unknown key {key!r}; valid keys are the train flags, e.g. lr, epochs")
        values[name], keys[name] = value, key
    return values


def add_config_arguments(parser: argparse.ArgumentParser, only: Collection[str] | None = None) -> None:
    """Add one flag per TrainConfig field (``only``: these fields). Defaults are SUPPRESSed so we
    can tell what was set."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if only is not None and f.name not in only:
            continue
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        base = args[0] if args and typing.get_origin(hint) is not list else hint
        if len(args) > 1 and typing.get_origin(hint) is not list:  # float | str: a number or a word
            base = _number_or_word
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": f.name}
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = (
            f.metadata["help"] if "default" in f.metadata["help"] else f"{f.metadata['help']} (default: {default})"
        )
        if base is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, help=help_text, **kwargs)
            continue
        if "switch" in f.metadata:  # --progress [MODE] (bare: on) and --no-progress (off)
            on, off = f.metadata["switch"]
            parser.add_argument(_flag(f.name), nargs="?", const=on, metavar="MODE", help=help_text, **kwargs)
            parser.add_argument(f"--no-{f.name.replace('_', '-')}", action="store_const", const=off, **kwargs)
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


def _number_or_word(text: str) -> float | str:
    """``--lr 0.01`` is a number, ``--lr auto`` a word; TrainConfig says which words it takes.

    >>> _number_or_word("1e-3"), _number_or_word("auto")
    (0.001, 'auto')
    """
    try:
        return float(text)
    except ValueError:
        return text


def _cli_type(kind: Any, name: str) -> Any:
    def convert(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{_flag(name)} expects {kind.__name__}, got {text!r}") from None

    convert.__name__ = kind.__name__
    return convert


def merge_sources(cli_values: dict[str, Any], toml_path: str | None = None) -> dict[str, Any]:
    """The TOML file's values, then the command line's on top: the later one wins."""
    values: dict[str, Any] = load_toml(toml_path) if toml_path else {}
    values.update(cli_values)
    return values


def config_from_sources(cli_values: dict[str, Any], toml_path: str | None = None) -> TrainConfig:
    """Defaults (the recipe's), then the TOML file, then the command line: the later one wins.
    A resume starts from the run's saved config instead: see
    :func:`ignite_mlp.run.plan.config_for_command`, which reads it and calls this otherwise."""
    values = merge_sources(cli_values, toml_path)
    if values.get("resume"):
        raise ValueError("a resume starts from the run's saved config: use ignite_mlp.run.plan.config_for_command")
    return TrainConfig.from_recipe(values.pop("recipe", "tutorial"), **values)


def resume_from(saved: TrainConfig, run_dir: str, overrides: Mapping[str, Any]) -> TrainConfig:
    """``saved``, the configuration a run trained with, set up to continue that run in ``run_dir``,
    with ``overrides`` on top (e.g. ``epochs=80`` to train further). Its handlers are not attached
    again unless ``overrides`` names them (a run directory someone hands you must not run code).
    """
    values = {**saved.to_dict(), "handlers": [], **overrides}
    return TrainConfig(**{**values, "run_dir": run_dir, "resume": run_dir, "overwrite": False})


def given_fields(config: TrainConfig) -> dict[str, Any]:
    """The fields of ``config`` that differ from :class:`TrainConfig`'s defaults: what a Python
    caller set.

    >>> given_fields(TrainConfig(epochs=3, resume="runs/a"))
    {'resume': 'runs/a', 'epochs': 3}
    """
    defaults = TrainConfig()
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(config, f.name) != getattr(defaults, f.name)
    }
