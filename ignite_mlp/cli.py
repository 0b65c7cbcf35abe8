"""``ignite-mlp`` command line: a thin layer over :func:`ignite_mlp.run.training.train` and the other commands' modules.

Every train flag is generated from :class:`ignite_mlp.config.train_config.TrainConfig`; a ``--config run.toml``
file may set any of them and the command line wins over the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from ignite_mlp.config.train_config import TrainConfig, add_config_arguments
from ignite_mlp.config.validation import check_seed
from ignite_mlp.errors import CudaError, RankError, TrainingInterrupted, UserError

PROG = "ignite-mlp"


# The train options lr-find uses: what the data, the model, its optimizer and loss, the batches
# and the machine are; not how long or how the run trains, validates or logs.
LR_FIND_OPTIONS = (
    *("recipe", "data", "run_dir", "cache_dir", "download", "seed", "device", "precision", "progress"),
    *("batch_size", "mean", "std", "normalize", "whiten", "whiten_regularizer"),
    *("augment", "crop_padding", "mixup", "cutmix"),
    *("hidden_sizes", "norm", "activation", "dropout", "blocks", "expansion", "label_smoothing"),
    *("optimizer", "momentum", "weight_decay", "nesterov", "decay_norms"),
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage block) and exit status 2; options are
    never abbreviated, and a mistyped one gets a suggestion.

    Abbreviations are off because a prefix is silently taken for a whole option: ``--hidden-size 64``
    would set ``--hidden-sizes``, and a later option sharing the prefix would change its meaning.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False  # sub-parsers are made through this class too
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        ns, unknown = self.parse_known_args(args, namespace)
        if unknown:
            # The sub-command's parser knows its options; the top-level one only knows the commands.
            parser = self._command_parser(ns)
            parser.error(f"unrecognized arguments: {' '.join(unknown)}{parser.suggestion(unknown)}")
        return ns

    def _command_parser(self, ns: argparse.Namespace) -> _Parser:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(ns, action.dest, None) or "")
                if isinstance(chosen, _Parser):
                    return chosen
        return self

    def suggestion(self, unknown: Sequence[str]) -> str:
        """``" (did you mean --x?)"`` for the first unknown option close to one of ours, else ``""``.

        >>> parser = _Parser(prog="demo")
        >>> _ = parser.add_argument("--hidden-sizes")
        >>> parser.suggestion(["--hidden-size", "64"])
        ' (did you mean --hidden-sizes?)'
        >>> parser.suggestion(["--zzz"])
        ''
        """
        options = [o for o in self._option_string_actions if o.startswith("--")]
        for arg in unknown:
            if arg.startswith("--"):
                close = difflib.get_close_matches(arg.split("=", 1)[0], options, n=1)
                if close:
                    return f" (did you mean {close[0]}?)"
        return ""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Train the tutorial's CIFAR-10 MLP with PyTorch-Ignite.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train = commands.add_parser("train", help="train an MLP (defaults: the tutorial's recipe)")
    train.add_argument("--config", dest="config_file", metavar="RUN.TOML", help="TOML file of train options")
    train.add_argument(
        "--list-handlers", action="store_true", help="print which handler runs on which event, in order, and exit"
    )
    add_config_arguments(train)

    evaluate = commands.add_parser("evaluate", help="evaluate a run's best checkpoint: loss, accuracy, per class")
    evaluate.add_argument("target", metavar="RUN_DIR_OR_CHECKPOINT", help="a run directory or a checkpoint file")
    evaluate.add_argument("--data", help="evaluate on this data instead of the run's own")
    evaluate.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    evaluate.add_argument("--out", help="confusion-matrix PNG (default: RUN_DIR/confusion_matrix.png)")

    lr_find = commands.add_parser(
        "lr-find", help="find a learning rate (Ignite's FastaiLRFinder): plot, suggestion, train command"
    )
    lr_find.add_argument("--config", dest="config_file", metavar="RUN.TOML", help="TOML file of train options")
    lr_find.add_argument("--start-lr", type=float, default=1e-7, help="smallest rate tried (default: 1e-7)")
    lr_find.add_argument("--end-lr", type=float, default=10.0, help="largest rate tried (default: 10)")
    lr_find.add_argument(
        "--num-iter", type=int, default=100, help="training steps, rate growing exponentially (default: 100)"
    )
    lr_find.add_argument("--out", help="plot (default: lr_finder.png, or RUN_DIR/lr_finder.png with --run-dir)")
    add_config_arguments(lr_find, only=LR_FIND_OPTIONS)

    predict = commands.add_parser("predict", help="classify image files, folders or .tar.gz with a trained run")
    predict.add_argument("target", metavar="RUN_DIR_OR_CHECKPOINT", help="a run directory or a checkpoint file")
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or .tar.gz archives")
    predict.add_argument("--top-k", type=int, default=3, help="how many classes per image (default: 3)")
    predict.add_argument("--format", default="table", choices=("table", "json", "csv"), help="output (default: table)")
    predict.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: 256)")
    predict.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")

    export = commands.add_parser(
        "export", help="export a run's model as ONNX or TorchScript (uint8 in, probabilities out)"
    )
    export.add_argument("target", metavar="RUN_DIR_OR_CHECKPOINT", help="a run directory or a checkpoint file")
    export.add_argument("--format", required=True, choices=("onnx", "torchscript"), help="onnx | torchscript")
    export.add_argument("--out", help="file to write (default: RUN_DIR/model.onnx or RUN_DIR/model.torchscript.pt)")
    export.add_argument("--data", help="check the export on this data's validation images instead of the run's own")

    add_sweep_parser(commands)

    samples = commands.add_parser("samples", help="a grid of training images with their class names")
    samples.add_argument("--data", default="./data", help="data folder or .tar.gz (default: ./data)")
    samples.add_argument("--out", default="samples.png", help="PNG to write (default: samples.png)")
    samples.add_argument("--count", type=int, default=32, help="how many images (default: 32)")
    samples.add_argument("--seed", type=int, default=0, help="which random images (default: 0)")
    return parser


def add_sweep_parser(commands: argparse._SubParsersAction) -> None:
    sweep = commands.add_parser(
        "sweep", help="search hyperparameters with Optuna on a validation split (one machine or many)"
    )
    sweep.add_argument("--data", default="./data", help="data folder or .tar.gz (default: ./data)")
    sweep.add_argument("--space", metavar="SPACE.TOML", help="search space: [fixed] options, [search.OPTION] ranges")
    sweep.add_argument("--trials", type=int, help="finished trials the study should hold, over all workers")
    sweep.add_argument("--jobs", type=int, default=1, help="worker processes on this machine (default: 1)")
    sweep.add_argument("--sweep-dir", default="runs/sweep", help="trial runs, journal and report (default: runs/sweep)")
    sweep.add_argument("--storage", help="database URL shared by machines (default: a journal file in --sweep-dir)")
    sweep.add_argument("--study", help="study name (default: the sweep folder's name)")
    sweep.add_argument("--seed", type=int, help="seed of the sampler's proposals (each worker adds its index)")
    sweep.add_argument("--pruner", default="median", help="median | hyperband | none (default: median)")
    sweep.add_argument("--val-split", type=float, default=5000, help="validation images held out (default: 5000)")
    sweep.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    sweep.add_argument("--cache-dir", help="decoded-data cache (default: ~/.cache/ignite_mlp)")
    sweep.add_argument("--heartbeat-interval", type=int, default=60, help="database: seconds between heartbeats")
    sweep.add_argument("--grace-period", type=int, default=180, help="database: silent seconds before a trial is dead")
    sweep.add_argument("--report", action="store_true", help="only print the table and write the best files")


def _sweep(ns: argparse.Namespace) -> int:
    from ignite_mlp.sweep.command import sweep_command

    return sweep_command(ns)


def _evaluate(ns: argparse.Namespace) -> int:
    from ignite_mlp.inference.evaluate import evaluate
    from ignite_mlp.inference.outputs import cannot_write, check_output_file, refuse_run_file_and_lock
    from ignite_mlp.plots import confusion_matrix_figure, save_png
    from ignite_mlp.run.rundir import CONFUSION, find_checkpoint

    run, _ = find_checkpoint(ns.target)
    out = check_output_file(ns.out) if ns.out else run.confusion_matrix
    with refuse_run_file_and_lock(out, allowed=(CONFUSION,)):  # the run's lock, when the plot goes into a run
        result = evaluate(ns.target, data=ns.data, device=ns.device)
        print(result.report())
        try:
            save_png(confusion_matrix_figure(result.confusion, list(result.per_class)), out)
        except OSError as e:
            raise cannot_write(out, e) from None
    print(f"confusion matrix: {out}")
    return 0


def _samples(ns: argparse.Namespace) -> int:
    from ignite_mlp.inference.evaluate import draw_samples
    from ignite_mlp.inference.outputs import cannot_write, check_output_file, refuse_run_file_and_lock
    from ignite_mlp.plots import save_png

    if ns.count < 1:
        raise UserError(f"--count must be >= 1 (got {ns.count})")
    check_seed(ns.seed)

    check_output_file(ns.out)
    samples = draw_samples(ns.data, ns.count, ns.seed)
    with refuse_run_file_and_lock(ns.out):
        try:
            out = save_png(samples.grid(), ns.out)
        except OSError as e:
            raise cannot_write(ns.out, e) from None
    print(f"{len(samples.labels)} samples: {out}")
    print(f"first sample (top left): {samples.one_hot_line(0)}")  # the tutorial's one-hot printout
    return 0


def _lr_find(ns: argparse.Namespace) -> int:
    from ignite_mlp.inference.outputs import check_output_file, refuse_run_file_and_lock
    from ignite_mlp.run.lr_finder import FINDER_FLAGS, lr_find, train_command
    from ignite_mlp.run.plan import config_for_command
    from ignite_mlp.run.rundir import LR_FINDER, RunDir

    given = {k: v for k, v in vars(ns).items() if k not in ("command", "config_file", *FINDER_FLAGS)}
    config = config_for_command(dict(given), ns.config_file)
    # A given --out is checked as evaluate's is: a folder that does not exist is a typo, not one to make.
    out = (
        check_output_file(ns.out) if ns.out else RunDir(config.run_dir).lr_finder if config.run_dir else Path(LR_FINDER)
    )
    with refuse_run_file_and_lock(out, allowed=(LR_FINDER,)):  # the run's lock, when the plot goes into a run
        curve, plot = lr_find(config, ns.start_lr, ns.end_lr, ns.num_iter, out)
    print(curve.summary())
    print(f"plot: {plot}")
    print(f"train with it: {train_command(given, ns.config_file, curve.suggestion)}")
    return 0


def _predict(ns: argparse.Namespace) -> int:
    from ignite_mlp.inference.classifier import load_classifier
    from ignite_mlp.inference.predict import run_predict

    for flag, value in (("--top-k", ns.top_k), ("--batch-size", ns.batch_size)):
        if value < 1:
            raise UserError(f"{flag} must be >= 1 (got {value}); e.g. {flag} {3 if flag == '--top-k' else 256}")
    classifier = load_classifier(ns.target, ns.device)
    return run_predict(classifier, ns.inputs, ns.top_k, ns.format, ns.batch_size).exit_status


def _export(ns: argparse.Namespace) -> int:
    from ignite_mlp.inference.export import ExportCheckFailed, export

    try:
        result = export(ns.target, ns.format, ns.out, ns.data)
    except ExportCheckFailed as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    print(result.report())
    return 0


def config_from_namespace(ns: argparse.Namespace) -> TrainConfig:
    """The TrainConfig for parsed ``train`` arguments: defaults < --config file < flags.

    With ``--resume RUN_DIR|auto`` the run's saved config replaces the defaults.
    """
    from ignite_mlp.run.plan import config_for_command  # (imports torch: --help must not)

    values = {k: v for k, v in vars(ns).items() if k not in ("command", "config_file", "list_handlers")}
    return config_for_command(values, ns.config_file)


def _train(ns: argparse.Namespace) -> int:
    config = config_from_namespace(ns)
    config.validate()  # before any data is read: an impossible option is answered at once
    # Imported here, not at the top: --help imports no torch (tests/test_cli.py checks it).
    from ignite_mlp.distributed.launcher import launch
    from ignite_mlp.run.training import train

    if ns.list_handlers:
        with tempfile.TemporaryDirectory() as scratch:  # nothing is trained, nothing is kept
            # No resume: listing needs no saved state, and must not write into the run it names.
            one_process = dataclasses.replace(config, run_dir=scratch, resume=None, progress=False, nproc_per_node=1)
            stand_in = _listing_stand_in(config)
            if stand_in is not None:  # (its 20 images hold no validation split)
                one_process = dataclasses.replace(one_process, val_split=0)
            train(one_process, list_handlers=True, dataset=stand_in)
        return 0
    # One process, --nproc-per-node processes, or this process's rank under torchrun.
    result = launch(config)
    if result is None:  # a rank other than 0 under torchrun: rank 0 reports
        return 0
    print(result.report())
    return 1 if result.stopped else 0


def _listing_stand_in(config: TrainConfig) -> Any:
    """For ``--list-handlers`` with data not on this machine (the default ``./data``, CIFAR-10 to be
    downloaded): 20 blank images of CIFAR-10's shape and classes, since which handler runs on which
    event does not depend on the pixels. None (read the data) when the data is here."""
    if Path(config.data).expanduser().exists():
        return None
    import torch

    from ignite_mlp.data import Dataset

    images, labels = torch.zeros(20, 3, 32, 32, dtype=torch.uint8), torch.arange(20) % 10
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return Dataset(images, labels, images[:10], labels[:10], classes, f"{config.data} (not read: listing only)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    ns = build_parser().parse_args(argv)
    commands = {
        "train": _train,
        "evaluate": _evaluate,
        "samples": _samples,
        "lr-find": _lr_find,
        "predict": _predict,
        "export": _export,
        "sweep": _sweep,
    }
    try:
        return commands[ns.command](ns)
    except UserError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted before a checkpoint could be written", file=sys.stderr)
        return 130
    except (CudaError, RankError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
