"""Checkpoints on disk: a kill at any write of ignite_mlp.handlers.checkpoints leaves a best and a
last to resume; finding runs and the newest checkpoint (run/rundir.py); leftover files on a
resume (run/resume.py)."""

import os
import time
from pathlib import Path

import pytest
import torch

from ignite_mlp.errors import UserError
from ignite_mlp.run.checkpoint_io import safe_load
from ignite_mlp.run.rundir import RunDir, find_run


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
    assert find_run("auto", tmp_path).path == new
    assert find_run(str(old), tmp_path).path == old
    with pytest.raises(UserError, match="no run there"):
        find_run(str(tmp_path / "nope"), tmp_path)
    with pytest.raises(UserError, match="no resumable run"):
        find_run("auto", tmp_path / "empty")


def test_latest_checkpoint_is_the_highest_iteration(tmp_path: Path) -> None:
    run = _fake_run(tmp_path, "r", [98, 196, 1960], age=0)
    (run / "checkpoints" / "interrupted_checkpoint_2000.pt").write_bytes(b"")
    (run / "checkpoints" / "best_model_9_val_acc=50.0000.pt").write_bytes(b"")
    assert RunDir(run).latest_checkpoint().name == "interrupted_checkpoint_2000.pt"
    with pytest.raises(UserError, match="no checkpoint"):
        RunDir(_fake_run(tmp_path, "e", [], age=0)).latest_checkpoint()


class _Killed(BaseException):
    """A kill -9 at one instant: nothing after it runs, not even ``except Exception`` blocks."""


def _kill_at(monkeypatch: pytest.MonkeyPatch, k: int) -> list[str]:
    """Make the ``k``-th checkpoint write or delete (from 1; 0: none) raise :class:`_Killed`
    before it happens. Returns the log of those operations, filled as they come."""
    ops: list[str] = []
    real_save, real_unlink = torch.save, Path.unlink

    def save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        if Path(getattr(f, "name", str(f))).parent.name == "checkpoints":  # not the data cache
            ops.append("write")
            if len(ops) == k:
                raise _Killed
        real_save(obj, f, *args, **kwargs)

    def unlink(self: Path, *args: object, **kwargs: object) -> None:
        if self.suffix == ".pt":
            ops.append(f"delete {self.name}")
            if len(ops) == k:
                raise _Killed
        real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(Path, "unlink", unlink)
    return ops


def _best_of(run: Path) -> Path:
    """The best file named by the tracker in the checkpoint a resume would take; it must load."""
    state = safe_load(RunDir(run).latest_checkpoint())
    (name,) = [filename for _, filename in state["best_checkpoint"]["_saved"]]
    safe_load(run / "checkpoints" / name)
    return run / "checkpoints" / name


def test_a_kill_at_any_checkpoint_write_or_delete_leaves_a_best_and_a_last_to_resume(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ignite.engine import Events

    from ignite_mlp import TrainConfig, train

    def config(run: Path) -> TrainConfig:
        return TrainConfig(
            data=str(tree), run_dir=str(run), epochs=2, batch_size=8, lr=0.05, progress=False, tensorboard=False
        )

    with monkeypatch.context() as m:
        ops = _kill_at(m, 0)
        reference = train(config(tmp_path / "reference"), write=lambda s: None)
    acc = reference.history["val_acc_epoch"]
    assert acc[1] > acc[0]  # epoch 2 supersedes epoch 1's best file: the case that matters
    assert ops.count("write") == 4 and len(ops) == 6, ops  # best, last; best, last, and two deletions
    expected = sorted(p.name for p in (tmp_path / "reference" / "checkpoints").iterdir())
    first_last_write = 2  # epoch 1 writes its best file, then its last checkpoint
    final_write = max(i for i, op in enumerate(ops, 1) if op == "write")  # the final epoch's last checkpoint

    for k in range(1, len(ops) + 1):
        run = tmp_path / f"killed-at-{k}"
        with monkeypatch.context() as m, pytest.raises(_Killed):
            _kill_at(m, k)
            train(config(run), write=lambda s: None)
        if k <= first_last_write:  # killed before any last checkpoint: nothing to resume yet
            assert RunDir(run).latest_checkpoint(required=False) is None
            continue
        _best_of(run)  # the newest last checkpoint loads, and so does the best file it names
        if k > final_write:  # killed while deleting superseded files: the run is finished
            with pytest.raises(UserError, match="already finished"):
                train(RunDir(run).resume_config(), write=lambda s: None)
            assert _best_of(run).name == reference.best_checkpoint.name
            continue
        at_start: list[str] = []

        def look(trainer, evaluator, context, seen=at_start, run=run) -> None:  # noqa: ANN001
            # What the resume left on disk before training on: the best it restored is there.
            trainer.add_event_handler(Events.STARTED, lambda _: seen.append(_best_of(run).name))

        resumed = train(RunDir(run).resume_config(), extra_handlers=[look], write=lambda s: None)
        assert len(at_start) == 1, k  # the check ran (and passed) when the resumed training started
        assert resumed.history == reference.history, k
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == expected, k
        best_weights = safe_load(resumed.best_checkpoint)
        for key, value in safe_load(reference.best_checkpoint).items():
            assert torch.equal(best_weights[key], value), (k, key)


def test_a_resume_keeps_unknown_best_files_while_the_known_one_is_missing(tmp_path: Path) -> None:
    from ignite.handlers import Checkpoint
    from torch import nn

    from ignite_mlp.run.resume import remove_orphans

    tracked, orphan = tmp_path / "best_model_1_val_acc=50.0000.pt", tmp_path / "best_model_2_val_acc=60.0000.pt"
    best = Checkpoint({"model": nn.Linear(1, 1)}, str(tmp_path), filename_prefix="best", n_saved=1)
    best.load_state_dict({"_saved": [(50.0, tracked.name)]})
    orphan.write_bytes(b"")
    remove_orphans(best, tmp_path)  # the tracked file is gone (a run killed by an older version)
    assert orphan.exists()  # so the unknown one may be the only best model left: it stays
    tracked.write_bytes(b"")
    remove_orphans(best, tmp_path)  # the tracked file is there: the unknown one was written after it
    assert tracked.exists() and not orphan.exists()
    with pytest.raises(UserError, match="no such checkpoint file"):
        safe_load(tmp_path / "gone.pt")
