"""ignite_mlp.resume: the Resume object reads, checks and restores a run's newest checkpoint."""

from pathlib import Path

import pytest
import torch

from ignite_mlp import TrainConfig, train
from ignite_mlp.errors import UserError
from ignite_mlp.model import MLP
from ignite_mlp.resume import Resume


def _run(tree: Path, run_dir: Path, epochs: int = 2) -> None:
    config = TrainConfig(data=str(tree), run_dir=str(run_dir), epochs=epochs, batch_size=8, progress=False)
    train(config, write=lambda s: None)


def test_resume_reads_the_newest_checkpoint_and_its_iteration(tree: Path, tmp_path: Path) -> None:
    _run(tree, tmp_path / "r")
    resume = Resume(tmp_path / "r")
    saved = torch.load(resume.checkpoint, weights_only=True)  # the file on disk, read independently
    assert resume.iteration == saved["trainer"]["iteration"] == 10  # 2 epochs x 5 batches
    assert resume.purge_step == 11


def test_a_model_of_another_shape_is_refused(tree: Path, tmp_path: Path) -> None:
    _run(tree, tmp_path / "r", epochs=1)
    resume = Resume(tmp_path / "r")
    resume.check_model(MLP(8 * 8 * 3, 3, [128]))  # the run's own shape passes
    with pytest.raises(UserError, match=r"checkpoint \(128, 192\) vs model \(64, 192\)"):
        resume.check_model(MLP(8 * 8 * 3, 3, [64]))


def test_a_run_without_checkpoints_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match="no checkpoint"):
        Resume(tmp_path / "empty")
