"""ignite_mlp.run.plan: one path from a resume to its configuration, for the CLI and Python.

No training here: a run is its configuration file and a checkpoint's name, which is all that
finding a run and reading its configuration look at.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ignite_mlp.config.train_config import TrainConfig
from ignite_mlp.run.plan import config_for_command, config_to_train
from ignite_mlp.run.rundir import RunDir


@pytest.fixture
def saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run under ./runs trained with settings other than the defaults (and a handler)."""
    monkeypatch.chdir(tmp_path)
    run = Path("runs") / "a"
    (run / "checkpoints").mkdir(parents=True)
    trained = TrainConfig(epochs=3, lr=0.02, batch_size=8, hidden_sizes=[16], handlers=["mine.py:attach"])
    (run / "config.json").write_text(json.dumps({**trained.to_dict(), "classes": ["ant", "bee"]}))
    (run / "checkpoints" / "last_checkpoint_6.pt").write_bytes(b"")
    return run


def test_a_python_resume_starts_from_the_runs_saved_configuration(saved: Path) -> None:
    config = config_to_train(TrainConfig(resume=str(saved), epochs=5))
    assert (config.epochs, config.lr, config.batch_size, config.hidden_sizes) == (5, 0.02, 8, [16])
    assert (config.resume, config.run_dir, config.overwrite) == (str(saved), str(saved), False)
    assert config.handlers == []  # a run's handlers run again only when named again
    assert config == RunDir(saved).resume_config(epochs=5)  # what the CLI's --resume --epochs 5 gives
    assert config == config_for_command({"resume": str(saved), "epochs": 5})


def test_resume_auto_from_python_finds_the_newest_run(saved: Path) -> None:
    config = config_to_train(TrainConfig(resume="auto", epochs=5, run_dir="elsewhere"))
    assert (Path(config.resume), Path(config.run_dir), config.batch_size) == (saved, saved, 8)


def test_a_config_made_from_its_run_and_a_new_runs_config_are_taken_as_they_are(saved: Path) -> None:
    # The CLI's: a flag given at its default value (--batch-size 256) stays given.
    from_the_cli = config_for_command({"resume": str(saved), "batch_size": 256})
    assert from_the_cli.batch_size == 256
    assert config_to_train(from_the_cli) is from_the_cli
    new = TrainConfig(epochs=2)
    assert config_to_train(new) is new


def test_a_python_resume_of_no_run_is_one_line(tmp_path: Path) -> None:
    from ignite_mlp.errors import UserError

    with pytest.raises(UserError, match="no run there"):
        config_to_train(TrainConfig(resume=str(tmp_path / "nothing")))
