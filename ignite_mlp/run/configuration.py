"""The configuration a run trains with: the recipe, a TOML file and the flags, and on a resume
the run's own saved configuration under them.

The CLI's path from a resume to its configuration: :func:`resumed_config`, handed the flags and
TOML values that were given (:func:`config_for_command`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ignite_mlp.config.train_config import TrainConfig, config_from_sources, merge_sources
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
