"""Data augmentation as whole-batch tensor ops on uint8 images, on the training device.

No per-sample Python: one batch of random numbers decides every image's flip and crop, so
augmentation costs a few tensor kernels per batch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ignite_mlp.config.choices import AUGMENTS

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


# ---------------------------------------------------------------- batch mixing (labels mixed too)

# Mixing takes a normalised float batch and its integer labels and returns the mixed batch with
# soft labels (N, classes), which nn.CrossEntropyLoss takes as class probabilities.
Mix = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def sample_beta(alpha: float, generator: torch.Generator) -> float:
    """One draw of Beta(alpha, alpha), from ``generator`` (torch's Beta takes no generator).

    >>> 0.0 <= sample_beta(0.2, torch.Generator().manual_seed(0)) <= 1.0
    True
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mixup(x: torch.Tensor, y: torch.Tensor, lam: float, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp with weight ``lam``: image i becomes ``lam * x[i] + (1 - lam) * x[N-1-i]``, and its
    label the same mixture of the two one-hot labels (the partner is the batch reversed: the
    batch is already shuffled, and a reversal needs no gather).

    >>> x, y = torch.tensor([[0.0], [4.0]]), torch.tensor([0, 1])
    >>> mixed, soft = mixup(x, y, 0.75, 2)
    >>> mixed.flatten().tolist(), soft.tolist()
    ([1.0, 3.0], [[0.75, 0.25], [0.25, 0.75]])
    """
    one_hot = F.one_hot(y, num_classes).to(x.dtype)
    return torch.lerp(x.flip(0), x, lam), torch.lerp(one_hot.flip(0), one_hot, lam)


def cutmix(
    x: torch.Tensor, y: torch.Tensor, lam: float, num_classes: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix: paste into each image the same random box of its partner (the batch reversed),
    a box of about ``1 - lam`` of the area; the labels mix by the area actually pasted."""
    n, _, h, w = x.shape
    cut_h, cut_w = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
    cy, cx = (int(torch.randint(0, size, (1,), generator=generator, device=generator.device)) for size in (h, w))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, h)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, w)
    mixed = x.clone()
    mixed[:, :, top:bottom, left:right] = x.flip(0)[:, :, top:bottom, left:right]
    kept = 1.0 - (bottom - top) * (right - left) / (h * w)
    one_hot = F.one_hot(y, num_classes).to(x.dtype)
    return mixed, torch.lerp(one_hot.flip(0), one_hot, kept)


def make_mix(mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> Mix | None:
    """The batch mixing of ``--mixup`` and ``--cutmix`` (each a Beta parameter, 0 for off), or None.
    With both on, each batch takes one of them at random."""
    choices = [name for name, alpha in (("mixup", mixup_alpha), ("cutmix", cutmix_alpha)) if alpha > 0]
    if not choices:
        return None

    def mix(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        pick = choices[0]
        if len(choices) == 2:
            pick = choices[int(torch.randint(0, 2, (1,), generator=generator, device=generator.device))]
        if pick == "mixup":
            return mixup(x, y, sample_beta(mixup_alpha, generator), num_classes)
        return cutmix(x, y, sample_beta(cutmix_alpha, generator), num_classes, generator)

    return mix
