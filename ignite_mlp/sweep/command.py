"""``ignite-mlp sweep``: run a study to its --trials (or only report it), then print and write the report."""

from __future__ import annotations

import argparse
import sys

from ignite_mlp.errors import TrainingInterrupted, UserError


def sweep_command(ns: argparse.Namespace) -> int:
    """The ``sweep`` sub-command; returns its exit status (0, or 130 when stopped by Ctrl-C)."""
    try:
        import optuna  # noqa: F401
        import optuna_integration  # noqa: F401
    except ImportError as e:
        raise UserError(f"sweep needs Optuna ({e.name} is missing): pip install 'ignite_mlp[sweep]'") from None
    from ignite_mlp.sweep.objective import SweepStopped
    from ignite_mlp.sweep.report import write_report
    from ignite_mlp.sweep.settings import absolute, settings_from_args
    from ignite_mlp.sweep.study import report_study, run_sweep, study_record

    if not ns.report and (ns.space is None or ns.trials is None):
        raise UserError("sweep needs --space SPACE.TOML and --trials N (or --report to report a study)")
    settings = settings_from_args(ns)
    try:
        if ns.report:
            study, saved, space = report_study(settings)
        else:
            try:
                study = run_sweep(settings)
            except (KeyboardInterrupt, TrainingInterrupted, SweepStopped):
                print(
                    "ignite-mlp: sweep stopped; finished trials are kept; run the same command to go on",
                    file=sys.stderr,
                )
                return 130
            saved, space = study_record(study)
        write_report(study, space, saved, absolute(settings).sweep_dir)
    except OSError as e:  # a full disk, a folder made read-only while it ran
        where = e.filename or "the sweep folder"
        raise UserError(f"{where}: {e.strerror}; free the space or fix the folder, then run the same command") from None
    return 0
