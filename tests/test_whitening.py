"""ignite_mlp.data.whitening: ZCA measured on the training split, checked against numpy's own algebra."""

import numpy as np
import pytest
import torch

from ignite_mlp.data.whitening import (
    flip_permutation,
    whiten_images,
    zca,
)
from ignite_mlp.errors import UserError


def correlated_images(n: int = 3000, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 3, 4, 4) images whose pixels are strongly correlated, like natural images:
    a smooth 2x2 pattern upsampled, plus a little noise, and not mirror-symmetric."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0, 1, (n, 3, 2, 2))
    smooth = coarse.repeat(2, axis=2).repeat(2, axis=3)
    ramp = np.linspace(0, 1, 4)[None, None, None, :]  # a left-right asymmetry
    pixels = 128 + 40 * smooth + 20 * ramp * coarse[:, :1, :1, :1] + rng.normal(0, 6, (n, 3, 4, 4))
    return torch.from_numpy(np.clip(pixels, 0, 255).astype(np.uint8))


def covariance(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float64)
    x = x - x.mean(0)
    return x.T @ x / len(x)


def test_exact_zca_gives_identity_covariance_on_the_training_split() -> None:
    images = correlated_images()
    whitened = whiten_images(images, zca(images, regularizer=0.0, flip_symmetric=False)).numpy()
    corr = np.corrcoef(images.numpy().reshape(len(images), -1), rowvar=False)
    assert corr[0, 1] > 0.5  # neighbouring pixels of the input are strongly correlated
    np.testing.assert_allclose(covariance(whitened), np.eye(48), atol=2e-3)
    np.testing.assert_allclose(whitened.reshape(len(images), -1).mean(0), 0, atol=1e-4)


def test_flip_symmetric_zca_whitens_images_with_their_mirrors_and_commutes_with_flipping() -> None:
    images = correlated_images()
    w = zca(images, regularizer=0.0)
    both = torch.cat([images, images.flip(3)])
    np.testing.assert_allclose(covariance(whiten_images(both, w).numpy()), np.eye(48), atol=2e-3)
    torch.testing.assert_close(whiten_images(images.flip(3), w), whiten_images(images, w).flip(3), atol=1e-4, rtol=0)


def test_regularised_zca_is_the_eigen_formula() -> None:
    images = correlated_images()
    w = zca(images, regularizer=0.1, flip_symmetric=False)
    # Independently: eigen-decompose the covariance with numpy and apply the formula.
    x = images.numpy().reshape(len(images), -1) / 255.0
    evals, evecs = np.linalg.eigh(covariance(x))
    eps = 0.1 * evals.mean()
    kept = evals / (evals + eps)
    expected = evecs @ np.diag(1 / np.sqrt((evals + eps) * kept.mean())) @ evecs.T
    np.testing.assert_allclose(w.matrix.numpy(), expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
    # The whitened training images keep kept/mean(kept) of each direction's variance: on average 1.
    cov = covariance(whiten_images(images, w).numpy())
    np.testing.assert_allclose(np.trace(cov) / 48, 1.0, atol=1e-3)
    np.testing.assert_allclose(evecs.T @ cov @ evecs, np.diag(kept / kept.mean()), atol=2e-3)


def test_exact_zca_of_too_few_images_says_to_regularise() -> None:
    with pytest.raises(UserError, match="regulariser"):
        zca(correlated_images(n=10), regularizer=0.0)


def test_flip_permutation_mirrors_the_width_axis() -> None:
    x = torch.arange(2 * 2 * 3).reshape(2, 2, 3)
    assert torch.equal(x.flatten()[flip_permutation((2, 2, 3))], x.flip(2).flatten())


def test_whitening_of_another_image_size_is_refused() -> None:
    w = zca(correlated_images(n=200), 0.1)
    with pytest.raises(UserError, match="image size"):
        whiten_images(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), w)
