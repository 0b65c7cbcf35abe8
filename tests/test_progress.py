"""ignite_mlp.progress: a bar on a terminal, a few plain lines in a log file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ignite_mlp.progress import Progress, progress_mode


class _Terminal:
    def isatty(self) -> bool:
        return True


def test_auto_draws_the_bar_on_a_terminal_only(tmp_path: Path) -> None:
    with open(tmp_path / "log", "w") as log:
        assert progress_mode("auto", log) == "lines"
    assert progress_mode("auto", _Terminal()) == "bar"
    assert (progress_mode("on", None), progress_mode("off", _Terminal())) == ("bar", "off")


def test_lines_mode_writes_at_most_one_line_per_interval(tmp_path: Path) -> None:
    with open(tmp_path / "log", "w") as log:
        p = Progress("decoding images", "lines", stream=log, seconds=3600)
        for _ in range(1000):
            p.update(60)
        p.close("decoded 60000 images")
    assert (tmp_path / "log").read_text() == "decoded 60000 images\n"


@pytest.mark.parametrize("flags", [[], ["--progress", "on"]])
def test_a_run_with_stderr_to_a_file_logs_no_redraws(tree: Path, tmp_path: Path, flags: list[str]) -> None:
    """What nohup, CI or a scheduler see: stdout and stderr in files, no terminal."""
    argv = ["train", "--data", str(tree), "--run-dir", str(tmp_path / "r"), "--epochs", "3", "--batch-size", "4"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        status = subprocess.run([sys.executable, "-m", "ignite_mlp", *argv, *flags], stdout=out, stderr=err, env=env)
    assert status.returncode == 0
    # As bytes: reading as text would turn each carriage return into a newline.
    stdout, stderr = (tmp_path / "out").read_bytes().decode(), (tmp_path / "err").read_bytes().decode()
    assert "Epoch   3/3" in stdout and "best validation accuracy" in stdout
    if flags:  # forced on: the bar's redraws land in the file (what auto avoids)
        assert "\r" in stderr
        return
    assert "\r" not in stderr + stdout
    # Decoding reports once at the end; training prints nothing to stderr at all.
    assert stderr.startswith("decoded 48 images from") and stderr.count("\n") == 1, stderr
