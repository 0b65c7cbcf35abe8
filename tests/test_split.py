"""ignite_mlp.data.split and train --val-split: validation on held-out training images, the test
split read once, at the end, with the best weights."""

import json
from pathlib import Path

import pytest
import torch
from conftest import CountingDataset, TrainedRuns
from ignite.engine import Events

from ignite_mlp import TrainConfig, train
from ignite_mlp.cli import main
from ignite_mlp.data import Dataset, load_dataset
from ignite_mlp.data.split import split_validation, validation_count, validation_indices
from ignite_mlp.errors import UserError
from ignite_mlp.model import MLP


def _toy(counts: list[int]) -> Dataset:
    """Images whose only pixel is their own index, so every image can be traced through a split."""
    labels = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
    images = torch.arange(len(labels), dtype=torch.int64).reshape(-1, 1, 1, 1)
    return Dataset(images, labels, images[:2], labels[:2], [f"c{k}" for k in range(len(counts))], "toy")


def test_split_is_stratified_by_class_and_partitions_the_training_split() -> None:
    ds = _toy([10, 20, 30])
    val = split_validation(ds, 12, seed=3)
    # 12 of 60 is a fifth: by hand, 2 of 10, 4 of 20 and 6 of 30.
    assert torch.bincount(val.test_labels, minlength=3).tolist() == [2, 4, 6]
    assert torch.bincount(val.train_labels, minlength=3).tolist() == [8, 16, 24]
    held, kept = set(val.test_images.flatten().tolist()), set(val.train_images.flatten().tolist())
    assert not held & kept and held | kept == set(range(60))
    # Every image keeps its own label.
    assert torch.equal(ds.train_labels[val.test_images.flatten()], val.test_labels)


def test_same_seed_same_split_other_seed_other_split() -> None:
    labels = _toy([50, 50]).train_labels
    first, again = validation_indices(labels, 10, 7, 2), validation_indices(labels, 10, 7, 2)
    assert torch.equal(first, again)
    assert not torch.equal(first, validation_indices(labels, 10, 8, 2))


def test_counts_and_fractions_and_impossible_sizes() -> None:
    assert validation_count(0.2, 60) == 12 and validation_count(12, 60) == 12
    with pytest.raises(UserError, match="--val-split 60 holds out 60 of the 60"):
        validation_count(60, 60)
    with pytest.raises(UserError, match="--val-split must be a count"):
        TrainConfig(val_split=2.5)
    with pytest.raises(UserError, match="--val-split must be a count"):
        TrainConfig(val_split=-1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> TrainedRuns:
    """One-epoch runs, with and without a split, each trained once for the module."""
    return TrainedRuns(tmp_path_factory.mktemp("split-runs"), epochs=1)


SPLIT = dict(batch_size=8, val_split=9)  # 9 of the 36 training images held out


def test_test_split_is_read_only_after_training_and_matches_plain_pytorch(tree: Path, tmp_path: Path) -> None:
    loaded = load_dataset(tree)
    ds = CountingDataset.of(loaded)
    reads_while_training, validated = [], []

    def watch(trainer, evaluator, context) -> None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: reads_while_training.append(ds.test_reads))
        trainer.add_event_handler(Events.COMPLETED, lambda _: reads_while_training.append(ds.test_reads))
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: validated.append(len(e.state.output[1])))

    run_dir = tmp_path / "run"
    config = TrainConfig(
        data=str(tree), run_dir=str(run_dir), epochs=3, batch_size=8, lr=0.05, progress=False, val_split=9
    )
    result = train(config, extra_handlers=[watch], dataset=ds, write=lambda s: None)
    assert reads_while_training == [0, 0, 0, 0]
    assert ds.test_reads > 0
    # Validation ran on the 9 held-out training images, 3 epochs, not on the 12 test images.
    assert sum(validated) == 3 * 9
    # The recorded test metrics are a plain-PyTorch evaluation of the best checkpoint on the test split.
    model = MLP(loaded.in_features, loaded.num_classes, [128])
    model.load_state_dict(torch.load(result.best_checkpoint, weights_only=True))
    with torch.no_grad():
        logits = model((loaded.test_images.float() / 255 - 0.5) / 0.5)
    expected_acc = 100.0 * (logits.argmax(1) == loaded.test_labels).float().mean().item()
    expected_loss = torch.nn.functional.cross_entropy(logits, loaded.test_labels).item()
    assert result.test_acc == pytest.approx(expected_acc)
    assert result.test_loss == pytest.approx(expected_loss, rel=1e-5)
    history = json.loads((run_dir / "history.json").read_text())
    assert history["test_acc"] == pytest.approx(expected_acc) and history["test_loss"] == pytest.approx(expected_loss)
    assert "test accuracy" in result.report()


def test_hparams_entry_holds_the_test_metrics(runs: TrainedRuns) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = runs.run(**SPLIT)
    acc = EventAccumulator(str(result.run_dir)).Reload()
    assert acc.Scalars("hparams/test_acc")[-1].value == pytest.approx(result.test_acc)
    assert acc.Scalars("hparams/test_loss")[-1].value == pytest.approx(result.test_loss)


def test_without_the_option_nothing_changes(runs: TrainedRuns) -> None:
    result = runs.run()
    assert result.test_acc is None and "test_acc" not in json.loads((result.run_dir / "history.json").read_text())


def test_cli_too_large_split_is_one_line_exit_2(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["train", "--data", str(tree), "--run-dir", str(tmp_path / "r"), "--val-split", "36", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--val-split 36 holds out 36 of the 36" in err
    assert not (tmp_path / "r").exists()


def test_a_resume_keeps_the_seed_that_drew_the_split(
    runs: TrainedRuns, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = runs.copy(tmp_path / "r", **SPLIT)  # a run of seed 0
    before = (run / "history.json").read_bytes()
    capsys.readouterr()
    # Another seed would draw other held-out images, some of which the run has trained on.
    assert main(["train", "--resume", str(run), "--epochs", "2", "--seed", "5", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--seed 0 -> 5" in err
    assert (run / "history.json").read_bytes() == before
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0  # the same seed goes on


def test_without_a_split_a_resume_may_still_change_the_seed(runs: TrainedRuns, tmp_path: Path) -> None:
    run = runs.copy(tmp_path / "r")
    assert main(["train", "--resume", str(run), "--epochs", "2", "--seed", "5", "--no-progress"]) == 0


def test_evaluate_names_a_split_runs_test_images_as_such(runs: TrainedRuns) -> None:
    from ignite_mlp.inference.evaluate import evaluate

    result = runs.run(**SPLIT)
    evaluation = evaluate(result.run_dir)
    assert evaluation.accuracy == pytest.approx(result.test_acc)  # the test split, as recorded once
    assert f"test split loss {evaluation.loss:.4f}" in evaluation.report()
    assert "validation loss" in evaluate(runs.run().run_dir).report()
