"""ZCA whitening of the input images, measured once on the training split and kept with the run.

Neighbouring pixels of natural images are strongly correlated; a fully connected network has
to undo that correlation with its first layer, and plain gradient descent does it slowly.
Whitening decorrelates the pixels before training, which helps an MLP on CIFAR-10 by a few
points (docs/recipes.md). ZCA is the whitening closest to the original image, so the
whitened input still has the image layout: flips and crops act on it as on pixels.

Whitening a batch costs a dense ``D x D`` product (``D = 3072`` for CIFAR-10), about half a
strong MLP's training step; so the run whitens every image once (:func:`whiten_images`) and
trains on the float copy. The statistics are kept in the run directory (written and read by
:class:`ignite_mlp.run.rundir.RunDir`), so a resume, ``evaluate`` and any later user of the run
whiten exactly as training did.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ignite_mlp.config.choices import WHITENINGS
from ignite_mlp.data import Dataset
from ignite_mlp.errors import UserError


@dataclass
class Whitening:
    """``whiten(x) = (x / 255 - mean) @ matrix`` for flattened uint8 images ``x``."""

    mean: torch.Tensor  # (D,) float32, in [0, 1] pixel units
    matrix: torch.Tensor  # (D, D) float32, symmetric

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "matrix": self.matrix}


def flip_permutation(shape: tuple[int, int, int]) -> torch.Tensor:
    """Indices that mirror a flattened ``(C, H, W)`` image left-right.

    >>> flip_permutation((1, 1, 3)).tolist()
    [2, 1, 0]
    """
    return torch.arange(shape[0] * shape[1] * shape[2]).reshape(shape).flip(2).flatten()


def pixel_covariance(images: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel mean ``(D,)`` and covariance ``(D, D)`` (float64) of uint8 ``(N, C, H, W)`` images.

    Each chunk is centred on the mean before its product, so nothing cancels; the products run
    in float32 (the slow part: float64 would take several times longer) and sum in float64.
    """
    n = len(images)
    flat = images.flatten(1)
    mean = torch.zeros(flat.shape[1], dtype=torch.float64)
    for lo in range(0, n, chunk):
        mean += flat[lo : lo + chunk].to(torch.float64).sum(0)
    mean = mean / (255.0 * n)
    mean32 = mean.float()
    cov = torch.zeros(flat.shape[1], flat.shape[1], dtype=torch.float64)
    for lo in range(0, n, chunk):
        block = flat[lo : lo + chunk].float().div_(255).sub_(mean32)
        cov += (block.T @ block).double()
    return mean, cov / n


def zca(images: torch.Tensor, regularizer: float = 0.1, flip_symmetric: bool = True) -> Whitening:
    """The ZCA whitening of uint8 ``(N, C, H, W)`` training images.

    ``regularizer`` is added to every eigenvalue of the pixel covariance as a share of their
    mean: 0 whitens exactly (the training images come out with identity covariance); 0.1
    leaves the faint high-frequency directions damped instead of amplifying their noise. The
    result is scaled to unit average variance per pixel. With ``flip_symmetric`` the
    statistics are those of the images together with their mirror images, so whitening
    commutes with a left-right flip: flipping a whitened image is whitening the flipped image.
    """
    if regularizer < 0:
        raise ValueError(f"regularizer must be >= 0, got {regularizer}")
    mean, cov = pixel_covariance(images)
    if flip_symmetric:
        perm = flip_permutation(tuple(images.shape[1:]))
        cov = (cov + cov[perm][:, perm]) / 2
        mean = (mean + mean[perm]) / 2
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.clamp_min(0)
    eps = regularizer * evals.mean()
    if eps == 0 and bool((evals <= 1e-12 * evals.max()).any()):
        raise UserError(
            "--whiten zca with --whiten-regularizer 0: the training images' covariance is singular "
            "(fewer images than pixels, or constant pixels); pass a regulariser such as 0.1"
        )
    kept = evals / (evals + eps)  # the variance each direction keeps; 1 when eps is 0
    scale = (evals + eps).rsqrt() / kept.mean().sqrt()
    matrix = (evecs * scale) @ evecs.T
    return Whitening(mean.float(), matrix.float())


def whiten_images(images: torch.Tensor, whitening: Whitening, chunk: int = 4096) -> torch.Tensor:
    """Float ``(N, C, H, W)`` whitened copies of uint8 images, a chunk at a time.

    Training and ``evaluate`` both whiten through this function, so they see the same values.
    """
    n = len(images)
    flat = images.flatten(1)
    if flat.shape[1] != len(whitening.mean):
        raise UserError(
            f"the whitening was measured on images of {len(whitening.mean)} values, these have {flat.shape[1]}; "
            "evaluate on data of the same image size as the run's"
        )
    mean, matrix = whitening.mean.to(images.device), whitening.matrix.to(images.device)
    out = torch.empty(flat.shape, device=images.device)
    for lo in range(0, n, chunk):
        block = flat[lo : lo + chunk].float().div_(255).sub_(mean)
        torch.mm(block, matrix, out=out[lo : lo + chunk])
    return out.reshape(images.shape)


def prepare_whitening(
    method: str,
    regularizer: float,
    images: torch.Tensor,
    saved: Whitening | None = None,
    write: Callable[[str], None] = print,
) -> Whitening | None:
    """The run's whitening: None for ``--whiten none``; the ``saved`` one (a resumed run's) when
    given; else measured on the training ``images``."""
    if method == "none":
        return None
    if method != "zca":
        raise ValueError(f"unknown whitening {method!r}; choose one of {WHITENINGS}")
    if saved is not None:
        return saved
    start = time.perf_counter()
    whitening = zca(images, regularizer)
    write(f"ZCA whitening measured on the {len(images)} training images in {time.perf_counter() - start:.1f}s")
    return whitening


def whiten_dataset(dataset: Dataset, whitening: Whitening | None) -> Dataset:
    """``dataset`` with both splits whitened (float images), or itself without a whitening.
    Loaders serve float images as they are (see :class:`ignite_mlp.data.TensorLoader`)."""
    if whitening is None:
        return dataset
    return dataclasses.replace(
        dataset,
        train_images=whiten_images(dataset.train_images, whitening),
        test_images=whiten_images(dataset.test_images, whitening),
    )
