"""ignite_mlp.run.prepare: phase 2 loads the data, measures statistics when asked, and builds loaders."""

from pathlib import Path

import torch

from ignite_mlp import TrainConfig
from ignite_mlp.data import load_dataset
from ignite_mlp.run.plan import resolve_plan
from ignite_mlp.run.prepare import prepare_data


def test_prepare_summarises_and_builds_loaders(tree: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    config = TrainConfig(data=str(tree), run_dir=str(tmp_path / "r"), batch_size=8, eval_batch_size=5)
    data = prepare_data(resolve_plan(config, write=lines.append))
    assert len(data.dataset.train_labels) == 36 and len(data.train_loader) == 5  # ceil(36 / 8)
    assert [len(y) for _, y in data.val_loader] == [5, 5, 2]
    assert any("36" in line for line in lines)  # the summary was printed
    assert (data.mean, data.std) == ([0.5], [0.5])  # fixed normalisation: nothing measured


def test_dataset_statistics_are_measured_and_the_config_left_as_asked(tree: Path, tmp_path: Path) -> None:
    config = TrainConfig(data=str(tree), run_dir=str(tmp_path / "r"), normalize="dataset", batch_size=36)
    plan = resolve_plan(config, write=lambda s: None)
    data = prepare_data(plan)
    pixels = load_dataset(tree).train_images.float() / 255  # an independent computation
    assert torch.allclose(torch.tensor(data.mean), pixels.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(torch.tensor(data.std), pixels.std(dim=(0, 2, 3)), atol=1e-3)
    # The loaders normalise with the measured values: one batch of all 36 images has mean 0.
    data.train_loader.set_epoch(0)
    (x, _y), *rest = list(data.train_loader)
    assert not rest and torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert plan.config.mean == [0.5] and config.mean == [0.5]  # nothing written back into the config


def test_overfit_batches_take_a_random_fixed_subset(tree: Path) -> None:
    from ignite_mlp.run.prepare import build_loaders

    ds = load_dataset(tree)  # stored sorted by class: the first 8 images are all "ant"
    config = TrainConfig(batch_size=8, overfit_batches=1)
    loader, _ = build_loaders(ds, config, torch.device("cpu"))
    labels = [y.tolist() for _, y in loader]
    assert len(labels) == 1 and len(set(labels[0])) > 1 and not loader.shuffle
    assert labels == [y.tolist() for _, y in build_loaders(ds, config, torch.device("cpu"))[0]]
