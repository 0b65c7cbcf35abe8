"""The one function a trained run computes on images: preprocessing, the model in fp32, and the
mirror image averaged in when the run validated with ``--tta``.

Written once and used by everything that measures or ships a run: the evaluator of every epoch and
of the test split (on the loaders' preprocessed batches, so from :class:`EvalForward` on),
``evaluate``, ``predict``'s classifier and the exported ONNX and TorchScript graphs (from
:class:`Preprocess` on, uint8 images in). What a user ships therefore computes what the run
measured, image for image.

Evaluation is always fp32, whatever precision the run trained in: bf16 logits are coarse enough
to tie, an exported graph's runtime (onnxruntime on a CPU) has no bf16 matrix products to match
them with, and a forward pass is a small part of a run's arithmetic. Only the training step is
autocast (:func:`ignite_mlp.engine.precision.forward_fn`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ignite_mlp.config.train_config import TrainConfig
from ignite_mlp.data import normalization
from ignite_mlp.data.whitening import Whitening


class EvalForward(nn.Module):
    """A model's evaluation logits: ``model(x)``, or with ``tta`` the mean of the logits of each
    image and of its mirror image (the last axis flipped).

    For an affine model that is the model of the mean image:

    >>> model, x = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), torch.randn(3, 1, 2, 2)
    >>> torch.allclose(EvalForward(model, tta=True)(x), model((x + x.flip(3)) / 2))
    True
    """

    def __init__(self, model: nn.Module, tta: bool = False) -> None:
        super().__init__()
        self.model = model
        self.tta = tta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if self.tta:
            logits = (logits + self.model(x.flip(-1))) / 2
        return logits


class Preprocess(nn.Module):
    """uint8 ``(N, C, H, W)`` images to the float inputs the model was trained on:
    ``(x / 255 - mean) / std`` per channel, as ``x * scale + shift`` (the training loader's
    arithmetic, so the same values); or, for a run trained on whitened images,
    ``(x / 255 - mean) @ matrix`` over the flattened image (:mod:`ignite_mlp.data.whitening`)."""

    def __init__(
        self,
        scale: torch.Tensor,
        shift: torch.Tensor,
        description: dict[str, Any] | None = None,
        whitening: Whitening | None = None,
    ) -> None:
        super().__init__()
        # What it does, in the run's own terms (exported files carry it in their metadata).
        self.description = dict(description or {})
        self.register_buffer("scale", scale.float().reshape(1, -1, 1, 1))
        self.register_buffer("shift", shift.float().reshape(1, -1, 1, 1))
        self.whitened = whitening is not None
        # Registered either way (empty without a whitening): TorchScript compiles both branches.
        self.register_buffer("white_mean", whitening.mean.float() if whitening else torch.zeros(0))
        self.register_buffer("white_matrix", whitening.matrix.float() if whitening else torch.zeros(0, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.whitened:
            return x.float() * self.scale + self.shift
        flat = x.flatten(1).float() / 255 - self.white_mean
        return (flat @ self.white_matrix).reshape(x.shape)


def run_preprocessing(config: TrainConfig, channels: int, whitening: Whitening | None = None) -> Preprocess:
    """How a run with ``config`` turned uint8 images of ``channels`` channels into model inputs, as
    a module (uint8 ``(N, C, H, W)`` in, float out): the per-channel mean/std of its configuration
    (fixed, or measured on the training set), or the ``whitening`` it trained with (--whiten);
    anything a run adds to its preprocessing belongs here.

    >>> pre = run_preprocessing(TrainConfig(mean=[0.5], std=[0.5]), channels=3)
    >>> pre(torch.tensor([0, 255], dtype=torch.uint8).reshape(2, 1, 1, 1).expand(2, 3, 1, 1)).flatten().tolist()
    [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
    """
    scale, shift = normalization(config.mean, config.std, channels)
    if whitening is not None:  # the ZCA transform it trained with
        description = {"normalize": "(x / 255 - mean) @ matrix over the flattened image", "whiten": config.whiten}
        return Preprocess(scale, shift, description, whitening)
    return Preprocess(scale, shift, {"normalize": "(x / 255 - mean) / std", "mean": config.mean, "std": config.std})


def run_forward(model: nn.Module, config: TrainConfig, channels: int, whitening: Whitening | None = None) -> nn.Module:
    """The run's whole function on uint8 ``(N, C, H, W)`` images: :func:`run_preprocessing`, then
    :class:`EvalForward` with the run's ``--tta``; logits out. ``predict``, ``export`` and
    ``evaluate`` all call this one.

    >>> config = TrainConfig(mean=[0.5], std=[0.5], tta=True)
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    >>> images = torch.randint(0, 256, (5, 3, 2, 2), dtype=torch.uint8)
    >>> expected = EvalForward(model, tta=True)(images.float() / 127.5 - 1)
    >>> torch.allclose(run_forward(model, config, 3)(images), expected, atol=1e-6)
    True
    """
    return nn.Sequential(run_preprocessing(config, channels, whitening), EvalForward(model, config.tta))
