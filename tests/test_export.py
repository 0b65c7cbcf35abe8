"""ignite_mlp.inference.export: ONNX and TorchScript files that need nothing of this package, agree with the
PyTorch model on any batch size, carry their metadata, and check themselves before they land."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_gray_tree, make_tree, run_cli

from ignite_mlp import TrainConfig, train
from ignite_mlp.data import load_dataset
from ignite_mlp.inference import export as export_module
from ignite_mlp.inference.classifier import load_classifier


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two runs: 8x8 RGB (12 validation images) with the strong recipe's layers (batch norm,
    GELU, dropout) and statistics measured on the data, and the tutorial's MLP on 1-channel
    12x16 images with 270 validation images (more than the 256 the check takes)."""
    root = tmp_path_factory.mktemp("export")
    made = {}
    strong = dict(norm="batch", activation="gelu", dropout=0.1, normalize="dataset", hidden_sizes=[64, 32])
    for name, data, extra in (
        ("rgb", make_tree(root / "tree"), strong),
        ("gray", make_gray_tree(root / "gray", n_test=90), {}),
    ):
        config = TrainConfig(
            **extra,
            data=str(data),
            run_dir=str(root / f"{name}-run"),  # (root / "gray" holds the gray data)
            cache_dir=str(root / "cache"),
            epochs=2,
            batch_size=8,
            lr=0.05,
            progress=False,
        )
        train(config, write=lambda _: None)
        made[name] = root / f"{name}-run"
    return made


def _images(run: Path, n: int) -> torch.Tensor:
    """``n`` uint8 images of the run's shape: its validation images, then random ones."""
    config = json.loads((run / "config.json").read_text())
    test = load_dataset(config["data"], config["cache_dir"]).test_images
    extra = torch.randint(0, 256, (max(0, n - len(test)), *test.shape[1:]), dtype=torch.uint8)
    return torch.cat([test, extra])[:n]


@pytest.mark.parametrize("name", ["rgb", "gray"])
def test_onnx_runs_on_onnxruntime_alone_and_agrees(
    name: str, runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    run = runs[name]
    out = tmp_path / "model.onnx"
    assert run_cli(["export", str(run), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    count = 12 if name == "rgb" else 256
    assert printed[0].startswith(f"check: onnx (onnxruntime) agrees with PyTorch on {count} validation images: ")
    assert printed[0].endswith(f"same top-1 for {count}/{count}") and printed[1] == f"wrote {out}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no leftovers

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (graph_input,) = session.get_inputs()
    assert graph_input.type == "tensor(uint8)"
    classifier = load_classifier(run)
    for n in (1, 5, 300):  # any batch size
        images = _images(run, n)
        got = session.run(None, {graph_input.name: images.numpy()})[0]
        expected = classifier.probabilities(images).numpy()
        assert got.shape == (n, 3) and np.abs(got - expected).max() < 1e-5
        assert np.allclose(got.sum(axis=1), 1, atol=1e-5)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["classes"]) == ["ant", "bee", "cat"]
    assert json.loads(meta["image_shape"]) == ([3, 8, 8] if name == "rgb" else [1, 12, 16])
    assert meta["source_run"] == str(run.resolve())
    config = json.loads((run / "config.json").read_text())  # the rgb run's mean/std: measured on its data
    preprocessing = json.loads(meta["preprocessing"])
    assert (preprocessing["mean"], preprocessing["std"]) == (config["mean"], config["std"])


def test_torchscript_loads_with_torch_alone_and_agrees(runs: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    run = runs["gray"]
    assert run_cli(["export", str(run), "--format", "torchscript"]) == 0
    assert "torchscript (torch.jit.load) agrees with PyTorch on 256 validation images" in capsys.readouterr().out
    path = run / "model.torchscript.pt"
    files = {"ignite_mlp.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), _extra_files=files)
    images = _images(run, 7)
    with torch.no_grad():
        assert torch.allclose(loaded(images), load_classifier(run).probabilities(images), atol=1e-6)
    assert json.loads(json.loads(files["ignite_mlp.json"])["image_shape"]) == [1, 12, 16]


def test_without_the_export_extra_the_message_names_it(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: importing it fails
    out = tmp_path / "model.onnx"
    assert run_cli(["export", str(runs["rgb"]), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "ignite-mlp: error: ONNX export needs onnxruntime, which is not installed: "
        "pip install 'ignite_mlp[export]' (installs onnx, onnxscript, onnxruntime)\n"
    )
    assert not out.exists()


def test_a_failed_check_leaves_nothing_and_exits_1(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(export_module, "TOLERANCE", 0.0)  # nothing can pass: even a difference of 0
    out = tmp_path / "model.pt"
    assert run_cli(["export", str(runs["rgb"]), "--format", "torchscript", "--out", str(out)]) == 1
    assert "export check failed" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    assert run_cli(["export", str(runs["rgb"]), "--format", "torchscript", "--out", str(tmp_path / "no" / "m.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_whitened_run_exports_its_whitening_inside_the_graph(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    from ignite_mlp.inference.evaluate import evaluate

    run = tmp_path / "white"
    config = TrainConfig(
        data=str(make_tree(tmp_path / "tree")), run_dir=str(run), whiten="zca", epochs=2, batch_size=8, progress=False
    )
    train(config, write=lambda _: None)
    out = tmp_path / "white.onnx"
    assert run_cli(["export", str(run), "--format", "onnx", "--out", str(out)]) == 0
    assert "same top-1 for 12/12" in capsys.readouterr().out
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images = _images(run, 12)
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    # evaluate whitens through the training code path (whiten_images): the same classes.
    assert got.argmax(axis=1).tolist() == evaluate(run).predictions.tolist()
