"""ignite_mlp.cli: the command line trains, and bad input is one line with exit status 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    ],
)
def test_bad_input_is_one_line_exit_2(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    status = _run(["train", "--run-dir", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def _run(argv: list[str]) -> int:
    """main()'s status, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code)


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
