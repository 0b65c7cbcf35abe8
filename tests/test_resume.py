"""ignite_mlp.run.resume: the Resume object reads, checks and restores a run's newest checkpoint."""

from pathlib import Path

import pytest
import torch

from ignite_mlp import TrainConfig, train
from ignite_mlp.errors import UserError
from ignite_mlp.model import MLP
from ignite_mlp.run.resume import Resume
from ignite_mlp.run.rundir import RunDir


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


def _config(tree: Path, run_dir: Path, **kw) -> TrainConfig:
    base = dict(data=str(tree), run_dir=str(run_dir), epochs=2, batch_size=8, lr=0.05, progress=False)
    return TrainConfig(**{**base, **kw})


def _optimizer_log(log: list) -> object:
    """A user handler that keeps each iteration's (iteration, lr, momentum, weight decay)."""
    from ignite.engine import Events

    def attach(trainer, evaluator, context) -> None:
        def keep(engine) -> None:
            group = context.optimizer.param_groups[0]
            log.append((engine.state.iteration, group["lr"], group["momentum"], group["weight_decay"]))

        trainer.add_event_handler(Events.ITERATION_COMPLETED, keep)

    return attach


def test_optimizer_overrides_take_effect_and_are_recorded(tree: Path, tmp_path: Path) -> None:
    import json

    train(_config(tree, tmp_path / "r", momentum=0.9, weight_decay=1e-4), write=lambda s: None)
    lines: list[str] = []
    log: list = []
    resumed = RunDir(tmp_path / "r").resume_config(epochs=3, lr=0.01, momentum=0.5, weight_decay=0.0)
    train(resumed, extra_handlers=[_optimizer_log(log)], write=lines.append)
    assert {(lr, m, wd) for _, lr, m, wd in log} == {(0.01, 0.5, 0.0)}
    assert [it for it, *_ in log] == [11, 12, 13, 14, 15]
    assert (
        "changed on resume: --epochs 2 -> 3, --lr 0.05 -> 0.01, --momentum 0.9 -> 0.5, --weight-decay 0.0001 -> 0.0"
        in lines
    )
    record = json.loads((tmp_path / "r" / "resumes.json").read_text())
    assert [(r["iteration"], r["changed"]) for r in record] == [
        (10, {"epochs": [2, 3], "lr": [0.05, 0.01], "momentum": [0.9, 0.5], "weight_decay": [0.0001, 0.0]})
    ]
    assert json.loads((tmp_path / "r" / "config.json").read_text())["lr"] == 0.01


@pytest.mark.parametrize("schedule", ["step", "cosine", "onecycle"])
def test_a_new_learning_rate_lays_the_schedule_out_around_it(tree: Path, tmp_path: Path, schedule: str) -> None:
    # The independent expectation: a run trained from the start with the new settings.
    kw = dict(lr_schedule=schedule, lr_step_epochs=1, lr_gamma=0.5)
    straight: list = []
    train(_config(tree, tmp_path / "s", epochs=3, lr=0.2, **kw), extra_handlers=[_optimizer_log(straight)], write=print)
    train(_config(tree, tmp_path / "r", epochs=2, lr=0.05, **kw), write=lambda s: None)
    resumed: list = []
    train(RunDir(tmp_path / "r").resume_config(epochs=3, lr=0.2), extra_handlers=[_optimizer_log(resumed)], write=print)
    assert [lr for _, lr, *_ in resumed] == pytest.approx([lr for it, lr, *_ in straight if it > 10])


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        ({"batch_size": 4}, "--batch-size 8 -> 4"),
        ({"epoch_length": 3}, "--epoch-length None -> 3"),
        ({"dry_run": True}, "--dry-run False -> True"),
        ({"activation": "gelu"}, "--activation relu -> gelu"),
    ],
)
def test_overrides_that_cannot_be_honoured_are_refused_before_anything_is_written(
    tree: Path, tmp_path: Path, change: dict, flag: str
) -> None:
    run_dir = tmp_path / "r"
    train(_config(tree, run_dir), write=lambda s: None)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=f"cannot change {flag}"):
        train(RunDir(run_dir).resume_config(epochs=3, **change), write=lambda s: None)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    train(RunDir(run_dir).resume_config(epochs=3), write=lambda s: None)  # the plain resume still works


def test_a_finished_run_is_refused_without_a_new_event_file(tree: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    train(_config(tree, run_dir), write=lambda s: None)
    before = sorted(p.name for p in run_dir.iterdir())
    with pytest.raises(UserError, match="already finished 2 epochs"):
        train(RunDir(run_dir).resume_config(), write=lambda s: None)
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_a_mid_epoch_checkpoint_of_another_process_count_is_refused_at_the_start(tree: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    train(_config(tree, run_dir, epochs=1), write=lambda s: None)
    resume = Resume(run_dir)
    resume.iteration = 3  # as if stopped by Ctrl-C in the middle of the first epoch
    config = RunDir(run_dir).resume_config(epochs=2)
    resume.check(config, max_epochs=2, processes=1)
    with pytest.raises(UserError, match="written mid-epoch by 1 process.*this run has 2"):
        resume.check(config, max_epochs=2, processes=2)
