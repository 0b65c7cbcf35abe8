"""What a sweep hands back: a table of the best trials, ``best.json``, ``best.toml`` (a run file
that ``train --config`` takes as is), the optimisation history and parameter importances as PNG
pictures, and the test split evaluated once, for the best trial only.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import math
import socket
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ignite_mlp.files import write_atomic, write_json_atomic
from ignite_mlp.run.rundir import RunDir
from ignite_mlp.sweep.locks import LOCKS, TrialLock
from ignite_mlp.sweep.objective import FINISHED
from ignite_mlp.sweep.space import SearchSpace, decode_params

# Where each evaluation of the test split is kept: in the study, so every machine's report sees
# it, each under a key of its own ("test_evaluation:<id>"), so none is ever overwritten.
TEST_ATTR = "test_evaluation"
TEST_LOCK = "test-evaluation.lock"


def table(study: optuna.Study, rows: int = 10) -> str:
    """The best ``rows`` finished trials, best first: parameters, validation accuracy, epochs
    run, state, host and run directory."""
    finished = [t for t in study.get_trials(deepcopy=False, states=FINISHED) if t.value is not None]
    finished.sort(key=lambda t: (t.state != TrialState.COMPLETE, -(t.value or 0.0)))
    names = sorted({name for t in finished for name in t.params})
    header = ["trial", *names, "val_acc", "epochs", "state", "host", "run_dir"]
    lines = [header]
    for t in finished[:rows]:
        params = [_short(t.params.get(name, "")) for name in names]
        value = f"{t.value:.2f}" if t.state == TrialState.COMPLETE else f"({t.value:.2f})"
        epochs = str(len(t.intermediate_values))
        lines.append([str(t.number), *params, value, epochs, t.state.name.lower(), *_where(t)])
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in lines]
    counts = {s: len(study.get_trials(deepcopy=False, states=(s,))) for s in (*FINISHED, TrialState.FAIL)}
    summary = ", ".join(f"{n} {s.name.lower()}" for s, n in counts.items())
    return "\n".join([*text, f"({summary}; a pruned trial's value is its last validation accuracy)"])


def _short(value: Any) -> str:
    """
    >>> _short(0.000123456), _short(256), _short("[512, 256]")
    ('0.000123', '256', '[512, 256]')
    """
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _where(trial: FrozenTrial) -> list[str]:
    return [str(trial.user_attrs.get("host", "")), str(trial.user_attrs.get("run_dir", ""))]


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The complete trial with the highest validation accuracy (the earliest of equals)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: (t.value, -t.number), default=None)


def toml_value(value: Any) -> str:
    """A value as TOML writes it.

    >>> toml_value("a\\"b"), toml_value(True), toml_value([512, 256]), toml_value(0.001)
    ('"a\\\\"b"', 'true', '[512, 256]', '0.001')
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"TOML has no {value}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise ValueError(f"cannot write {value!r} as TOML")


def run_file(options: dict[str, Any], comment: str) -> str:
    """A ``run.toml`` of train options (field names become the flags' names)."""
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += [f"{name.replace('_', '-')} = {toml_value(value)}" for name, value in options.items()]
    return "\n".join(lines) + "\n"


# Train options a reproduction must not copy: where the trial ran, and how it showed progress.
NOT_COPIED = ("run_dir", "resume", "overwrite", "progress", "handlers")


def best_options(trial: FrozenTrial, space: SearchSpace, saved: dict[str, Any]) -> dict[str, Any]:
    """The train options of ``trial`` as ``train --config`` takes them: its run's recorded
    configuration, every "auto" as it resolved (the learning rate, the statistics, the precision,
    the device), the data's absolute path and the sweep's validation split; from the study's
    record when its run is not on this machine."""
    from ignite_mlp.config.train_config import TrainConfig
    from ignite_mlp.engine.precision import recorded_precision

    run = RunDir(str(trial.user_attrs.get("run_dir", "")))
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    if trial.user_attrs.get("host") == socket.gethostname() and run.is_run():
        values = run.read_config().values
        options = {k: values[k] for k in fields if k in values and k not in NOT_COPIED and values[k] is not None}
        options["precision"] = recorded_precision(values, "auto").name  # (reads older runs' spelling too)
        options["device"] = values.get("resolved_device", options.get("device"))
    else:
        options = {**space.fixed, **decode_params(trial.params, space)}
        if saved.get("precision") and options.get("precision", "auto") == "auto":
            options["precision"] = saved["precision"]
    return {**options, "data": saved["data"], "val_split": saved["val_split"]}


def test_evaluations(study: optuna.Study) -> list[dict[str, Any]]:
    """Every evaluation of the test split the study recorded, oldest first."""
    records = [v for k, v in study.user_attrs.items() if k.startswith(TEST_ATTR) and isinstance(v, dict)]
    return sorted(records, key=lambda r: str(r.get("at", "")))


def _evaluation_of(trial: FrozenTrial, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``trial``'s record among the test split's ``records``, or None."""
    return next((r for r in records if r.get("trial") == trial.number), None)


def evaluate_best_once(
    study: optuna.Study, trial: FrozenTrial, sweep_dir: Path, write: Callable[[str], None]
) -> dict[str, Any] | None:
    """The best trial's test accuracy and loss: evaluated once (then recorded in the study, under a
    key of its own that nothing overwrites), on the machine that holds its run; None, with a line
    saying where to evaluate it, elsewhere. When another trial was evaluated before, it says
    plainly that the test split is now seen a second time. Reports finishing at once (two sweep
    commands on one study) take turns, and the second finds the first's record."""
    recorded = _evaluation_of(trial, test_evaluations(study))
    if recorded is not None:
        return recorded
    run_dir, host = Path(str(trial.user_attrs.get("run_dir", ""))), trial.user_attrs.get("host")
    if host != socket.gethostname() or not RunDir(run_dir).is_run():
        write(f"test split: trial {trial.number}'s run is on {host}; run this report there to evaluate it once")
        return None
    # Only the machine holding the run evaluates it, so a lock on this machine is enough.
    with TrialLock() as lock:
        lock.acquire(sweep_dir / LOCKS / TEST_LOCK)
        return _evaluate_once(study, trial, run_dir, host, write)


def _evaluate_once(
    study: optuna.Study, trial: FrozenTrial, run_dir: Path, host: str, write: Callable[[str], None]
) -> dict[str, Any]:
    earlier = test_evaluations(study)  # read again under the lock: another report may have just written it
    recorded = _evaluation_of(trial, earlier)
    if recorded is not None:
        return recorded
    from ignite_mlp.inference.evaluate import evaluate

    start = time.monotonic()
    result = evaluate(run_dir)
    record = {
        "trial": trial.number,
        "test_acc": result.accuracy,
        "test_loss": result.loss,
        "seconds": round(time.monotonic() - start, 3),
        "at": datetime.datetime.now(datetime.UTC).isoformat(),
        "host": host,
    }
    study.set_user_attr(f"{TEST_ATTR}:{uuid.uuid4().hex}", record)
    if earlier:
        seen = ", ".join(f"trial {r.get('trial')} ({r.get('test_acc', float('nan')):.2f}%)" for r in earlier)
        write(
            f"test split: seen a second time: the best trial is now {trial.number}, and the test split was "
            f"already evaluated for {seen}; both records are kept (best.json's test_evaluations)"
        )
    return record


def write_report(
    study: optuna.Study,
    space: SearchSpace,
    saved: dict[str, Any],
    sweep_dir: str | Path,
    write: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Print the table; write best.json, best.toml and the two PNGs in the sweep folder; return
    best.json's content. ``saved`` is the study's record of its sweep (its settings as it ran)."""
    sweep_dir = Path(sweep_dir)
    write(table(study))
    best = best_trial(study)
    if best is None:
        write("no trial completed yet: nothing to report as best")
        return None
    test = evaluate_best_once(study, best, sweep_dir, write)
    options = best_options(best, space, saved)
    record = {
        "trial": best.number,
        "params": decode_params(best.params, space),
        "val_acc": best.value,
        "epochs": len(best.intermediate_values),
        "run_dir": best.user_attrs.get("run_dir"),
        "host": best.user_attrs.get("host"),
        "test_acc": test["test_acc"] if test else None,
        "test_loss": test["test_loss"] if test else None,
        "test_evaluations": test_evaluations(study),
        "study": study.study_name,
        "data": saved["data"],
        "data_fingerprint": saved.get("data_fingerprint"),
        "precision": options.get("precision"),
        "options": options,
        "settings": saved.get("settings", {}),
    }
    write_json_atomic(sweep_dir / "best.json", record)
    comment = (
        f"The best trial ({best.number}) of sweep study {study.study_name!r}: validation accuracy {best.value:.2f}%.\n"
        "Every value as the trial resolved it (precision, learning rate, statistics, device): from any folder,\n"
        "ignite-mlp train --config best.toml --run-dir DIR reproduces its history."
    )
    write_atomic(sweep_dir / "best.toml", run_file(options, comment).encode())
    pictures = write_plots(study, sweep_dir, write)
    write(f"best trial {best.number}: validation accuracy {best.value:.2f}% ({record['run_dir']} on {record['host']})")
    if test:
        write(f"test split (evaluated once for this trial): accuracy {test['test_acc']:.2f}%")
    write(f"best.json, best.toml{''.join(', ' + p.name for p in pictures)}: {sweep_dir}")
    return record


def write_plots(study: optuna.Study, sweep_dir: Path, write: Callable[[str], None]) -> list[Path]:
    """optimization_history.png and param_importances.png (Optuna's matplotlib plots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    written = []
    for name, plot in (
        ("optimization_history.png", optuna_plots.plot_optimization_history),
        ("param_importances.png", optuna_plots.plot_param_importances),
    ):
        try:
            with warnings.catch_warnings():  # Optuna calls its matplotlib plots experimental
                warnings.simplefilter("ignore")  # and importances warn when they are all equal
                axes = plot(study)
        except (ValueError, RuntimeError) as e:  # importances need 2+ complete trials
            write(f"{name}: not drawn ({e})")
            continue
        figure = axes.figure
        figure.tight_layout()
        png = io.BytesIO()
        figure.savefig(png, format="png", dpi=100)
        plt.close(figure)
        write_atomic(sweep_dir / name, png.getvalue())
        written.append(sweep_dir / name)
    return written
