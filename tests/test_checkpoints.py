"""ignite_mlp.checkpoints: safe loading, finding runs, architecture checks."""

import os
import time
from pathlib import Path

import pytest
import torch

from ignite_mlp.checkpoints import check_model_shapes, find_run, latest_checkpoint, safe_load
from ignite_mlp.errors import UserError
from ignite_mlp.model import MLP


class _Payload:
    """Unpickling this creates a file: what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoint_needing_arbitrary_unpickling_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker)}, evil)
    assert not marker.exists()
    with pytest.raises(UserError, match="refused to load"):
        safe_load(evil)
    assert not marker.exists(), "the payload must not run"


def test_what_we_save_loads_safely(tmp_path: Path) -> None:
    path = tmp_path / "ok.pt"
    torch.save({"model": MLP(4, 2, [3]).state_dict(), "history": {"loss_epoch": [1.0]}}, path)
    assert safe_load(path)["history"] == {"loss_epoch": [1.0]}


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_corrupt_or_truncated_checkpoint(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "bad.pt"
    if content is None:  # a real checkpoint cut in half
        torch.save({"model": MLP(40, 2, [30]).state_dict()}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(UserError, match="corrupt or truncated checkpoint"):
        safe_load(path)


def test_architecture_mismatch_names_the_shapes(tmp_path: Path) -> None:
    saved = MLP(12, 3, [8]).state_dict()
    with pytest.raises(UserError, match=r"layers.1.weight: checkpoint \(8, 12\) vs model \(16, 12\)"):
        check_model_shapes(MLP(12, 3, [16]), saved, tmp_path / "c.pt")
    with pytest.raises(UserError, match="missing from checkpoint"):
        check_model_shapes(MLP(12, 3, [8, 8]), saved, tmp_path / "c.pt")
    check_model_shapes(MLP(12, 3, [8]), saved, tmp_path / "c.pt")


def _fake_run(root: Path, name: str, iterations: list[int], age: float) -> Path:
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    for i in iterations:
        (run / "checkpoints" / f"last_checkpoint_{i}.pt").write_bytes(b"")
    stamp = time.time() - age
    os.utime(run / "config.json", (stamp, stamp))
    return run


def test_find_run_auto_takes_newest_resumable_run(tmp_path: Path) -> None:
    old = _fake_run(tmp_path, "old", [10], age=100)
    new = _fake_run(tmp_path, "new", [5], age=10)
    _fake_run(tmp_path, "newest-but-empty", [], age=0)
    assert find_run("auto", tmp_path) == new
    assert find_run(str(old), tmp_path) == old
    with pytest.raises(UserError, match="no run there"):
        find_run(str(tmp_path / "nope"), tmp_path)
    with pytest.raises(UserError, match="no resumable run"):
        find_run("auto", tmp_path / "empty")


def test_latest_checkpoint_is_the_highest_iteration(tmp_path: Path) -> None:
    run = _fake_run(tmp_path, "r", [98, 196, 1960], age=0)
    (run / "checkpoints" / "interrupted_checkpoint_2000.pt").write_bytes(b"")
    (run / "checkpoints" / "best_model_9_val_acc=50.0000.pt").write_bytes(b"")
    assert latest_checkpoint(run).name == "interrupted_checkpoint_2000.pt"
    with pytest.raises(UserError, match="no checkpoint"):
        latest_checkpoint(_fake_run(tmp_path, "e", [], age=0))
