"""ignite_mlp.inference.evaluate: evaluating a run's best checkpoint agrees with its training history."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from ignite_mlp import TrainConfig, train
from ignite_mlp.errors import UserError
from ignite_mlp.inference.evaluate import evaluate


def test_evaluate_agrees_with_the_history_of_that_epoch(tree: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = TrainConfig(data=str(tree), run_dir=str(run), epochs=4, batch_size=8, lr=0.05, progress=False)
    result = train(config, write=lambda s: None)
    history = json.loads((run / "history.json").read_text())
    report = evaluate(run)
    assert report.epoch == result.best_epoch
    assert report.accuracy == pytest.approx(history["val_acc_epoch"][report.epoch - 1], abs=1e-4)
    assert report.loss == pytest.approx(history["val_loss"][report.epoch - 1], abs=1e-5)
    # The confusion matrix by hand: 4 test images per class, rows are true classes.
    assert report.confusion.sum(1).tolist() == [4, 4, 4]
    assert report.per_class == pytest.approx(
        {c: 100 * report.confusion[i, i].item() / 4 for i, c in enumerate(["ant", "bee", "cat"])}
    )
    # A checkpoint file works too, and a last checkpoint (a dict with "model") as well.
    assert evaluate(report.checkpoint).accuracy == report.accuracy
    last = evaluate(result.last_checkpoint)
    assert last.accuracy == pytest.approx(history["val_acc_epoch"][-1], abs=1e-4)


def test_evaluate_bad_targets(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="neither a run directory"):
        evaluate(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="no best checkpoint"):
        evaluate(tmp_path)


def test_evaluate_refuses_an_unsafe_checkpoint(tree: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(TrainConfig(data=str(tree), run_dir=str(run), epochs=1, progress=False), write=lambda s: None)
    best = next((run / "checkpoints").glob("best_*.pt"))
    torch.save({"model": print}, best)  # a pickled global function: needs arbitrary unpickling
    with pytest.raises(UserError, match="refused to load"):
        evaluate(run)


def test_predictions_and_misclassified_grid_match_plain_pytorch(tree: Path, tmp_path: Path) -> None:
    from ignite_mlp.data import load_dataset
    from ignite_mlp.inference.evaluate import Evaluation, misclassified_grid
    from ignite_mlp.plots import GRID_PAD_PX, TITLE_LINE_PX, grid_scale

    run = tmp_path / "run"
    train(TrainConfig(data=str(tree), run_dir=str(run), epochs=2, progress=False), write=lambda s: None)
    report = evaluate(run)
    dataset = load_dataset(tree)
    # The checkpoint's MLP (here 8x8x3 = 192 -> 128 -> 3) by hand: normalise, two matmuls.
    weights = torch.load(report.checkpoint, weights_only=True)
    x = (dataset.test_images.float() / 255 - 0.5) / 0.5
    hidden = torch.relu(x.flatten(1) @ weights["layers.1.weight"].T + weights["layers.1.bias"])
    expected = (hidden @ weights["layers.3.weight"].T + weights["layers.3.bias"]).argmax(1)
    assert report.predictions.tolist() == expected.tolist()
    assert report.accuracy == pytest.approx(100 * (expected == dataset.test_labels).double().mean().item())
    wrong = int((expected != dataset.test_labels).sum())
    assert wrong >= 2, "two epochs on the tiny tree should leave mistakes to draw"
    # Two cells of 8x8 images enlarged, each with a two-line title ("pred X", "true Y").
    cell = 8 * grid_scale(8, 8)
    grid = misclassified_grid(report, dataset, count=2)
    assert grid.shape == (cell + 2 * TITLE_LINE_PX + 2 * GRID_PAD_PX, 2 * cell + 3 * GRID_PAD_PX, 3)
    perfect = Evaluation(report.checkpoint, 1, 0.0, 100.0, report.per_class, report.confusion, dataset.test_labels)
    assert misclassified_grid(perfect, dataset) is None


def test_evaluate_picks_the_best_file_by_its_recorded_score_not_its_name(tmp_path: Path) -> None:
    from ignite_mlp.run.rundir import find_checkpoint

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.json").write_text("{}")

    def files(*names: str) -> Path:
        for old in (tmp_path / "checkpoints").iterdir():
            old.unlink()
        for name in names:
            (tmp_path / "checkpoints" / name).write_bytes(b"")
        return find_checkpoint(tmp_path)[1]

    # By name, epoch 9 sorts after epoch 10; by score, epoch 10 is the better one.
    assert files("best_model_9_val_acc=50.0000.pt", "best_model_10_val_acc=60.0000.pt").name.startswith("best_model_10")
    # Killed between writing a new best and deleting the old one: the higher score wins, whatever the epoch.
    assert files("best_model_3_val_acc=70.0000.pt", "best_model_12_val_acc=65.5000.pt").name.startswith("best_model_3_")
    # Equal scores: the earliest epoch, the one Ignite's Checkpoint keeps.
    assert files("best_model_4_val_acc=70.0000.pt", "best_model_11_val_acc=70.0000.pt").name.startswith("best_model_4_")
    with pytest.raises(UserError, match="no best checkpoint"):
        files("best_notes.pt")  # not a file the best-model checkpoint writes


def test_a_run_records_its_classes_and_evaluate_refuses_other_data(tree: Path, tmp_path: Path) -> None:
    import shutil

    from ignite_mlp.data import load_dataset

    run = tmp_path / "run"
    train(TrainConfig(data=str(tree), run_dir=str(run), epochs=1, progress=False), write=lambda s: None)
    saved = json.loads((run / "config.json").read_text())
    assert (saved["classes"], saved["image_shape"]) == (["ant", "bee", "cat"], [3, 8, 8])  # the folders, the PNGs
    # Same count and shape, another name: the scores would be against the wrong labels.
    renamed = tmp_path / "renamed"
    shutil.copytree(tree, renamed)
    for split in ("train", "test"):
        (renamed / split / "cat").rename(renamed / split / "dog")
    with pytest.raises(UserError, match=r"only in the run: \['cat'\]; only in the data: \['dog'\]"):
        evaluate(run, data=str(renamed))
    # Same names in another label order, and another image shape with as many inputs (3x16x4 = 3x8x8).
    own = load_dataset(str(tree))
    swapped = dataclasses.replace(own, classes=["bee", "ant", "cat"])
    with pytest.raises(UserError, match="in another order"):
        evaluate(run, dataset=swapped)
    reshaped = dataclasses.replace(
        own, train_images=own.train_images.reshape(-1, 3, 16, 4), test_images=own.test_images.reshape(-1, 3, 16, 4)
    )
    with pytest.raises(UserError, match="its images are 3x16x4 but .* was trained on 3x8x8 images"):
        evaluate(run, dataset=reshaped)
    assert evaluate(run, data=str(tree)).accuracy >= 0  # its own data passes


def test_evaluate_shape_mismatch_speaks_of_the_run_not_of_resuming(tree: Path, tmp_path: Path) -> None:
    from conftest import make_tree

    run = tmp_path / "run"
    train(TrainConfig(data=str(tree), run_dir=str(run), epochs=1, progress=False), write=lambda s: None)
    # A run written before runs recorded their data: only the weights' shapes can tell.
    saved = json.loads((run / "config.json").read_text())
    for key in ("classes", "image_shape"):
        del saved[key]
    (run / "config.json").write_text(json.dumps(saved))
    small = make_tree(tmp_path / "small", size=4)
    with pytest.raises(UserError, match="architecture differs") as caught:
        evaluate(run, data=str(small))
    assert "--hidden-sizes" not in str(caught.value) and "resume" not in str(caught.value)
    assert f"its own run directory ({run})" in str(caught.value)


def test_misclassified_grid_shows_several_classes_of_data_sorted_by_class(tree: Path) -> None:
    import numpy as np

    from ignite_mlp.data import load_dataset
    from ignite_mlp.inference.evaluate import Evaluation, misclassified_grid
    from ignite_mlp.plots import image_grid

    dataset = load_dataset(tree)  # 4 test images per class, stored class after class
    labels = dataset.test_labels
    assert labels.tolist() == sorted(labels.tolist())
    wrong_everywhere = (labels + 1) % 3  # every image wrong: the first 3 mistakes are all ants
    evaluation = Evaluation(Path("x.pt"), 1, 1.0, 0.0, {}, torch.zeros(3, 3), wrong_everywhere)
    titles = ["pred bee\ntrue ant", "pred cat\ntrue bee", "pred ant\ntrue cat"]
    expected = image_grid(dataset.test_images[[0, 4, 8]], titles)  # the first ant, bee and cat
    assert np.array_equal(misclassified_grid(evaluation, dataset, count=3), expected)
