"""Evaluate a trained run's checkpoint on the validation split, and draw sample grids.

ignite-mlp evaluate runs/20261129-101500              # its best checkpoint
ignite-mlp evaluate runs/.../checkpoints/best_model_48_val_acc=51.4900.pt --data other.tar.gz
ignite-mlp samples --data ../shared/data/cifar10-jpg.tar.gz --out grid.png
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ignite.metrics import ConfusionMatrix
from torch import nn

from ignite_mlp.checkpoints import check_model_shapes, safe_load
from ignite_mlp.config import TrainConfig, resolve_device
from ignite_mlp.data import Dataset, TensorLoader, denormalize, load_dataset
from ignite_mlp.engine import create_evaluator
from ignite_mlp.errors import UserError
from ignite_mlp.model import MLP
from ignite_mlp.plots import image_grid
from ignite_mlp.whitening import load_whitening, whiten_images


@dataclass
class Evaluation:
    """Loss, accuracy (percent), per-class accuracy and the confusion matrix of one checkpoint."""

    checkpoint: Path
    epoch: int | None
    loss: float
    accuracy: float
    per_class: dict[str, float]
    confusion: torch.Tensor  # rows: true class, columns: predicted class

    def report(self) -> str:
        width = max(len(c) for c in self.per_class)
        lines = [
            f"checkpoint: {self.checkpoint}" + (f" (epoch {self.epoch})" if self.epoch else ""),
            f"validation loss {self.loss:.4f}, accuracy {self.accuracy:.2f}%",
            "per-class accuracy:",
        ]
        lines += [f"  {name:<{width}}  {acc:6.2f}%" for name, acc in self.per_class.items()]
        return "\n".join(lines)


def find_checkpoint(target: str | Path) -> tuple[Path, Path]:
    """(run directory, checkpoint) for a run directory (its best checkpoint) or a checkpoint file."""
    path = Path(target)
    if path.is_file():
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return run_dir, path
    if not (path / "config.json").is_file():
        raise UserError(f"{target}: neither a run directory (no config.json) nor a checkpoint file")
    best = sorted((path / "checkpoints").glob("best_*.pt"))
    if not best:
        raise UserError(f"{target}: no best checkpoint in {path / 'checkpoints'}; has an epoch finished?")
    return path, best[-1]


def run_config(run_dir: Path) -> TrainConfig:
    """The configuration a run was trained with (its config.json)."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{run_dir}: cannot read config.json ({e}); evaluate needs the run's configuration") from None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in saved.items() if k in known and k != "resume"})


def evaluate(
    target: str | Path, data: str | None = None, device: str = "auto", dataset: Dataset | None = None
) -> Evaluation:
    """Evaluate the checkpoint of ``target`` on the validation split of the run's data (or ``data``)."""
    run_dir, checkpoint = find_checkpoint(target)
    config = run_config(run_dir)
    state = safe_load(checkpoint)
    # Best checkpoints hold the weights validated (the average, with --ema-momentum); last ones a
    # dict with "model" and, with --ema-momentum, "ema_model", the weights that were validated.
    weights = state["ema_model"] if "ema_model" in state else state.get("model", state)
    if dataset is None:
        dataset = load_dataset(data or config.data, config.cache_dir, download=False)
    model = MLP(
        dataset.in_features,
        dataset.num_classes,
        config.hidden_sizes,
        config.dropout,
        config.norm,
        config.activation,
        config.blocks,
        config.expansion,
    )
    check_model_shapes(model, weights, checkpoint)
    model.load_state_dict(weights)
    torch_device = resolve_device(device)
    model.to(torch_device)
    # As in training: the run's own whitening (whitening.pt), and TTA if it validated with it.
    images = dataset.test_images
    if config.whiten != "none":
        images = whiten_images(images, load_whitening(run_dir))
    loader = TensorLoader(
        images, dataset.test_labels, config.eval_batch_size, config.mean, config.std, device=torch_device
    )
    evaluator = create_evaluator(model, nn.CrossEntropyLoss(), torch_device, config.precision, config.tta)
    ConfusionMatrix(dataset.num_classes, device=torch_device).attach(evaluator, "confusion")
    metrics = evaluator.run(loader).metrics
    confusion = metrics["confusion"].cpu().long()
    per_class = 100.0 * confusion.diag().double() / confusion.sum(1).clamp_min(1).double()
    epoch = re.search(r"_model_(\d+)_", checkpoint.name)
    return Evaluation(
        checkpoint=checkpoint,
        epoch=int(epoch.group(1)) if epoch else None,
        loss=float(metrics["loss"]),
        accuracy=100.0 * float(metrics["accuracy"]),
        per_class={name: float(acc) for name, acc in zip(dataset.classes, per_class.tolist(), strict=True)},
        confusion=confusion,
    )


def sample_grid(data: str | Path, count: int = 32, seed: int = 0, mean: float = 0.5, std: float = 0.5) -> Any:
    """A grid of random training images titled with their class, as the tutorial shows them:
    batches are normalised as for training, then the normalisation is undone for display."""
    dataset = load_dataset(data, download=True)
    loader = TensorLoader(
        dataset.train_images,
        dataset.train_labels,
        min(count, len(dataset.train_labels)),
        [mean],
        [std],
        shuffle=True,
        seed=seed,
    )
    x, y = next(iter(loader))
    return image_grid(denormalize(x, [mean], [std]), [dataset.classes[i] for i in y.tolist()])
