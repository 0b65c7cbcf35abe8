"""ignite_mlp.data.augment: each augmentation does what it says, checked pixel by pixel."""

import torch
import torch.nn.functional as F

from ignite_mlp.data import TensorLoader
from ignite_mlp.data.augment import cutmix, make_augment, make_mix, mixup, random_crop, random_flip


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


def test_mixup_mixes_each_image_and_label_with_the_reversed_batch_by_hand() -> None:
    x = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 1])
    mixed, soft = mixup(x, y, 0.7, num_classes=3)
    for i in range(4):
        j = 3 - i  # the partner: the batch reversed
        torch.testing.assert_close(mixed[i], 0.7 * x[i] + 0.3 * x[j])
        expected = [0.0, 0.0, 0.0]
        expected[int(y[i])] += 0.7
        expected[int(y[j])] += 0.3
        torch.testing.assert_close(soft[i], torch.tensor(expected))


def test_cutmix_pastes_one_box_of_the_partner_and_mixes_labels_by_its_area() -> None:
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    y = torch.tensor([0, 1])
    for seed in range(10):
        mixed, soft = cutmix(x, y, 0.75, 2, torch.Generator().manual_seed(seed))
        from_partner = mixed[0] != x[0]
        assert torch.equal(mixed[0][from_partner], x[1][from_partner])  # pasted pixels come from image 1
        rows, cols = from_partner[0].nonzero(as_tuple=True)
        if len(rows):  # the pasted pixels form one rectangle
            box = from_partner[0, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            assert bool(box.all())
        share = from_partner.float().mean().item()  # area counted from the pixels themselves
        torch.testing.assert_close(soft[0], torch.tensor([1 - share, share]))
        torch.testing.assert_close(soft[1], torch.tensor([share, 1 - share]))
        assert share <= 0.25 + 1e-6  # at most 1 - lam of the area (less where the box is clipped)


def test_make_mix_labels_agree_with_the_images_and_repeat_per_seed() -> None:
    x = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    mix = make_mix(0.4, 0.0, 3)
    mixed, soft = mix(x, y, torch.Generator().manual_seed(3))
    # Recover the weight from the images alone: mixed[0] = lam * x[0] + (1 - lam) * x[5].
    lam = float(((mixed[0] - x[5]) * (x[0] - x[5])).sum() / ((x[0] - x[5]) ** 2).sum())
    assert 0 < lam < 1
    torch.testing.assert_close(soft[0], torch.tensor([lam, 0.0, 1 - lam]), atol=1e-5, rtol=0)
    torch.testing.assert_close(soft.sum(1), torch.ones(6))
    again, _ = mix(x, y, torch.Generator().manual_seed(3))
    assert torch.equal(mixed, again)
    assert make_mix(0.0, 0.0, 3) is None
    both = make_mix(0.4, 1.0, 3)
    kinds = set()
    for seed in range(20):
        out, _ = both(x, y, torch.Generator().manual_seed(seed))
        # MixUp changes every pixel of image 0; CutMix leaves the pixels outside its box alone.
        kinds.add("mixup" if bool((out[0] != x[0]).all()) else "cutmix")
    assert kinds == {"mixup", "cutmix"}


def test_loader_mixes_training_batches_into_class_probabilities() -> None:
    images, labels = _images(16), torch.arange(16) % 4
    loader = TensorLoader(images, labels, 8, [0.5], [0.5], shuffle=True, seed=1, mix=make_mix(0.4, 0.0, 4))
    plain = TensorLoader(images, labels, 8, [0.5], [0.5], shuffle=True, seed=1)
    for (x, soft), (x0, y0) in zip(loader, plain, strict=True):
        assert soft.shape == (8, 4) and x.dtype == torch.float32
        lam = soft[0, y0[0]].item() if y0[0] != y0[-1] else None
        if lam is not None:
            torch.testing.assert_close(x[0], lam * x0[0] + (1 - lam) * x0[-1])
