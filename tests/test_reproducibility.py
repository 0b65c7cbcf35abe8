"""What docs/reproducibility.md promises, end to end through the CLI: the same command gives the
same history on a busy machine; a resume sees the data the run trained on; what ships (predict,
ONNX, TorchScript) computes what ``evaluate`` measured, image for image, TTA and bf16 included;
files made from an older checkpoint do not outlive a resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import busy_cpu, make_tree, run_cli
from PIL import Image

from ignite_mlp.data import load_dataset
from ignite_mlp.inference.classifier import load_classifier
from ignite_mlp.inference.evaluate import evaluate
from ignite_mlp.inference.predict import predict


def _train(data: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "train", "--data", str(data), "--run-dir", str(run_dir), "--epochs", "3", "--batch-size", "8",
        "--no-progress", "--no-tensorboard", *extra,
    ]  # fmt: skip


def _history(run_dir: Path) -> dict:
    return json.loads((run_dir / "history.json").read_text())


def test_the_same_command_gives_the_same_history_idle_and_busy(tree: Path, tmp_path: Path) -> None:
    assert run_cli(_train(tree, tmp_path / "idle", "--precision", "auto")) == 0
    with busy_cpu():
        assert run_cli(_train(tree, tmp_path / "busy", "--precision", "auto")) == 0
    assert _history(tmp_path / "busy") == _history(tmp_path / "idle")
    configs = [json.loads((tmp_path / r / "config.json").read_text()) for r in ("idle", "busy")]
    assert configs[0]["precision"] == configs[1]["precision"] != "auto"
    assert configs[0]["data_fingerprint"] == configs[1]["data_fingerprint"]


def _add_image(tree: Path, split: str, name: str) -> None:
    pixels = np.full((8, 8, 3), 77, dtype=np.uint8)
    Image.fromarray(pixels).save(tree / split / "bee" / name)


def test_a_resume_on_changed_data_is_refused_in_one_line_and_writes_nothing(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "r"
    assert run_cli(_train(tree, run, "--val-split", "6")) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["data_counts"] == {"train": 36, "test": 12}
    assert config["data_fingerprint"] == load_dataset(tree).fingerprint  # the data as loaded, before the split
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for name in ("9000.png", "9001.png", "9002.png"):
        _add_image(tree, "train", name)
    capsys.readouterr()
    assert run_cli(["train", "--resume", str(run), "--epochs", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"--resume {run}: the data changed since the run started (train images 36 -> 39)" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    # The same counts, one image's pixels changed: refused too, and said so.
    for name in ("9000.png", "9001.png", "9002.png"):
        (tree / "train" / "bee" / name).unlink()
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tree / "train" / "ant" / "0000.png")
    assert run_cli(["train", "--resume", str(run), "--epochs", "4", "--no-progress"]) == 2
    assert "(the same classes and image counts, other pixels or labels)" in capsys.readouterr().err


def test_evaluate_on_other_data_than_the_runs_says_so(tree: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    assert run_cli(_train(tree, run)) == 0
    assert evaluate(run).other_data is None
    other = shutil.copytree(tree, tmp_path / "other")
    _add_image(other, "test", "9000.png")
    report = evaluate(run, data=str(other))
    assert report.other_data == "test images 12 -> 13"
    assert report.report().startswith("note: not the data the run trained on (test images 12 -> 13)")


@pytest.fixture(scope="module")
def tta_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run validated with the mirror image averaged in, trained in bf16 (forced, so on any CPU),
    with the weights' moving average: every way evaluation can differ from a plain forward pass."""
    root = tmp_path_factory.mktemp("tta")
    data = make_tree(root / "tree", n_test=30)
    run = root / "run"
    argv = _train(data, run, "--tta", "--precision", "bf16", "--ema-momentum", "0.5", "--lr", "0.05")
    assert run_cli(argv) == 0
    return run, data


def test_predict_of_a_tta_bf16_run_agrees_with_evaluate_image_for_image(tta_run: tuple[Path, Path]) -> None:
    run, data = tta_run
    report = evaluate(run)
    classifier = load_classifier(run)
    predictions, _ = predict(classifier, [str(data / "test")], top=1, batch_size=7)
    assert [p.top[0][0] for p in predictions] == [classifier.classes[i] for i in report.predictions.tolist()]
    # ... and so gives the run's own accuracy on its test images, the one its history recorded.
    labels = load_dataset(data).test_labels.tolist()
    correct = sum(p.top[0][0] == classifier.classes[y] for p, y in zip(predictions, labels, strict=True))
    assert 100.0 * correct / len(labels) == pytest.approx(report.accuracy)
    epoch = int(report.checkpoint.name.split("_")[2])
    assert report.accuracy == pytest.approx(_history(run)["val_acc_epoch"][epoch - 1], abs=1e-9)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exports_of_a_tta_bf16_run_agree_with_evaluate_image_for_image(
    fmt: str, tta_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run, data = tta_run
    out = tmp_path / f"model.{fmt}"
    assert run_cli(["export", str(run), "--format", fmt, "--out", str(out)]) == 0
    images = load_dataset(data).test_images
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        probabilities = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: images.numpy()})[0])
    else:
        probabilities = torch.jit.load(str(out))(images)
    assert probabilities.argmax(1).tolist() == evaluate(run).predictions.tolist()


def test_a_resume_removes_what_was_made_from_an_older_checkpoint(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "r"
    assert run_cli(_train(tree, run)) == 0
    assert run_cli(["evaluate", str(run)]) == 0
    assert run_cli(["export", str(run), "--format", "torchscript"]) == 0
    made = {p.name for p in run.iterdir()}
    assert {"confusion_matrix.png", "model.torchscript.pt"} <= made
    capsys.readouterr()
    assert run_cli(["train", "--resume", str(run), "--epochs", "4", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "removed confusion_matrix.png, model.torchscript.pt: made from a checkpoint this resume trains past" in out
    assert not {"confusion_matrix.png", "model.torchscript.pt"} & {p.name for p in run.iterdir()}
