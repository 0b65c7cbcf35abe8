"""ignite_mlp.augment: each augmentation does what it says, checked pixel by pixel."""

import torch
import torch.nn.functional as F

from ignite_mlp.augment import make_augment, random_crop, random_flip


def _images(n: int = 64) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_flip_is_torch_flip_for_the_flipped_images_and_identity_for_the_rest() -> None:
    x = _images()
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [bool(torch.equal(o, xi.flip(2))) for o, xi in zip(out, x, strict=True)]  # flip width (last dim)
    kept = [bool(torch.equal(o, xi)) for o, xi in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 16 < sum(flipped) < 48  # about half of 64
    assert torch.equal(
        out[[i for i, f in enumerate(flipped) if f]], torch.flip(x[[i for i, f in enumerate(flipped) if f]], [3])
    )


def test_crop_keeps_shape_and_moves_content_within_the_padding() -> None:
    x = _images()
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x, (2, 2, 2, 2))
    shifts = []
    for o, p in zip(out, padded, strict=True):
        # Each output must be exactly one 8x8 window of its zero-padded image.
        matches = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(o, p[:, dy : dy + 8, dx : dx + 8])]
        assert matches, "a crop must be a window of the padded image"
        shifts.append(matches[0])
    assert len(set(shifts)) > 5, "different images get different shifts"
    assert any(s != (2, 2) for s in shifts), "content moves"


def test_augment_is_reproducible_per_generator_seed() -> None:
    augment = make_augment("flip+crop", 2)
    x = _images()
    a = augment(x, torch.Generator().manual_seed(5))
    b = augment(x, torch.Generator().manual_seed(5))
    c = augment(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert make_augment("none") is None
