"""Helpers shared by the sweep's test modules: a tiny space, the command's arguments, the study read
back through Optuna's own API, the command run as a child process, PostgreSQL when CI gives one."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SPACE = """
[fixed]
epochs = {epochs}
hidden-sizes = [16]
batch-size = 8
tensorboard = false

[search.lr]
low = {low}
high = 0.2
log = true
"""


def write_space(folder: Path, epochs: int = 2, low: float = 0.01, text: str | None = None) -> Path:
    path = folder / "space.toml"
    path.write_text(text if text is not None else SPACE.format(epochs=epochs, low=low))
    return path


def sweep_args(tree: Path, space: Path, sweep_dir: Path, trials: int, *extra: str) -> list[str]:
    common = ["--data", str(tree), "--space", str(space), "--sweep-dir", str(sweep_dir), "--val-split", "9"]
    return ["sweep", *common, "--trials", str(trials), "--device", "cpu", "--seed", "0", *extra]


def journal_study(sweep_dir: Path, name: str | None = None):
    """The study in ``sweep_dir``'s journal, opened with Optuna's own API (no code of ours)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(sweep_dir / "journal.log")))
    return optuna.load_study(study_name=name or sweep_dir.name, storage=storage)


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ignite_mlp", *args]


def run_command(*args: str, timeout: float = 240, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, in a child process."""
    return subprocess.run(command(*args), env=child_env(), capture_output=True, text=True, timeout=timeout, cwd=cwd)


def postgres_url() -> str:
    """IGNITE_MLP_TEST_POSTGRES, or a skip with the reason (a failure when CI=true: it must test it)."""
    url = os.environ.get("IGNITE_MLP_TEST_POSTGRES")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must test the database path: .ci/run exports IGNITE_MLP_TEST_POSTGRES")
        pytest.skip("no PostgreSQL: set IGNITE_MLP_TEST_POSTGRES=postgresql://user:password@localhost/db")
    return url


def fresh_schema(url: str) -> str:
    """A URL on a new, empty schema of the test database: a new database as far as Optuna can
    tell (no tables), made without the right to create databases."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}"
