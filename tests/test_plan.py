"""ignite_mlp.run.plan: phase 1 checks everything it can before reading data or writing a file."""

from pathlib import Path

import pytest
import torch

from ignite_mlp import TrainConfig, train
from ignite_mlp.errors import UserError
from ignite_mlp.run.plan import resolve_plan
from ignite_mlp.run.rundir import RunDir


def test_a_fresh_plan(tmp_path: Path) -> None:
    plan = resolve_plan(TrainConfig(run_dir=str(tmp_path / "r"), device="cpu", epochs=7))
    assert plan.device == torch.device("cpu") and plan.run_dir == tmp_path / "r"
    assert plan.resume is None and plan.main and not plan.distributed and plan.max_epochs == 7
    assert not (tmp_path / "r").exists()  # planning writes nothing


def test_overfit_check_turns_regularisation_off_and_dry_run_is_one_epoch(tmp_path: Path) -> None:
    config = TrainConfig(run_dir=str(tmp_path / "r"), overfit_batches=2, dropout=0.3, weight_decay=0.1, dry_run=True)
    plan = resolve_plan(config)
    assert (plan.config.dropout, plan.config.weight_decay, plan.max_epochs) == (0.0, 0.0, 1)


def test_bad_handler_and_existing_run_fail_before_any_data(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--handler"):
        resolve_plan(TrainConfig(run_dir=str(tmp_path / "r"), handlers=["no_such_module:fn"], data="/nonexistent"))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="already holds a run"):
        resolve_plan(TrainConfig(run_dir=str(tmp_path / "taken"), data="/nonexistent"))


def test_resume_reads_the_checkpoint_in_the_plan(tree: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    train(
        TrainConfig(data=str(tree), run_dir=str(run_dir), epochs=1, batch_size=8, progress=False), write=lambda s: None
    )
    plan = resolve_plan(RunDir(run_dir).resume_config(epochs=2))
    assert plan.run_dir == run_dir and plan.resume is not None
    assert plan.resume.checkpoint.name == "last_checkpoint_5.pt" and plan.resume.iteration == 5


def test_other_ranks_print_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ignite_mlp.distributed import ranks

    lines: list[str] = []
    monkeypatch.setattr(ranks, "is_main", lambda: False)
    plan = resolve_plan(TrainConfig(run_dir=str(tmp_path / "r")), write=lines.append)
    plan.write("hello")
    assert lines == [] and not plan.main
