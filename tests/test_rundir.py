"""ignite_mlp.run.rundir: one owner of a run directory, checked reads, one writer at a time.

The run-level cases go through the real CLI (``cli.main`` in this process, or ``python -m
ignite_mlp`` where a second process matters) on one tiny trained run, copied per test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import make_tree, run_cli

from ignite_mlp.data.whitening import Whitening
from ignite_mlp.errors import UserError
from ignite_mlp.inference.outputs import refuse_run_file
from ignite_mlp.run.rundir import CONFIG, RunDir, RunLock

PACKAGE = Path(__file__).resolve().parents[1] / "ignite_mlp"


def _one_line_error(capsys: pytest.CaptureFixture, *expected: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch run on a tiny tree (trained once; tests work on copies of it)."""
    root = tmp_path_factory.mktemp("trained")
    tree = make_tree(root / "tree")
    run = root / "run"
    argv = ["train", "--data", str(tree), "--run-dir", str(run), "--epochs", "1", "--batch-size", "8"]
    assert run_cli([*argv, "--no-progress", "--hidden-sizes", "16"]) == 0
    return run


@pytest.fixture
def run(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    (copy / ".lock").unlink(missing_ok=True)
    capsys.readouterr()
    return copy


def _files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def _resume(run: Path, *extra: str) -> list[str]:
    return ["train", "--resume", str(run), "--epochs", "2", "--no-progress", *extra]


# ------------------------------------------------------------------------------------ names


def test_the_configuration_file_is_named_in_rundir_only() -> None:
    spelled = sorted(
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if CONFIG in p.read_text() and p.name != "rundir.py"
    )
    assert CONFIG == "config.json"
    assert spelled == [], f"name the run's files through ignite_mlp.run.rundir: {spelled}"


def test_predict_and_export_load_runs_without_ignite_or_the_training_modules() -> None:
    code = (
        "import sys\n"
        "import ignite_mlp.inference.export, ignite_mlp.inference.predict\n"
        "training = ('ignite_mlp.run.', 'ignite_mlp.handlers', 'ignite_mlp.engine')\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] == 'ignite' or m.startswith(training)]\n"
        "print(sorted(loaded))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    # The run's files, split by job (names, the configuration record, tensor files): no training module.
    run_files = ["ignite_mlp.run.checkpoint_io", "ignite_mlp.run.record", "ignite_mlp.run.rundir"]
    assert done.stdout.strip() == str(run_files)


def test_owned_names_and_foreign_files(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    for name in ("config.json", "model.onnx", "events.out.tfevents.1.host", "checkpoints/last_checkpoint_4.pt"):
        (tmp_path / name).write_bytes(b"")
    assert run.foreign() == []
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "checkpoints" / "keep.txt").write_text("mine")
    (tmp_path / "model.onnx").unlink()
    (tmp_path / "model.onnx").mkdir()  # an owned name, but not as a folder
    assert [p.name for p in run.foreign()] == ["keep.txt", "model.onnx", "notes.txt"]


# ------------------------------------------------------------------------------------- lock


def _hold_lock(run: Path) -> subprocess.Popen:
    code = (
        "import sys, time\n"
        "from ignite_mlp.run.rundir import RunDir\n"
        "held = RunDir(sys.argv[1]).lock()\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_blocks_nothing(
    run: Path, capsys: pytest.CaptureFixture
) -> None:
    holder = _hold_lock(run)
    try:
        before = _files(run)
        assert run_cli(_resume(run)) == 2
        _one_line_error(capsys, "in use by another ignite-mlp process", f"pid {holder.pid}")
        assert _files(run) == before  # the refused resume wrote nothing
        data = json.loads((run / "config.json").read_text())["data"]
        # Commands whose output defaults into the run take its lock too.
        for argv in (
            ["export", str(run), "--format", "torchscript"],
            ["evaluate", str(run)],
            ["lr-find", "--data", data, "--run-dir", str(run)],
        ):
            assert run_cli(argv) == 2, argv
            _one_line_error(capsys, f"pid {holder.pid}")
        assert _files(run) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run / ".lock").read_text().strip() == str(holder.pid)  # left behind by the killed holder ...
    assert run_cli(_resume(run)) == 0  # ... and blocking nothing
    assert len(json.loads((run / "history.json").read_text())["val_loss"]) == 2
    assert not (run / ".lock").exists()  # a writer that finishes removes its lock file


def test_a_lock_released_under_a_waiting_opener_is_taken_on_the_new_file(run: Path) -> None:
    first = RunDir(run).lock()
    stale = os.open(run / ".lock", os.O_RDWR)  # opened while held, as a second writer would
    first.release()
    assert not (run / ".lock").exists()
    second = RunDir(run).lock()  # a new file: the descriptor still open on the old one locks nothing
    assert (run / ".lock").read_text().strip() == str(os.getpid())
    assert os.fstat(stale).st_ino != os.stat(run / ".lock").st_ino
    second.release()
    # What the retry loop asks after it locked: the file it holds is gone or replaced.
    assert not RunLock._is_current(stale, run / ".lock")  # gone
    (run / ".lock").write_text("")
    assert not RunLock._is_current(stale, run / ".lock")  # replaced
    os.close(stale)
    fresh = os.open(run / ".lock", os.O_RDWR)
    assert RunLock._is_current(fresh, run / ".lock")
    os.close(fresh)


def test_the_lock_is_exclusive_within_one_process_too(run: Path) -> None:
    with RunDir(run).lock():
        with pytest.raises(UserError, match=f"pid {os.getpid()}"):
            RunDir(run).lock()
    RunDir(run).lock().release()  # free again once the block is left


# ------------------------------------------------------------------------------ run folders


def test_overwrite_removes_every_file_of_the_old_run_and_only_those(run: Path, capsys: pytest.CaptureFixture) -> None:
    config = json.loads((run / "config.json").read_text())
    stale = ["model.onnx", "model.torchscript.pt", "resumes.json", "whitening.pt", "lr_finder.png"]
    for name in stale:
        (run / name).write_bytes(b"old run")
    (run / "checkpoints" / "last_checkpoint_999.pt").write_bytes(b"old run")
    argv = ["train", "--data", config["data"], "--run-dir", str(run), "--epochs", "1", "--batch-size", "8"]
    argv += ["--no-progress", "--hidden-sizes", "8", "--overwrite"]
    assert run_cli(argv) == 0
    left = {p.name for p in run.iterdir()}
    assert not left & set(stale), left
    assert not (run / "checkpoints" / "last_checkpoint_999.pt").exists()
    assert json.loads((run / "config.json").read_text())["hidden_sizes"] == [8]
    # A folder holding anything a run does not write is refused, and nothing is deleted.
    (run / "notes.txt").write_text("the user's")
    before = _files(run)
    capsys.readouterr()
    assert run_cli(argv) == 2
    _one_line_error(capsys, "notes.txt", "move those away")
    assert _files(run) == before


@pytest.mark.parametrize("where", ["root", "home", "not a run"])
def test_a_new_run_refuses_root_home_and_folders_holding_other_files(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("the user's")
    monkeypatch.setenv("HOME", str(home))
    folder = {"root": Path("/"), "home": home, "not a run": project}[where]
    for extra in ([], ["--overwrite"]):
        argv = ["train", "--data", str(tmp_path / "no-data"), "--run-dir", str(folder), "--no-progress", *extra]
        assert run_cli(argv) == 2
        _one_line_error(capsys, f"--run-dir {folder}")
    assert [p.name for p in home.iterdir()] == ["thesis.tex"]
    assert [p.name for p in project.iterdir()] == ["notes.txt"]


# ---------------------------------------------------------------------------------- outputs


def test_an_out_onto_a_run_file_is_refused_and_the_file_unchanged(run: Path, capsys: pytest.CaptureFixture) -> None:
    best = next((run / "checkpoints").glob("best_model_*.pt"))
    before = _files(run)
    data = json.loads((run / "config.json").read_text())["data"]
    cases = [
        ["evaluate", str(run), "--out", str(run / "config.json")],
        ["export", str(run), "--format", "torchscript", "--out", str(best)],
        ["samples", "--data", data, "--out", str(run / "history.json")],
        ["lr-find", "--data", data, "--out", str(run / "checkpoints" / "new.pt")],
    ]
    for argv in cases:
        assert run_cli(argv) == 2, argv
        _one_line_error(capsys, "a file of the run", "choose another --out")
    assert _files(run) == before
    with pytest.raises(UserError, match="config.json, a file of the run"):
        link = run.parent / "innocent.png"
        link.symlink_to(run / "config.json")  # an output that leads into a run is judged by where it leads
        refuse_run_file(link)


def test_a_planted_symlink_is_never_written_through(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    # At the output's name and at the names earlier versions wrote their temporary file under.
    for name in ("model.torchscript.pt", ".model.torchscript.pt.pending", ".model.torchscript.pt.tmp"):
        (run / name).symlink_to(target)
    assert run_cli(["export", str(run), "--format", "torchscript"]) == 0
    assert target.read_text() == "precious"
    assert not (run / "model.torchscript.pt").is_symlink()
    assert zipfile.is_zipfile(run / "model.torchscript.pt")  # the export itself, where the link was
    # At the lock's name: refused, not followed.
    (run / ".lock").unlink(missing_ok=True)
    (run / ".lock").symlink_to(target)
    capsys.readouterr()
    assert run_cli(["export", str(run), "--format", "torchscript"]) == 2
    _one_line_error(capsys, "is a symlink")
    assert target.read_text() == "precious"


# --------------------------------------------------------------------------------- handlers


def test_resume_imports_a_handler_of_the_run_only_when_named_again(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "ran"
    planted = tmp_path / "planted.py"
    planted.write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n"
        "def attach(trainer, evaluator, context):\n    pass\n"
    )
    spec = f"{planted}:attach"
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "handlers": [spec]}))
    assert run_cli(_resume(run)) == 0
    out = capsys.readouterr().out
    assert not marker.exists()
    assert f"the run had handlers {spec}" in out and f"--handler {spec}" in out
    # Named again on the command line: loaded like any --handler.
    assert run_cli(_resume(run, "--epochs", "3", "--handler", spec)) == 0
    assert marker.read_text() == "imported"


# --------------------------------------------------------------------------- checked reads


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda c: {**c, "epochs": "ten"}, "--epochs must be int (got 'ten')"),
        (lambda c: {**c, "classes": ["ant", "ant", "cat"]}, "classes must be a list of distinct names"),
        (lambda c: {**c, "image_shape": [3, -1, 8]}, "image_shape must be three positive ints"),
        (lambda c: [c], "holds a list, not a run's configuration"),
        (lambda c: {**c, "lr": float("nan")}, "--lr must be a finite number"),
    ],
)
def test_a_tampered_configuration_is_one_line_exit_2(
    tamper, message: str, run: Path, capsys: pytest.CaptureFixture
) -> None:
    path = run / "config.json"
    path.write_text(json.dumps(tamper(json.loads(path.read_text()))))
    for argv in (["evaluate", str(run)], ["export", str(run), "--format", "torchscript"], _resume(run)):
        assert run_cli(argv) == 2, argv
        _one_line_error(capsys, str(path), message)


@pytest.mark.parametrize(
    ("value", "message"),
    [("a string", "holds a str where a tensor goes"), (None, "holds a NoneType where a tensor goes"), ("shape", "")],
)
def test_a_tampered_checkpoint_is_one_line_exit_2(
    value, message: str, run: Path, capsys: pytest.CaptureFixture
) -> None:
    best = next((run / "checkpoints").glob("best_model_*.pt"))
    last = next((run / "checkpoints").glob("last_checkpoint_*.pt"))
    weights = torch.load(best, weights_only=True)
    key = next(iter(weights))
    weights[key] = torch.zeros(5, 5) if value == "shape" else value
    torch.save(weights, best)
    state = torch.load(last, weights_only=True)
    state["model"] = weights
    torch.save(state, last)
    message = message or f"{key}: checkpoint (5, 5) vs model"
    for argv in (["evaluate", str(run)], ["predict", str(run), str(run)], _resume(run)):
        assert run_cli(argv) == 2, argv
        _one_line_error(capsys, message)


@pytest.mark.parametrize("part", ["optimizer", "trainer", "history"])
def test_a_tampered_training_state_is_one_line_exit_2(part: str, run: Path, capsys: pytest.CaptureFixture) -> None:
    last = next((run / "checkpoints").glob("last_checkpoint_*.pt"))
    state = torch.load(last, weights_only=True)
    state[part] = {"state": "not a state", "param_groups": None, "iteration": "x", "epoch_length": [1]}
    torch.save(state, last)
    before = _files(run)
    assert run_cli(_resume(run)) == 2
    _one_line_error(capsys, str(last))
    assert {p: data for p, data in _files(run).items() if p in before} == before  # (an empty event file aside)


def test_whitening_round_trips_and_must_fit_the_images(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    whitening = Whitening(torch.rand(12), torch.eye(12))
    run.write_whitening(whitening)
    loaded = run.read_whitening(features=12)
    assert torch.equal(loaded.mean, whitening.mean) and torch.equal(loaded.matrix, whitening.matrix)
    with pytest.raises(UserError, match="measured on images of 12 values, the run's have 48"):
        run.read_whitening(features=48)
    torch.save({"mean": "x", "matrix": torch.eye(2)}, run.whitening)
    with pytest.raises(UserError, match="not a whitening file"):
        run.read_whitening()
    run.whitening.write_bytes(b"not a tensor file")
    with pytest.raises(UserError, match="not a whitening file"):
        run.read_whitening()
    with pytest.raises(UserError, match="missing"):
        RunDir(tmp_path / "elsewhere").read_whitening()
