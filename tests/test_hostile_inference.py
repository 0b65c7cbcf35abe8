"""Hostile inputs to predict, evaluate, samples, export and train: each is one line on stderr and
exit status 2, no traceback, nothing written outside the case's folder; the files built to
exhaust memory (a huge PNG, a tar member declaring 1.5 GB) are refused from their headers, with
a bounded peak memory measured in the child process that read them.

Every crafted file is made here, in a tmp folder, small on disk.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import CLASSES, make_tree, quiet
from PIL import Image

from ignite_mlp import TrainConfig, train
from ignite_mlp.cli import main

ROOT = Path(__file__).resolve().parents[1]
PEAK_LIMIT = 1536 * 2**20  # bytes: torch's import alone is about 0.7 GB
HUGE_MEMBER = 1536 * 2**20  # what the tar header claims


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny tree and a run trained on it with ZCA whitening (so it has a whitening file)."""
    w = tmp_path_factory.mktemp("hostile")
    tree = make_tree(w / "tree")
    config = TrainConfig(
        data=str(tree),
        run_dir=str(w / "run"),
        cache_dir=str(w / "cache"),
        epochs=1,
        batch_size=8,
        lr=0.05,
        whiten="zca",
        progress=False,
    )
    train(config, write=quiet)
    return w


def _listing(folder: Path) -> dict[str, float | None]:
    """Every path under ``folder`` with its file's time (a folder counts by its presence: taking a
    run's lock touches its folder's time and writes nothing)."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.stat().st_mtime for p in folder.rglob("*")}


def _copy_run(world: Path, to: Path) -> Path:
    return Path(shutil.copytree(world / "run", to))


def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    status = main(argv)
    return status, capsys.readouterr().err


def _one_line_refusal(status: int, err: str, *words: str) -> None:
    assert status == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], lines[0]


def _run_child(argv: list[str], cwd: Path) -> tuple[int, str, int]:
    """``python -m ignite_mlp ARGV`` in ``cwd``: (exit status, stderr, the child's peak memory in bytes)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("IGNITE_MLP_MAX_PIXELS", None)
    env.pop("IGNITE_MLP_MAX_MEMBER_BYTES", None)
    child = subprocess.Popen(
        [sys.executable, "-m", "ignite_mlp", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    err = child.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, err, usage.ru_maxrss * 1024  # Linux: kilobytes


# ---------------------------------------------------------------------------- memory stays bounded


def test_a_huge_png_is_refused_from_its_header_with_bounded_memory(world: Path, tmp_path: Path) -> None:
    # 13000x13000 pixels of zeros: a 20 KB file, 169 million pixels (about 0.5 GB as RGB) once decoded.
    Image.new("1", (13000, 13000)).save(tmp_path / "big.png")
    assert (tmp_path / "big.png").stat().st_size < 100_000
    status, err, peak = _run_child(["predict", str(world / "run"), "big.png"], tmp_path)
    assert status == 2 and "Traceback" not in err
    assert "big.png: declares 13000x13000 pixels, more than the 67108864" in err
    assert "IGNITE_MLP_MAX_PIXELS=169000000" in err  # how to raise it
    assert len(err.splitlines()) == 1  # the file's line alone: no summary for one input, no warning of Pillow's
    assert peak < PEAK_LIMIT, f"peak {peak / 2**30:.2f} GB"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png"]


def test_a_tar_member_declaring_1_5_gb_is_refused_from_its_header_with_bounded_memory(
    world: Path, tmp_path: Path
) -> None:
    # A tar header claiming 1.5 GB, then a few bytes: only the header says how big the member is.
    header = tarfile.TarInfo("pics/huge.png")
    header.size = HUGE_MEMBER
    (tmp_path / "huge.tar.gz").write_bytes(gzip.compress(header.tobuf(format=tarfile.GNU_FORMAT) + b"\x89PNG"))
    status, err, peak = _run_child(["predict", str(world / "run"), "huge.tar.gz"], tmp_path)
    assert status == 2 and "Traceback" not in err
    assert f"huge.tar.gz:pics/huge.png: {HUGE_MEMBER} bytes, more than the {64 * 2**20}" in err
    assert f"IGNITE_MLP_MAX_MEMBER_BYTES={HUGE_MEMBER}" in err
    assert peak < PEAK_LIMIT, f"peak {peak / 2**30:.2f} GB"


def test_predict_goes_on_past_a_refused_file(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    Image.new("RGB", (8, 8), (200, 30, 30)).save(tmp_path / "ok.png")
    Image.new("L", (9000, 9000)).save(tmp_path / "big.png")  # 81 million pixels
    status = main(["predict", str(world / "run"), str(tmp_path / "big.png"), str(tmp_path / "ok.png")])
    captured = capsys.readouterr()
    assert status == 1  # some classified, some refused
    assert "ok.png" in captured.out and "big.png" not in captured.out
    assert "9000x9000 pixels" in captured.err


def test_the_environment_variables_move_the_limits(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    monkeypatch.setenv("IGNITE_MLP_MAX_PIXELS", "63")  # 8x8 = 64 pixels: one too many
    status, err = _cli(["predict", str(world / "run"), str(tmp_path / "a.png")], capsys)
    assert status == 2 and "8x8 pixels, more than the 63" in err
    monkeypatch.setenv("IGNITE_MLP_MAX_PIXELS", "64")
    assert main(["predict", str(world / "run"), str(tmp_path / "a.png")]) == 0
    monkeypatch.setenv("IGNITE_MLP_MAX_PIXELS", "lots")
    status, err = _cli(["predict", str(world / "run"), str(tmp_path / "a.png")], capsys)
    assert status == 2 and "IGNITE_MLP_MAX_PIXELS=lots: must be a positive whole number" in err


def test_the_loader_keeps_the_same_limits(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    tree = make_tree(tmp_path / "tree")  # 12 training images of 8x8 pixels
    base = ["samples", "--data", str(tree), "--out", str(tmp_path / "s.png")]
    monkeypatch.setenv("IGNITE_MLP_MAX_MEMBERS", "5")
    _one_line_refusal(*_cli(base, capsys), "holds more than 5 files", "IGNITE_MLP_MAX_MEMBERS=10")
    monkeypatch.delenv("IGNITE_MLP_MAX_MEMBERS")
    monkeypatch.setenv("IGNITE_MLP_MAX_PIXELS", "63")
    _one_line_refusal(*_cli(base, capsys), "8x8 pixels, more than the 63")
    monkeypatch.setenv("IGNITE_MLP_MAX_PIXELS", "64")
    assert main(base) == 0


# ---------------------------------------------------------------------------- no silent NaN


def _poison_checkpoints(run: Path, key: str, value: float) -> None:
    for path in (run / "checkpoints").glob("*.pt"):
        state = torch.load(path, weights_only=True)
        weights = state.get("ema_model", state.get("model", state))
        weights[key].view(-1)[0] = value
        torch.save(state, path)


@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
def test_a_checkpoint_holding_nan_is_refused(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture, command: str
) -> None:
    run = _copy_run(world, tmp_path / "run")
    _poison_checkpoints(run, "layers.1.weight", float("nan"))
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    before = _listing(tmp_path)
    argv = {
        "predict": ["predict", str(run), str(tmp_path / "a.png")],
        "evaluate": ["evaluate", str(run), "--data", str(world / "tree")],
        "export": ["export", str(run), "--format", "torchscript"],
    }[command]
    _one_line_refusal(*_cli(argv, capsys), "layers.1.weight holds 1 non-finite value(s)")
    assert _listing(tmp_path) == before


def test_a_whitening_holding_nan_is_refused(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = _copy_run(world, tmp_path / "run")
    state = torch.load(run / "whitening.pt", weights_only=True)
    state["matrix"][3, 4] = float("inf")
    torch.save(state, run / "whitening.pt")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    status, err = _cli(["predict", str(run), str(tmp_path / "a.png")], capsys)
    _one_line_refusal(status, err, "whitening.pt: matrix holds 1 non-finite value(s)")


def test_finite_weights_giving_nan_probabilities_are_refused(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # Finite, but so large that the logits overflow to infinity and the softmax gives NaN.
    run = _copy_run(world, tmp_path / "run")
    for path in (run / "checkpoints").glob("*.pt"):
        state = torch.load(path, weights_only=True)
        for weights in (state.get("ema_model"), state.get("model"), state):
            if isinstance(weights, dict) and "layers.1.weight" in weights:
                weights["layers.1.weight"].fill_(3e38)
        torch.save(state, path)
    Image.new("RGB", (8, 8), (255, 255, 255)).save(tmp_path / "a.png")
    status, err = _cli(["predict", str(run), str(tmp_path / "a.png"), "--format", "json"], capsys)
    _one_line_refusal(status, err, "gives non-finite probabilities", "a.png")


# ---------------------------------------------------------------------------- options and paths


def test_a_huge_hidden_size_is_refused_with_its_parameter_count(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    tree = make_tree(tmp_path / "tree")
    h = 100_000_000_000
    status, err = _cli(["train", "--data", str(tree), "--hidden-sizes", str(h), "--run-dir", "r"], capsys)
    # Before the data is read: the smallest such model, 1 input and 2 classes.
    _one_line_refusal(status, err, f"a model of {1 * h + h + h * 2 + 2} parameters", "1600.0 GB")
    assert not (tmp_path / "r").exists()


def test_a_run_whose_configuration_asks_for_a_huge_model_is_refused(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = _copy_run(world, tmp_path / "run")
    values = json.loads((run / "config.json").read_text())
    values["hidden_sizes"] = [10_000_000]
    (run / "config.json").write_text(json.dumps(values))
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    status, err = _cli(["predict", str(run), str(tmp_path / "a.png")], capsys)
    # 8x8 RGB images, 3 classes: 192 inputs.
    expected = 192 * 10_000_000 + 10_000_000 + 10_000_000 * len(CLASSES) + len(CLASSES)
    _one_line_refusal(status, err, "--hidden-sizes [10000000]", f"{expected} parameters")


@pytest.mark.parametrize("command", ["train", "samples", "evaluate"])
def test_a_url_as_data_is_refused_and_makes_no_folder(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.chdir(tmp_path)
    url = "http://example.com/cifar/data.tar.gz"
    argv = {
        "train": ["train", "--data", url, "--epochs", "1", "--run-dir", "r"],
        "samples": ["samples", "--data", url, "--out", "s.png"],
        "evaluate": ["evaluate", str(world / "run"), "--data", url, "--out", "c.png"],
    }[command]
    _one_line_refusal(*_cli(argv, capsys), f"--data {url}: URLs are not supported")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["evaluate", "samples"])
@pytest.mark.parametrize("where", ["missing folder", "a folder"])
def test_evaluate_and_samples_out_problems_are_one_line(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture, command: str, where: str
) -> None:
    (tmp_path / "folder").mkdir()
    out = tmp_path / ("nowhere/x.png" if where == "missing folder" else "folder")
    argv = {
        "evaluate": ["evaluate", str(world / "run"), "--out", str(out)],
        "samples": ["samples", "--data", str(world / "tree"), "--out", str(out)],
    }[command]
    before = _listing(tmp_path)
    reason = "does not exist" if where == "missing folder" else "is a folder"
    _one_line_refusal(*_cli(argv, capsys), f"--out {out}", reason)
    assert _listing(tmp_path) == before


def test_a_torchscript_write_that_fails_is_one_line_and_leaves_nothing(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What torch.jit.save raises when its file cannot be written (a full disk, a read-only file
    # system, a folder this user may not write: the tests run as root, where permissions pass).
    def failing_save(*args: object, **kwargs: object) -> None:
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch.jit, "save", failing_save)
    (tmp_path / "out").mkdir()
    argv = ["export", str(world / "run"), "--format", "torchscript", "--out", str(tmp_path / "out" / "m.pt")]
    _one_line_refusal(*_cli(argv, capsys), "cannot write there", "torch.jit.save failed")
    assert list((tmp_path / "out").iterdir()) == []


def test_an_unwritable_export_folder_is_one_line(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    if os.geteuid() == 0:
        pytest.skip("root may write into any folder")
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o500)
    try:
        argv = ["export", str(world / "run"), "--format", "torchscript", "--out", str(folder / "m.pt")]
        _one_line_refusal(*_cli(argv, capsys), "is not writable")
    finally:
        folder.chmod(0o700)


def test_a_tarball_member_count_is_checked_from_headers(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Many empty members: no byte of image data, but each member is a record kept in memory.
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for i in range(20):
            tar.addfile(tarfile.TarInfo(f"train/ant/{i:04d}.png"), io.BytesIO(b""))
    (tmp_path / "many.tar.gz").write_bytes(buffer.getvalue())
    monkeypatch.setenv("IGNITE_MLP_MAX_MEMBERS", "10")
    argv = ["samples", "--data", str(tmp_path / "many.tar.gz"), "--out", str(tmp_path / "s.png")]
    _one_line_refusal(*_cli(argv, capsys), "many.tar.gz: holds more than 10 files or members")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many.tar.gz"]
