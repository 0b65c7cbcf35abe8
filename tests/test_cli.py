"""ignite_mlp.cli: the command line trains, and bad input is one line with exit status 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import read_history, run_cli

from ignite_mlp.cli import main


def test_cli_trains_with_toml_and_flags(tarball: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text("epochs = 5\nbatch-size = 8\nlr = 0.05\n")
    run_dir = tmp_path / "run"
    argv = ["train", "--config", str(toml), "--data", str(tarball), "--run-dir", str(run_dir), "--epochs", "2"]
    assert main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "3 classes" in out and "Epoch   2/2" in out and "best validation accuracy" in out
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["epochs"], config["batch_size"], config["lr"]) == (2, 8, 0.05)  # CLI beat the file


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "0"], "--lr must be > 0"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--hidden-sizes", "0"], "--hidden-sizes must be all >= 1"),
        (["--hidden-sizes", "-5"], "--hidden-sizes"),
        (["--hidden-sizes", "wide"], "--hidden-sizes expects int"),
        (["--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N"),
        (["--data", "/nonexistent/pack.tar.gz"], "no such file"),
        (["--config", "/nonexistent.toml"], "no such file"),
        (["--seed", "-1"], "--seed must be in [0, 2**32 - 1]"),
        (["--recipe", "strong", "--momentum", "0"], "--momentum must be > 0 with --nesterov"),
        (["--lr", "inf"], "--lr must be a finite number"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    status = run_cli(["train", "--run-dir", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_python_dash_m_and_console_script_agree(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "ignite_mlp", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--hidden-sizes" in out.stdout and "--eval-batch-size" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "ignite_mlp", "train", "--lr", "-1", "--run-dir", str(tmp_path / "r")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "ignite-mlp: error: --lr must be > 0 (got -1.0); pass a positive learning rate such as 1e-3"
    )


def _train_argv(data: Path, run_dir: Path, epochs: int) -> list[str]:
    """The CLI arguments of the small subprocess runs below."""
    return [
        "train",
        "--data",
        str(data),
        "--run-dir",
        str(run_dir),
        "--epochs",
        str(epochs),
        "--batch-size",
        "8",
        "--lr",
        "0.02",
        "--no-progress",
    ]


def _start_training(data: Path, run_dir: Path, epochs: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ignite_mlp", *_train_argv(data, run_dir, epochs)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_epochs(run_dir: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if len(json.loads((run_dir / "history.json").read_text())["val_loss"]) >= n:
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"training did not reach {n} epochs (exit {proc.poll()}): {proc.stderr.read()}")


STRAIGHT_EPOCHS = 5


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tree with about 57 iterations an epoch (long enough for a signal to land mid-epoch), and
    a run of it trained straight through: what a run cut short and resumed must equal."""
    from conftest import make_tree

    root = tmp_path_factory.mktemp("straight")
    tree = make_tree(root / "bigger", n_train=150, n_test=20, size=16)
    assert run_cli(_train_argv(tree, root / "reference", STRAIGHT_EPOCHS)) == 0
    return tree, root / "reference"


def _assert_same_history(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        assert len(a[key]) == len(b[key]), key
        assert a[key] == pytest.approx(b[key], abs=1e-6), key


def test_kill_9_then_resume_equals_an_uninterrupted_run(straight: tuple[Path, Path], tmp_path: Path) -> None:
    """A run killed outright after two epochs, then resumed: the same history as a straight run,
    exactly. (The same command on a busy machine computes the same numbers: test_reproducibility.)"""
    import signal

    tree, reference = straight
    killed = tmp_path / "killed"
    proc = _start_training(tree, killed, STRAIGHT_EPOCHS)
    _wait_for_epochs(killed, 2, proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert len(read_history(killed)["val_loss"]) < STRAIGHT_EPOCHS, "the run must really have been cut short"
    assert run_cli(["train", "--resume", str(killed), "--no-progress"]) == 0
    assert read_history(killed) == read_history(reference)
    assert len(list((killed / "checkpoints").glob("best_*.pt"))) == 1


def test_ctrl_c_saves_where_it_stopped_and_resume_completes_the_run(
    straight: tuple[Path, Path], tmp_path: Path
) -> None:
    import signal

    tree, reference = straight
    stopped = tmp_path / "stopped"
    proc = _start_training(tree, stopped, STRAIGHT_EPOCHS)
    _wait_for_epochs(stopped, 2, proc)
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, stderr
    assert f"resume with: ignite-mlp train --resume {stopped}" in stderr and "Traceback" not in stderr
    assert list((stopped / "checkpoints").glob("interrupted_checkpoint_*.pt"))
    assert len(read_history(stopped)["val_loss"]) < STRAIGHT_EPOCHS, "the run must really have been cut short"
    assert run_cli(["train", "--resume", str(stopped), "--no-progress"]) == 0
    _assert_same_history(read_history(stopped), read_history(reference))
    assert not list((stopped / "checkpoints").glob("interrupted_checkpoint_*.pt"))


def test_bad_files_and_folders_are_one_line_exit_2(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    not_gzip = tmp_path / "data.tar.gz"
    not_gzip.write_text("plain text")
    corrupt_tree = tmp_path / "corrupt"
    import shutil

    shutil.copytree(tree, corrupt_tree)
    (corrupt_tree / "train" / "bee" / "0002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    existing = tmp_path / "existing"
    assert run_cli(["train", "--data", str(tree), "--run-dir", str(existing), "--epochs", "1", "--no-progress"]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in existing.rglob("*") if p.is_file()}
    cases = [
        (["--data", str(not_gzip)], "not a gzip tarball"),
        (["--data", str(corrupt_tree)], "0002.png: corrupt image (not a format PIL can read)"),
        (["--data", str(tree), "--run-dir", str(a_file / "run")], "cannot write there"),
        (["--data", str(tree), "--run-dir", str(existing)], "already holds a run"),
        (["--resume", str(tmp_path / "no-run")], "no run there"),
    ]
    for args, message in cases:
        status = run_cli(["train", "--run-dir", str(tmp_path / "fresh"), *args, "--no-progress"])
        err = capsys.readouterr().err
        assert status == 2 and message in err and err.count("\n") == 1, (args, err)
    # A corrupt last checkpoint, then a crafted one: refused, and the run is left as it was.
    last = next((existing / "checkpoints").glob("last_checkpoint_*.pt"))
    good = last.read_bytes()
    last.write_bytes(good[:100])
    assert run_cli(["train", "--resume", str(existing), "--epochs", "2", "--no-progress"]) == 2
    assert "corrupt or truncated checkpoint" in capsys.readouterr().err
    last.write_bytes(good)
    assert {p: p.read_bytes() for p in existing.rglob("*") if p.is_file()} == before


def test_evaluate_and_samples_commands(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    run = tmp_path / "run"
    assert run_cli(["train", "--data", str(tree), "--run-dir", str(run), "--epochs", "2", "--no-progress"]) == 0
    capsys.readouterr()
    assert run_cli(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    assert "per-class accuracy" in out and "ant" in out
    with Image.open(run / "confusion_matrix.png") as img:
        assert img.format == "PNG"
    grid = tmp_path / "grid.png"
    assert run_cli(["samples", "--data", str(tree), "--out", str(grid), "--count", "6"]) == 0
    with Image.open(grid) as img:
        assert img.format == "PNG" and img.width > 6 * 8
    assert run_cli(["evaluate", str(tmp_path / "nothing")]) == 2
    assert "neither a run directory" in capsys.readouterr().err
    assert run_cli(["evaluate", str(run), "--device", "tpu"]) == 2
    assert "--device must be auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    assert run_cli(["samples", "--data", str(tree), "--out", str(grid), "--seed", "-1"]) == 2
    assert "--seed must be in [0, 2**32 - 1]" in capsys.readouterr().err


def test_samples_prints_the_one_hot_line_of_the_first_image(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import re

    import numpy as np
    from conftest import CLASSES
    from PIL import Image

    from ignite_mlp.plots import GRID_PAD_PX, grid_scale

    cell = 8 * grid_scale(8, 8)  # the tree's 8x8 images, enlarged
    labels = set()
    for seed in range(6):
        grid = tmp_path / f"grid{seed}.png"
        assert main(["samples", "--data", str(tree), "--out", str(grid), "--count", "5", "--seed", str(seed)]) == 0
        line = capsys.readouterr().out.splitlines()[-1]
        found = re.fullmatch(r"first sample \(top left\): label (\d) \((\w+)\) one-hot: tensor\(\[([\d, ]+)\]\)", line)
        assert found, line
        label = int(found.group(1))
        assert found.group(2) == CLASSES[label]
        assert [int(v) for v in found.group(3).split(",")] == [int(k == label) for k in range(len(CLASSES))]
        # The tree draws class k around brightness 40 + 80k: the top-left image shows that class.
        with Image.open(grid) as img:
            first = np.asarray(img.convert("RGB"))[GRID_PAD_PX : GRID_PAD_PX + cell, GRID_PAD_PX : GRID_PAD_PX + cell]
        assert abs(first.mean() - (40 + 80 * label)) < 25, (seed, label, first.mean())
        labels.add(label)
    assert len(labels) > 1  # the line follows the image drawn, not a fixed label


@pytest.mark.parametrize(
    ("argv", "suggested"),
    [
        (["train", "--hidden-size", "64"], "--hidden-sizes"),  # a prefix is no longer taken for the option
        (["train", "--hiden-sizes=64"], "--hidden-sizes"),
        (["train", "--epoch", "3"], "--epochs"),
        (["lr-find", "--num-iters", "5"], "--num-iter"),
        (["evaluate", "run", "--devic", "cpu"], "--device"),
        (["samples", "--cout", "4"], "--count"),
    ],
)
def test_mistyped_option_is_refused_with_a_suggestion(
    argv: list[str], suggested: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    typed = next(a for a in argv if a.startswith("--"))
    assert err.count("\n") == 1 and f"unrecognized arguments: {typed}" in err
    assert f"(did you mean {suggested}?)" in err
    assert not list(tmp_path.iterdir())


def test_no_suggestion_for_an_option_unlike_any(capsys: pytest.CaptureFixture) -> None:
    assert run_cli(["train", "--zzz"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --zzz" in err and "did you mean" not in err


def test_every_parser_refuses_abbreviations() -> None:
    import argparse

    from ignite_mlp.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert not parser.allow_abbrev
    assert all(not sub.allow_abbrev for sub in commands.choices.values())


def test_dry_run_reports_no_accuracy_as_a_result(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["train", "--data", str(tree), "--run-dir", str(tmp_path / "r"), "--dry-run", "--no-progress"]
    assert run_cli(argv) == 0
    out = capsys.readouterr().out
    assert "dry run finished: 1 epoch of 2 training steps" in out and "drop --dry-run" in out
    assert "best validation accuracy" not in out


@pytest.mark.parametrize(
    "args",
    [
        ["--data", "nope", "--no-download"],
        ["--data", "nope/deeper"],  # download on, but offline
    ],
)
def test_missing_data_leaves_no_folder_behind(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from ignite_mlp.data import sources

    monkeypatch.setattr(sources, "CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")  # refused: offline
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert run_cli(["train", "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("downloading is off" in err or "could not download" in err), err
    assert list(work.iterdir()) == []  # no data folder, no runs/


@pytest.mark.parametrize("args", [[], ["--data", "nope", "--no-download"]])
def test_list_handlers_needs_no_data_and_leaves_nothing(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Which handler runs on which event does not depend on the data: offline, with the default
    ./data (CIFAR-10, to be downloaded) or a folder not there, the table is printed all the same."""
    from ignite_mlp.data import sources

    monkeypatch.setattr(sources, "CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")  # refused: offline
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert run_cli(["train", "--list-handlers", "--no-progress", *args]) == 0
    out = capsys.readouterr().out
    assert "trainer    EPOCH_COMPLETED" in out and "evaluator  COMPLETED" in out
    assert list(work.iterdir()) == []  # no data folder, no runs/


def test_list_handlers_writes_no_run_directory(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert run_cli(["train", "--list-handlers", "--data", str(tree), "--no-progress"]) == 0
    assert "trainer" in capsys.readouterr().out
    assert list(work.iterdir()) == []
