"""ignite_mlp.files: a failed write leaves the previous file whole."""

import json
from pathlib import Path

import pytest

from ignite_mlp import files
from ignite_mlp.files import write_json_atomic


def test_json_round_trip_and_no_temp_left(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    write_json_atomic(path, {"a": [1.5, 2.0]})
    assert json.loads(path.read_text()) == {"a": [1.5, 2.0]}
    assert [p.name for p in tmp_path.iterdir()] == ["h.json"]


def test_crash_mid_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "h.json"
    write_json_atomic(path, {"epoch": 1})

    def crash(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(path, {"epoch": 2})
    assert json.loads(path.read_text()) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["h.json"]
