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
    from ignite_mlp.sweep.report import write_report
    from ignite_mlp.sweep.study import SweepSettings, open_study, record_study_settings, run_sweep

    if not ns.report and (ns.space is None or ns.trials is None):
        raise UserError("sweep needs --space SPACE.TOML and --trials N (or --report to report a study)")
    if ns.trials is not None and ns.trials < 1:  # else "or 1" below would quietly run a trial
        raise UserError(f"--trials must be >= 1 (got {ns.trials}); e.g. --trials 20")
    settings = SweepSettings(
        data=ns.data,
        space=ns.space or "",
        sweep_dir=ns.sweep_dir,
        trials=ns.trials or 1,
        jobs=ns.jobs,
        storage=ns.storage,
        study=ns.study,
        seed=ns.seed,
        pruner=ns.pruner,
        val_split=ns.val_split,
        device=ns.device,
        cache_dir=ns.cache_dir,
        heartbeat_interval=ns.heartbeat_interval,
        grace_period=ns.grace_period,
    )
    if ns.report:
        settings.check()
        study = open_study(settings, create=False)
        settings, space = record_study_settings(study, settings, from_study=True)
    else:
        try:
            study = run_sweep(settings)
        except (KeyboardInterrupt, TrainingInterrupted):
            print("ignite-mlp: sweep stopped; finished trials are kept; run the same command to go on", file=sys.stderr)
            return 130
        settings, space = record_study_settings(study, settings, from_study=True)
    write_report(study, space, settings)
    return 0
