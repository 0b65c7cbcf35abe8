"""Data augmentation as whole-batch tensor ops on uint8 images, on the training device.

No per-sample Python: one batch of random numbers decides every image's flip and crop, so
augmentation costs a few tensor kernels per batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ignite_mlp.choices import AUGMENTS

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2.

    >>> x = torch.arange(4, dtype=torch.uint8).reshape(1, 1, 1, 4)
    >>> sorted({tuple(random_flip(x, torch.Generator().manual_seed(s)).flatten().tolist()) for s in range(8)})
    [(0, 1, 2, 3), (3, 2, 1, 0)]
    """
    flip = torch.rand(len(x), generator=generator, device=generator.device) < 0.5
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Pad each image by ``padding`` zeros on every side and cut out a random window of the
    original size: a random shift by up to ``padding`` pixels in each direction."""
    if padding <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=generator.device).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=generator.device).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channels, rows, cols]


def make_augment(spec: str, padding: int = 4) -> Augment | None:
    """The augmentation named by ``--augment`` (none | flip | crop | flip+crop), or None."""
    if spec not in AUGMENTS:
        raise ValueError(f"unknown augmentation {spec!r}; choose one of {AUGMENTS}")
    steps: list[Augment] = []
    if "crop" in spec:
        steps.append(lambda x, g: random_crop(x, padding, g))
    if "flip" in spec:
        steps.append(random_flip)
    if not steps:
        return None

    def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for step in steps:
            x = step(x, generator)
        return x

    return augment
