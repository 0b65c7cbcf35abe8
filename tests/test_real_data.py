"""Real-data tests on the CIFAR-10 JPEG pack (skipped unless IGNITE_MLP_PACK points at it)."""

from pathlib import Path

import pytest
import torch

from ignite_mlp import TrainConfig, train
from ignite_mlp.data import Dataset, load_dataset


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    import os

    path = os.environ.get("IGNITE_MLP_PACK")
    if not path or not Path(path).is_file():
        pytest.skip("real-data test: set IGNITE_MLP_PACK to ../shared/data/cifar10-jpg.tar.gz")
    return load_dataset(path, cache_dir=tmp_path_factory.mktemp("pack-cache"))


def test_pack_loads_as_cifar10(cifar: Dataset) -> None:
    assert cifar.classes[:3] == ["airplane", "automobile", "bird"] and cifar.num_classes == 10
    assert cifar.train_images.shape == (50000, 3, 32, 32) and cifar.test_images.shape == (10000, 3, 32, 32)
    assert torch.bincount(cifar.train_labels).tolist() == [5000] * 10
    assert torch.bincount(cifar.test_labels).tolist() == [1000] * 10
    # Real photographs: mean brightness near CIFAR-10's published ~0.47, not noise at 0.5.
    mean = cifar.train_images[::10].float().mean().item() / 255  # every class, not just airplanes
    assert 0.42 < mean < 0.52


def test_smoke_run_on_a_subset(cifar: Dataset, tmp_path: Path) -> None:
    # 10,000 training images, 2 epochs, bigger steps than the tutorial: well above chance (10%).
    subset = Dataset(
        cifar.train_images[::5], cifar.train_labels[::5], cifar.test_images, cifar.test_labels, cifar.classes, "pack"
    )
    config = TrainConfig(run_dir=str(tmp_path / "run"), epochs=2, lr=0.01, progress=False)
    result = train(config, dataset=subset, write=lambda s: None)
    assert len(result.history["val_acc_epoch"]) == 2
    assert result.best_val_acc > 25
    assert result.best_checkpoint.is_file() and (tmp_path / "run" / "curves.png").is_file()
