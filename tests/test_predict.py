"""ignite_mlp.inference.predict: pictures of any size and mode are classified as the run's own images are;
bad files get a line each; JSON and CSV carry the same numbers as a plain PyTorch forward pass."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASSES, decode_array, make_gray_tree, make_tarball, make_tree, quiet, run_cli
from PIL import Image
from test_data_images import MODES, decode_mode_case

from ignite_mlp import TrainConfig, train
from ignite_mlp.data.images import to_8_bit
from ignite_mlp.inference.classifier import load_classifier
from ignite_mlp.inference.evaluate import evaluate
from ignite_mlp.inference.predict import fit_image, predict, read_image
from ignite_mlp.model import MLP

RED, BLUE = (220, 30, 30), (30, 30, 220)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("predict")


def _train(data: Path, run_dir: Path, cache: Path, **kw) -> Path:
    config = TrainConfig(
        data=str(data),
        run_dir=str(run_dir),
        cache_dir=str(cache),
        epochs=3,
        batch_size=8,
        lr=0.05,
        progress=False,
        **kw,
    )
    train(config, write=quiet)
    return run_dir


@pytest.fixture(scope="module")
def rgb_run(root: Path) -> Path:
    """A run on the 8x8 RGB tree (its data in ``root / "tree"``)."""
    return _train(make_tree(root / "tree"), root / "rgb-run", root / "cache")


@pytest.fixture(scope="module")
def white_run(root: Path) -> Path:
    """A run on the 8x8 RGB tree's ZCA-whitened images, with the weights' moving average and
    blocks (its data in ``root / "white-tree"``)."""
    data = make_tree(root / "white-tree")
    return _train(data, root / "white-run", root / "cache", whiten="zca", ema_momentum=0.2, blocks=1, hidden_sizes=[16])


@pytest.fixture(scope="module")
def gray_run(root: Path) -> Path:
    """A run on 1-channel 12x16 images (its data in ``root / "gray"``)."""
    return _train(make_gray_tree(root / "gray"), root / "gray-run", root / "cache")


def _by_hand(run_dir: Path, pixels: np.ndarray) -> torch.Tensor:
    """Class probabilities of one image already of the run's size (``(H, W)`` or ``(H, W, C)``
    uint8), by a plain PyTorch forward pass of the best checkpoint: ``(x / 255 - 0.5) / 0.5``."""
    config = json.loads((run_dir / "config.json").read_text())
    weights = torch.load(next((run_dir / "checkpoints").glob("best_*.pt")), weights_only=True)
    x = torch.from_numpy(pixels.copy()).float()
    x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
    model = MLP(x.numel(), len(config["classes"]), config["hidden_sizes"])
    model.load_state_dict(weights)
    with torch.no_grad():
        return torch.softmax(model(((x / 255 - 0.5) / 0.5).unsqueeze(0)), dim=1)[0]


@pytest.mark.parametrize("which", ["rgb", "gray", "white"])
def test_predictions_on_the_validation_images_agree_with_evaluate(
    which: str, root: Path, rgb_run: Path, gray_run: Path, white_run: Path
) -> None:
    run, data = {
        "rgb": (rgb_run, root / "tree"),
        "gray": (gray_run, root / "gray"),
        "white": (white_run, root / "white-tree"),
    }[which]
    classifier = load_classifier(run)
    predictions, summary = predict(classifier, [str(data / "test")], top=1, batch_size=5)
    assert summary.exit_status == 0 and summary.classified == 12
    report = evaluate(run)
    # The data set holds the test images sorted by (class, file name): the folder's sorted order.
    assert [p.file for p in predictions] == sorted(str(f) for f in (data / "test").rglob("*.png"))
    assert [p.top[0][0] for p in predictions] == [classifier.classes[i] for i in report.predictions.tolist()]
    # The same from the .tar.gz of the data.
    archive = make_tarball(data, root / f"{which}.tar.gz")
    from_archive, _ = predict(classifier, [str(archive)], top=1)
    tops = [p.top[0] for p in from_archive if ":test/" in p.file]
    assert [c for c, _ in tops] == [p.top[0][0] for p in predictions]
    assert [v for _, v in tops] == pytest.approx([p.top[0][1] for p in predictions], abs=1e-6)  # other batches


def test_odd_images_are_fitted_and_classified_like_their_plain_equivalents(rgb_run: Path, tmp_path: Path) -> None:
    classifier = load_classifier(rgb_run)

    def probabilities(image: Image.Image) -> torch.Tensor:
        return classifier.probabilities(fit_image(image, classifier.image_shape).unsqueeze(0))[0]

    grey = np.full((8, 8), 130, np.uint8)
    assert torch.equal(probabilities(Image.fromarray(grey)), _by_hand(rgb_run, np.stack([grey] * 3, axis=2)))
    opaque = np.dstack([np.full((8, 8, 3), (200, 90, 10), np.uint8), np.full((8, 8), 255, np.uint8)])
    assert torch.allclose(probabilities(Image.fromarray(opaque)), _by_hand(rgb_run, opaque[..., :3]), atol=1e-6)
    clear = np.zeros((8, 8, 4), np.uint8)  # fully transparent: alpha dropped, as in a data set, the colour stays
    clear[..., :3] = (40, 50, 60)
    assert torch.allclose(probabilities(Image.fromarray(clear)), _by_hand(rgb_run, clear[..., :3]), atol=1e-6)
    deep = Image.fromarray(np.full((8, 8), 130 * 257, np.uint16))  # 16-bit grey: 130 * 257 is 8-bit 130
    assert torch.equal(probabilities(deep), _by_hand(rgb_run, np.full((8, 8, 3), 130, np.uint8)))
    palette = Image.fromarray(np.full((8, 8, 3), (90, 160, 40), np.uint8)).quantize(4)
    assert torch.allclose(probabilities(palette), _by_hand(rgb_run, np.asarray(palette.convert("RGB"))), atol=1e-6)
    # Large and wide: kept in proportion, so only its centre (red) is seen, not the blue sides.
    wide = np.zeros((1000, 4000, 3), np.uint8)
    wide[:] = BLUE
    wide[:, 1250:2750] = RED
    Image.fromarray(wide).save(tmp_path / "wide.jpg", quality=90)
    with Image.open(tmp_path / "wide.jpg") as img:
        img.draft(None, (8, 8))
        fitted = fit_image(img, (3, 8, 8))
    assert fitted.shape == (3, 8, 8)
    assert (fitted.permute(1, 2, 0).int() - torch.tensor(RED)).abs().max() <= 12


def test_cli_json_and_csv_carry_the_numbers_and_bad_files_get_a_line(
    rgb_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(pictures / "a-rgb.png")
    Image.fromarray(np.dstack([rgb, np.full((8, 8), 255, np.uint8)])).save(pictures / "b-rgba.png")
    Image.fromarray(rgb).convert("L").save(pictures / "c-grey.png")
    Image.fromarray(rgb).quantize(16).save(pictures / "d-palette.gif")
    Image.fromarray(rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8)).save(pictures / "e-large.jpg")
    (pictures / "f-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (pictures / "notes.txt").write_text("not an image, and not picked up from a folder")

    assert run_cli(["predict", str(rgb_run), str(pictures), "--format", "json", "--top-k", "2"]) == 1
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    names = ["a-rgb.png", "b-rgba.png", "c-grey.png", "d-palette.gif", "e-large.jpg"]
    assert [Path(r["file"]).name for r in rows] == names
    assert all(len(r["top"]) == 2 and r["top"][0]["probability"] >= r["top"][1]["probability"] for r in rows)
    expected = _by_hand(rgb_run, rgb)
    for row in rows[:2]:  # the RGB image and its opaque RGBA copy: what a plain forward pass gives
        best = int(expected.argmax())
        assert row["top"][0] == {"class": CLASSES[best], "probability": pytest.approx(float(expected[best]), abs=1e-6)}
    errors = captured.err.splitlines()
    assert errors[0].startswith(f"ignite-mlp: cannot read {pictures / 'f-corrupt.png'}: ")
    assert errors[1] == "ignite-mlp: 1 input(s) could not be read, 5 classified" and len(errors) == 2

    assert run_cli(["predict", str(rgb_run), str(pictures / "a-rgb.png"), "--format", "csv"]) == 0
    table = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert table[0] == ["file", "class_1", "probability_1", "class_2", "probability_2", "class_3", "probability_3"]
    ranked = expected.argsort(descending=True).tolist()
    assert table[1][1::2] == [CLASSES[i] for i in ranked]
    assert [float(v) for v in table[1][2::2]] == pytest.approx(expected[ranked].tolist(), abs=1e-6)

    assert run_cli(["predict", str(rgb_run), str(pictures / "a-rgb.png")]) == 0  # the table
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["file", "1st", "2nd", "3rd"] and lines[1].split()[1] == CLASSES[ranked[0]]


def test_nothing_readable_is_exit_2(rgb_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (tmp_path / "empty").mkdir()
    assert run_cli(["predict", str(rgb_run), str(tmp_path / "bad.jpg"), str(tmp_path / "empty"), "missing.png"]) == 2
    err = capsys.readouterr().err
    assert "no image files in this folder" in err and "missing.png: no such file or folder" in err
    assert run_cli(["predict", str(tmp_path), str(tmp_path / "bad.jpg")]) == 2
    assert "neither a run directory" in capsys.readouterr().err
    assert run_cli(["predict", str(rgb_run), "x.png", "--top-k", "0"]) == 2


def test_a_gray_run_classifies_colour_pictures_of_any_size(gray_run: Path, tmp_path: Path) -> None:
    classifier = load_classifier(gray_run)
    assert classifier.image_shape == (1, 12, 16)
    colour = tmp_path / "photo.png"
    Image.new("RGBA", (300, 100), (250, 250, 250, 255)).save(colour)
    (prediction,), summary = predict(classifier, [str(colour)], top=3)
    assert summary.exit_status == 0
    # Converted to grey and fitted to 12x16: what a plain 12x16 grey image of that brightness gets.
    grey = _by_hand(gray_run, np.full((12, 16), 250, np.uint8))
    assert prediction.top[0] == (CLASSES[int(grey.argmax())], pytest.approx(float(grey.max()), abs=1e-6))


@pytest.mark.parametrize("mode", MODES)
def test_predict_maps_every_mode_as_the_data_set_decoder_does(mode: str, tmp_path: Path) -> None:
    """A picture of the run's size and channel count reaches the model with the pixels training saw."""
    image, path, expected, tolerance = decode_mode_case(mode, tmp_path)
    if path is None:  # HSV: no file holds it
        got, decoded = fit_image(image, expected.shape), np.asarray(to_8_bit(image, "x")).transpose(2, 0, 1)
    else:
        got, decoded = read_image(lambda: open(path, "rb"), expected.shape), decode_array(path.read_bytes(), "x")
    assert got.dtype == torch.uint8 and np.array_equal(got.numpy(), decoded)
    assert np.abs(got.numpy().astype(int) - expected.astype(int)).max() <= tolerance


def test_predict_refuses_a_float_picture_with_nan_pixels_with_its_reason(tmp_path: Path) -> None:
    values = np.full((8, 8), 0.25, np.float32)
    values[0, 0] = np.nan
    Image.fromarray(values).save(tmp_path / "nan.tif")
    with pytest.raises(ValueError, match=r"^float image with NaN or infinite pixels; "):
        read_image(lambda: open(tmp_path / "nan.tif", "rb"), (3, 8, 8))
