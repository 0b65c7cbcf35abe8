"""The configuration a run trains with: the recipe, a TOML file and the flags, and on a resume
the run's own saved configuration under them.

One path from a resume to its configuration, for the command line and for Python alike:
:func:`resumed_config`. The CLI hands it the flags and TOML values that were given
(:func:`config_for_command`); ``train(TrainConfig(resume=...))`` hands it the fields the caller
set, those that differ from :class:`TrainConfig`'s defaults (:func:`config_to_train`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ignite_mlp.config.train_config import TrainConfig, config_from_sources, given_fields, merge_sources
from ignite_mlp.run.rundir import find_run

# Set by the resume itself: the run's own folder, never overwritten.
_SET_BY_THE_RESUME = ("resume", "run_dir", "overwrite")


def config_for_command(cli_values: dict[str, Any], toml_path: str | None = None) -> TrainConfig:
    """:func:`~ignite_mlp.config.train_config.config_from_sources`, and with ``resume`` (from
    the flag or the file) the saved config of that run under the TOML file and flags."""
    values = merge_sources(cli_values, toml_path)
    if not values.get("resume"):
        return config_from_sources(values)
    return resumed_config(str(values["resume"]), values)


def resumed_config(resume: str, overrides: Mapping[str, Any]) -> TrainConfig:
    """The configuration that continues the run ``resume`` (a run directory, or ``auto``: the
    newest resumable run under ``runs/``): the one it saved, with ``overrides`` on top; its
    handlers are attached again only when ``overrides`` names them (see
    :meth:`~ignite_mlp.run.rundir.RunDir.resume_config`)."""
    run = find_run(resume)
    return run.resume_config(**{k: v for k, v in overrides.items() if k not in _SET_BY_THE_RESUME})


def config_to_train(config: TrainConfig) -> TrainConfig:
    """What :func:`~ignite_mlp.run.training.train` trains with. A new run's config, and one already
    made from its run (by :meth:`~ignite_mlp.run.rundir.RunDir.resume_config` or the CLI: its
    ``run_dir`` is the run it resumes), as they are; any other resume, such as
    ``TrainConfig(resume="runs/a", epochs=20)``, is the run's saved configuration under the fields
    the caller set (those that differ from the defaults: to set a field back to its default value,
    use ``RunDir(path).resume_config(field=value)``)."""
    if not config.resume or (config.run_dir == config.resume and config.resume != "auto"):
        return config
    return resumed_config(config.resume, given_fields(config))
