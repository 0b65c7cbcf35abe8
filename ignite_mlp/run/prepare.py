"""Phase 2 of a run: the data set, its summary and statistics, and this rank's loaders."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ignite_mlp.config.train_config import TrainConfig
from ignite_mlp.data import Dataset, TensorLoader, channel_stats, load_dataset, summarize
from ignite_mlp.data.augment import make_augment, make_mix
from ignite_mlp.data.split import split_validation, validation_count
from ignite_mlp.data.whitening import Whitening, prepare_whitening, whiten_dataset
from ignite_mlp.distributed import ranks
from ignite_mlp.handlers.guardrails import setup_warnings
from ignite_mlp.run.plan import RunPlan
from ignite_mlp.run.rundir import RunDir


@dataclass
class RunData:
    """The data set, the normalisation and precision resolved for it, and this rank's loaders."""

    dataset: Dataset
    train_loader: TensorLoader
    val_loader: TensorLoader
    # The per-channel mean and std the loaders normalise with: measured on the training set
    # with --normalize dataset, otherwise the config's own.
    mean: list[float]
    std: list[float]
    # --whiten: the ZCA transform the loaders applied (saved in the run directory), or None.
    whitening: Whitening | None = None
    # --val-split: the data as loaded, whose test split is evaluated once at the end; None without it.
    held_out: Dataset | None = None

    @property
    def loaded(self) -> Dataset:
        """The data set as loaded, before a --val-split carved it: what the run records (its fingerprint)."""
        return self.held_out if self.held_out is not None else self.dataset

    def normalized(self, config: TrainConfig) -> TrainConfig:
        """``config`` with the mean and std these loaders normalise with (measured with
        ``--normalize dataset``): what the model, the finder and the spec are built for."""
        return dataclasses.replace(config, mean=list(self.mean), std=list(self.std))


def prepare_data(plan: RunPlan, dataset: Dataset | None = None) -> RunData:
    """Load the data (once per machine), print its summary and the precision, measure the
    statistics if asked, and build this rank's loaders."""
    config, write = plan.config, plan.write
    if dataset is None:
        with ranks.main_first():  # one download and decode per machine; the others read the cache
            dataset = load_dataset(config.data, config.cache_dir, config.download, progress=plan.progress)
    if plan.resume is not None:  # the data it trained on, or a one-line refusal before anything is written
        plan.resume.check_data(dataset)
    held_out = None
    if config.val_split:  # validate on training images; the test split waits for the end (data/split.py)
        held_out = dataset
        dataset = split_validation(dataset, validation_count(config.val_split, len(dataset.train_labels)), config.seed)
    write(summarize(dataset, config.batch_size, held="validation" if held_out is not None else "test"))
    config.check_data(dataset.image_shape)  # the option checks that need the image shape
    write(plan.precision.line())  # (decided with the plan: run/plan.py)
    if plan.distributed:
        size = ranks.world_size()
        write(
            f"{size} processes ({ranks.backend()}): each trains on {config.batch_size // size} images of every "
            f"batch of {config.batch_size} and validates on a 1/{size} share of the test images"
        )
    if config.normalize == "dataset" and plan.resume is None:
        # Measured once; the run's recorded configuration keeps the values (through the RunSpec), so a resume or
        # evaluate reuses them. The loaders below normalise with them.
        mean, std = channel_stats(dataset.train_images)
        config = dataclasses.replace(config, mean=mean, std=std)
        write(f"normalisation from the training set: mean {mean}, std {std}")
    # --whiten: measured once (a resumed run reads the one it saved); the loaders serve whitened copies.
    resumed = config.whiten != "none" and plan.resume is not None
    saved = RunDir(plan.run_dir).read_whitening(dataset.in_features) if resumed else None
    whitening = prepare_whitening(config.whiten, config.whiten_regularizer, dataset.train_images, saved, write)
    served = whiten_dataset(dataset, whitening)
    train_loader, val_loader = build_loaders(served, config, plan.device, ranks.rank(), ranks.world_size())
    for warning in setup_warnings(config.batch_size, config.hidden_sizes, plan.device):
        write(warning)
    return RunData(dataset, train_loader, val_loader, config.mean, config.std, whitening, held_out)


def build_loaders(
    dataset: Dataset, config: TrainConfig, device: torch.device, rank: int = 0, world_size: int = 1
) -> tuple[TensorLoader, TensorLoader]:
    """Shuffled training batches and ordered validation batches, both from device memory.

    With ``overfit_batches=N`` the training set is N batches of random images, in a fixed order. With
    several processes each loader serves this ``rank``'s share (see :class:`TensorLoader`): an
    equal part of every training batch, and every ``world_size``-th validation image, so each
    image is validated exactly once; the validation batch is rounded up to split evenly.
    """
    images, labels = dataset.train_images, dataset.train_labels
    if config.overfit_batches:
        # A seeded random subset: the data are stored sorted by class, so the first N batches
        # would hold one class, which a constant prediction "memorises".
        pick = torch.randperm(len(labels), generator=torch.Generator().manual_seed(config.seed))
        pick = pick[: config.overfit_batches * config.batch_size]
        images, labels = images[pick], labels[pick]
    train_loader = TensorLoader(
        images,
        labels,
        config.batch_size,
        config.mean,
        config.std,
        shuffle=not config.overfit_batches,
        seed=config.seed,
        device=device,
        buffers=3,  # Ignite consumes each batch before drawing the next: recycling is safe
        augment=None if config.overfit_batches else make_augment(config.augment, config.crop_padding),
        mix=None if config.overfit_batches else make_mix(config.mixup, config.cutmix, len(dataset.classes)),
        rank=rank,
        world_size=world_size,
    )
    return train_loader, validation_loader(dataset.test_images, dataset.test_labels, config, device, rank, world_size)


def validation_loader(
    images: torch.Tensor, labels: torch.Tensor, config: TrainConfig, device: torch.device, rank: int, world_size: int
) -> TensorLoader:
    """Ordered evaluation batches of ``images``: the validation split's, or the test split's once at the end."""
    return TensorLoader(
        images,
        labels,
        -(-config.eval_batch_size // world_size) * world_size,
        config.mean,
        config.std,
        shuffle=False,
        device=device,
        # Normalise validation data once, unless the float copy would be large (> 1 GiB).
        keep_normalized=images.numel() * 4 <= 2**30,
        rank=rank,
        world_size=world_size,
        even_shards=False,  # validation runs no collective per batch: shards may differ by one image
    )
