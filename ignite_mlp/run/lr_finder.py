"""The learning-rate finder: Ignite's ``FastaiLRFinder`` run on a copy of the run's model, fed by
the run's own training batches.

    ignite-mlp lr-find --data ../shared/data/cifar10-jpg.tar.gz   # lr_finder.png, the suggestion, a train command
    ignite-mlp train --lr auto --data ...                         # the finder first, then training with its rate

The finder trains a model built as the run builds it (``MLP.from_config``, the run's optimizer,
loss, trainer factory and precision) for ``num_iter`` steps on the run's own training loader
(normalised or whitened, augmented and mixed as the run's batches are), while the learning rate
grows exponentially from ``start_lr`` to ``end_lr``. It records the (smoothed) training loss of
each step, stops early once the loss exceeds 5 times its best, and suggests the rate where the
loss fell fastest (Ignite's ``lr_suggestion``). Nothing of the finder's model is kept, and the
global random state is left as it was, so ``train --lr auto`` trains exactly what
``train --lr <suggestion>`` would.
"""

from __future__ import annotations

import dataclasses
import io
import math
import shlex
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.handlers import FastaiLRFinder
from torch import nn

from ignite_mlp.config.train_config import TrainConfig, resolve_device
from ignite_mlp.config.validation import flag
from ignite_mlp.data import Dataset
from ignite_mlp.distributed import ranks
from ignite_mlp.engine.precision import recorded_precision, resolve_precision
from ignite_mlp.engine.trainer import create_trainer
from ignite_mlp.errors import UserError
from ignite_mlp.files import write_atomic
from ignite_mlp.handlers.console import attach_progress_bar
from ignite_mlp.handlers.epochs import attach_epoch_shuffle
from ignite_mlp.model import MLP
from ignite_mlp.progress import progress_mode
from ignite_mlp.run.engines import build_optimizer
from ignite_mlp.run.plan import RunPlan
from ignite_mlp.run.prepare import RunData, prepare_data
from ignite_mlp.run.rundir import LR_FINDER, RunDir

START_LR = 1e-7
END_LR = 10.0
NUM_ITER = 100
# The rates the finder may sweep. Below 1e-12 no step changes a float32 weight; past 1e3 every
# loss has long diverged. The bounds also keep end/start finite: the exponential schedule
# divides them (--start-lr 5e-324 would make every rate inf).
LOWEST_LR, HIGHEST_LR = 1e-12, 1e3
MAX_ITER = 10_000
# Ignite's divergence rule: the finder stops once the smoothed loss exceeds this times its best.
DIVERGE_FACTOR = 5.0
# lr-find's own flags: not train flags, so left out of the train command it prints.
FINDER_FLAGS = ("start_lr", "end_lr", "num_iter", "out")


@dataclass
class LRCurve:
    """The finder's record: the learning rate and smoothed training loss of each step."""

    lrs: list[float]
    losses: list[float]
    suggestion: float

    @property
    def diverged(self) -> bool:
        """Whether the finder stopped because the loss blew up (else the range may be too low)."""
        best = min(self.losses)
        return not math.isfinite(self.losses[-1]) or self.losses[-1] > DIVERGE_FACTOR * best

    def summary(self) -> str:
        """One line: the suggestion and how it was found.

        >>> curve = LRCurve([1e-3, 1e-2, 1e-1], [2.0, 1.0, 20.0], 1e-2)
        >>> for part in curve.summary().split("; "):
        ...     print(part)
        suggested learning rate 0.01 (steepest fall of the loss over 3 steps from 0.001 to 0.1
        stopped: the loss diverged)
        """
        tail = "stopped: the loss diverged" if self.diverged else "the loss never diverged: try a larger --end-lr"
        return (
            f"suggested learning rate {self.suggestion:.3g} (steepest fall of the loss over {len(self.lrs)} steps "
            f"from {self.lrs[0]:.3g} to {self.lrs[-1]:.3g}; {tail})"
        )


def check_finder_range(start_lr: float, end_lr: float, num_iter: int) -> None:
    """Refuse a sweep the finder cannot run, naming a sane range (checked before any data loads).

    >>> check_finder_range(1e-7, float("inf"), 100)
    Traceback (most recent call last):
    ...
    ignite_mlp.errors.UserError: --end-lr must be a rate from 1e-12 to 1000 (got inf); e.g. --end-lr 10
    """
    for option, value, example in (("--start-lr", start_lr, START_LR), ("--end-lr", end_lr, END_LR)):
        if not LOWEST_LR <= value <= HIGHEST_LR:  # (NaN fails this too)
            raise UserError(
                f"{option} must be a rate from {LOWEST_LR:g} to {HIGHEST_LR:g} (got {value:g}); "
                f"e.g. {option} {example:g}"
            )
    if not start_lr < end_lr:
        raise UserError(
            f"--start-lr {start_lr:g} and --end-lr {end_lr:g}: need 0 < start < end; e.g. {START_LR:g} and {END_LR:g}"
        )
    if not 5 <= num_iter <= MAX_ITER:
        raise UserError(
            f"--num-iter must be >= 5 and <= {MAX_ITER} (got {num_iter}); the finder needs a curve, try {NUM_ITER}"
        )


def find_lr(
    config: TrainConfig,
    data: RunData,
    device: torch.device,
    start_lr: float = START_LR,
    end_lr: float = END_LR,
    num_iter: int = NUM_ITER,
    progress: str = "off",
) -> LRCurve:
    """Run Ignite's ``FastaiLRFinder`` on a new model, optimizer and loss built as ``config`` (normalised
    as ``data``) says, trained by the run's trainer factory in the run's resolved precision on the run's own
    training loader (``data.train_loader``: whitened, augmented and mixed as the run's batches).
    ``progress`` is a mode of :func:`~ignite_mlp.progress.progress_mode`: ``bar`` draws Ignite's
    progress bar over the finder's steps. The global random state is restored afterwards.

    The loader draws each batch from ``(seed, epoch, batch)`` alone, so the finder's batches are
    the ones the run trains on first, and the run still gets them after the finder.

    In a multi-process run every process steps its share of each batch through
    DistributedDataParallel, as the run does; Ignite sums the loss across them, so each gets the
    same curve (divided back here: the mean of equal shards' losses) and suggestion.
    """
    loader = data.train_loader
    check_finder_range(start_lr, end_lr, num_iter)
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # the run's own weights and dropout stay as without it
        torch.manual_seed(config.seed)  # the weights the run starts from
        model = MLP.from_config(config, data.dataset.in_features, data.dataset.num_classes).to(device)
        optimizer = build_optimizer(model, dataclasses.replace(config, lr=float(start_lr)))
        stepped, optimizer = ranks.wrap(model, optimizer, device)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        trainer = create_trainer(stepped, optimizer, loss_fn, device, config.precision)
        attach_epoch_shuffle(trainer, loader, len(loader))
        if progress == "bar":
            attach_progress_bar(trainer)
        finder = FastaiLRFinder()
        to_save = {"model": model, "optimizer": optimizer}
        with warnings.catch_warnings():
            # Reported by LRCurve.summary instead of as a Python warning.
            warnings.filterwarnings("ignore", message="Run completed without loss diverging")
            with finder.attach(
                trainer, to_save, _finite_loss, num_iter=num_iter, start_lr=float(start_lr), end_lr=float(end_lr)
            ) as finding:
                finding.run(loader)
        try:
            suggestion = float(finder.lr_suggestion())
        except RuntimeError:
            raise UserError(
                f"the loss did not fall between learning rates {start_lr:g} and {end_lr:g}; "
                "run ignite-mlp lr-find with a smaller --start-lr, or give --lr yourself"
            ) from None
    results = finder.get_results()
    processes = idist.get_world_size()  # Ignite sums the loss over processes
    return LRCurve([float(lr) for lr in results["lr"]], [float(v) / processes for v in results["loss"]], suggestion)


def _finite_loss(output: Mapping[str, Any]) -> torch.Tensor:
    """The step's loss for the finder; NaN counts as infinite, so the finder sees it diverge
    (a NaN compares false with everything and would never stop it)."""
    loss = output["loss"]
    return loss if bool(torch.isfinite(loss)) else torch.tensor(float("inf"))


def resolve_auto_lr(
    config: TrainConfig,
    data: RunData,
    device: torch.device,
    write: Callable[[str], None] = print,
    run: bool = True,
    main: bool = True,
) -> tuple[TrainConfig, LRCurve | None]:
    """``--lr auto``: run the finder on the run's prepared ``data`` (its loader and resolved
    precision) and return the config with its suggestion as ``lr`` (which the run's
    configuration then records), and the curve. Any other ``lr`` is returned unchanged, with no curve. ``run=False``
    (listing handlers) puts the default rate in place of the finder's. The ``main`` process
    draws the finder's progress bar as ``config.progress`` says; the others draw none.
    """
    if config.lr != "auto":
        return config, None
    # (A resume with --lr auto was refused when the run was planned: Resume.check.)
    if not run:
        return dataclasses.replace(config, lr=TrainConfig.__dataclass_fields__["lr"].default), None
    write(f"learning-rate finder: {NUM_ITER} steps from {START_LR:g} to {END_LR:g} ...")
    progress = progress_mode(config.progress) if main else "off"
    curve = find_lr(config, data, device, progress=progress)
    write(curve.summary() + "; training with it")
    return dataclasses.replace(config, lr=curve.suggestion), curve


def record_lr_curve(curve: LRCurve, run_dir: Path, writer: Any | None = None) -> None:
    """Keep a ``--lr auto`` run's finder curve: ``lr_finder.png`` in the run directory and, given
    a TensorBoard writer (tensorboardX's ``SummaryWriter``), the scalars ``lr_finder/loss`` and
    ``lr_finder/lr`` at steps 1, 2, ... (the finder's iterations)."""
    plot_lr_curve(curve, RunDir(run_dir).lr_finder)
    if writer is None:
        return
    for step, (lr, loss) in enumerate(zip(curve.lrs, curve.losses, strict=True), start=1):
        if math.isfinite(loss):
            writer.add_scalar("lr_finder/loss", loss, step)
        writer.add_scalar("lr_finder/lr", lr, step)
    writer.flush()


def plot_lr_curve(curve: LRCurve, path: str | Path) -> Path:
    """The loss against the learning rate (log axis) with the suggestion marked, as a PNG."""
    from matplotlib.figure import Figure  # a bare Figure: no display, no pyplot state

    points = [(lr, loss) for lr, loss in zip(curve.lrs, curve.losses, strict=True) if math.isfinite(loss)]
    lrs, losses = [p[0] for p in points], [p[1] for p in points]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    ax.plot(lrs, losses, color="tab:blue", label="training loss (smoothed)")
    at = curve.lrs.index(curve.suggestion)
    ax.axvline(curve.suggestion, color="tab:red", linestyle="--", linewidth=1)
    ax.scatter(
        [curve.suggestion],
        [curve.losses[at]],
        color="tab:red",
        s=60,
        zorder=3,
        label=f"suggested {curve.suggestion:.3g}",
    )
    ax.set_xscale("log")
    low, first = min(losses), losses[0]
    # Keep the informative part: the blown-up tail would squash the curve against the axis.
    top = min(max(losses), first + max(first - low, 1e-3))
    ax.set_ylim(low - 0.05 * (top - low), top)
    ax.set(title="learning-rate finder", xlabel="learning rate", ylabel="loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    path = Path(path)
    write_atomic(path, buffer.getvalue())
    return path


def train_command(given: Mapping[str, Any], config_file: str | None, lr: float) -> str:
    """The ``ignite-mlp train`` command line with the flags the user gave (``given``: field name
    to value, as parsed) and ``--lr`` set to ``lr``.

    >>> train_command({"data": "my data", "hidden_sizes": [512, 256], "progress": False, "lr": 1.0}, None, 0.0123)
    "ignite-mlp train --data 'my data' --hidden-sizes 512 256 --no-progress --lr 0.0123"
    """
    words = ["ignite-mlp", "train"] + (["--config", config_file] if config_file else [])
    for name, value in given.items():
        if name == "lr" or name in FINDER_FLAGS:
            continue
        option = flag(name)
        if isinstance(value, bool):
            words.append(option if value else "--no-" + option[2:])
        elif name == "handlers":
            words += [w for spec in value for w in ("--handler", spec)]
        elif isinstance(value, list):
            words += [option, *(str(v) for v in value)]
        else:
            words += [option, str(value)]
    return shlex.join([*words, "--lr", f"{lr:.3g}"])


def lr_find(
    config: TrainConfig,
    start_lr: float = START_LR,
    end_lr: float = END_LR,
    num_iter: int = NUM_ITER,
    out: str | Path | None = None,
    write: Callable[[str], None] = print,
    dataset: Dataset | None = None,
) -> tuple[LRCurve, Path]:
    """``ignite-mlp lr-find``: prepare the data as ``train`` does (load, measure statistics,
    whiten, build the loaders, resolve the precision), run the finder, write the plot. The plot
    goes to ``out``, else ``config.run_dir/lr_finder.png`` when a run directory is given, else
    ``./lr_finder.png``; nothing else is written. ``dataset`` skips loading (tests, notebooks)."""
    check_finder_range(start_lr, end_lr, num_iter)  # before seconds of data loading
    if config.resume:
        raise UserError("lr-find starts from a new model; --resume does not apply: give the run's flags instead")
    if out is None:
        out = RunDir(config.run_dir).lr_finder if config.run_dir else Path(LR_FINDER)
    out = Path(out)
    device = resolve_device(config.device)
    # On a run's folder the finder computes as the run did (its recorded precision); elsewhere as a new run would.
    run = RunDir(config.run_dir) if config.run_dir else None
    if run is not None and run.is_run() and config.precision == "auto":
        precision = recorded_precision(run.read_config().values, "auto")
    else:
        precision = resolve_precision(config.precision, device)
    config = dataclasses.replace(config, precision=precision.name)
    plan = RunPlan(
        config=config,
        device=device,
        run_dir=out.parent,
        handlers=[],
        resume=None,
        write=write,
        distributed=False,
        main=True,
        list_handlers=False,
        progress=progress_mode(config.progress),
        precision=precision,
    )
    data = prepare_data(plan, dataset)
    write(f"learning-rate finder: {num_iter} steps from {start_lr:g} to {end_lr:g} ...")
    normalized = data.normalized(config)  # as train() does
    curve = find_lr(normalized, data, device, start_lr, end_lr, num_iter, progress=plan.progress)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        plot_lr_curve(curve, out)
    except OSError as e:
        raise UserError(f"{out}: cannot write the plot there ({e.strerror}); pass --out in a writable folder") from None
    return curve, out
