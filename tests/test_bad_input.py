"""A tour of bad inputs given to the real command (``python -m ignite_mlp``): each must be answered
with one line on stderr and exit status 2, no traceback, and nothing written outside the case's
own folder (no data file, run or checkpoint of the shared set-up changed, no payload run).

The set-up (tiny trees, damaged copies, one trained run, one whitened run) is made once for the
module, and every case runs once in the module's fixture: a few as typed, in a new interpreter,
the others each in a process forked from one that has imported torch already
(tests/cli_forker.py), which saves about 3 s of CPU a case. Each test checks one case's answer.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tree

from ignite_mlp import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this creates a file: what a malicious checkpoint or data batch could do.

    Pickled as a call of ``open`` itself, so a loader that allowed any global would run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _copy(tree: Path, to: Path) -> Path:
    shutil.copytree(tree, to)
    return to


def build_world(w: Path) -> None:
    """Every file and folder the cases point at, under ``w``."""
    tree = make_tree(w / "tree")
    (w / "empty").mkdir()
    (w / "notgz.tar.gz").write_text("plain text")
    (w / "afile").write_text("x")
    for f in (_copy(tree, w / "t_empty") / "test" / "cat").iterdir():
        f.unlink()
    (_copy(tree, w / "t_corrupt") / "train" / "bee" / "0002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    victim = _copy(tree, w / "t_trunc") / "train" / "ant" / "0001.png"
    victim.write_bytes(victim.read_bytes()[:60])
    (_copy(tree, w / "t_mismatch") / "test" / "cat").rename(w / "t_mismatch" / "test" / "dog")
    renamed = _copy(tree, w / "t_renamed")
    for split in ("train", "test"):
        (renamed / split / "cat").rename(renamed / split / "dog")
    make_tree(w / "t_small", size=4)
    # A PNG declaring 40000x40000 pixels: 4.8 GB once decoded, 45 bytes on disk.
    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")
    (_copy(tree, w / "t_bomb") / "train" / "ant" / "0003.png").write_bytes(bomb)
    with open(_copy(tree, w / "t_huge") / "test" / "bee" / "0002.png", "r+b") as f:
        f.truncate(100 * 2**20)  # 100 MB, sparse: nothing is written
    (w / "damaged.mlpdata").write_bytes(b"IGNITE-MLP-DATA1" + bytes(100))
    cifar = w / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 1]}
        (cifar / name).write_bytes(pickle.dumps(Payload(w / "PWNED") if name == "data_batch_1" else batch))
    (cifar / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a", b"b"]}))
    (w / "negated.toml").write_text("no-progress = true\n")
    (w / "twice.toml").write_text('handler = ["a:attach"]\nhandlers = ["b:attach"]\n')
    (w / "auto.toml").write_text('resume = "auto"\n')

    # One finished run of 1 epoch, and copies of it with a damaged last checkpoint. (No cache_dir
    # in their config: a case that reads data through them then uses its own folder's cache.)
    quiet = {"progress": False, "epochs": 1}
    train(TrainConfig(data=str(tree), run_dir=str(w / "done"), **quiet), write=lambda s: None)
    for name, damage in (("truncated", None), ("payload", Payload(w / "PWNED"))):
        run = _copy(w / "done", w / f"done_{name}")
        last = next((run / "checkpoints").glob("last_*.pt"))
        if damage is None:
            last.write_bytes(last.read_bytes()[:200])
        else:
            torch.save({"model": damage}, last)
    # A whitened run, and copies with its whitening.pt damaged or gone.
    train(TrainConfig(data=str(tree), run_dir=str(w / "white"), whiten="zca", **quiet), write=lambda s: None)
    (_copy(w / "white", w / "white_corrupt") / "whitening.pt").write_bytes(b"garbage")
    (_copy(w / "white", w / "white_missing") / "whitening.pt").unlink()
    # As if the export extra were not installed: this module shadows onnxruntime.
    (w / "no_onnxruntime").mkdir()
    (w / "no_onnxruntime" / "onnxruntime.py").write_text("raise ImportError('No module named onnxruntime')\n")


@dataclass
class Case:
    name: str
    # The arguments, from the world's folder and the case's own folder.
    argv: Callable[[Path, Path], list[str]]
    message: str  # a part of the line expected (of the last, with several)
    extra_path: str = ""  # a folder of the world put first on PYTHONPATH
    lines: int = 1
    # Run in a new interpreter, as typed, rather than forked from a warm one: the first import's
    # output (a warning at import time, say) would show here.
    fresh: bool = False


def _train(*args: str) -> Callable[[Path, Path], list[str]]:
    """``train`` into the case's folder; ``{w}`` in an argument is the world's folder."""
    return lambda w, here: ["train", "--no-progress", "--run-dir", str(here / "r"), *(a.format(w=w) for a in args)]


def _cmd(*args: str) -> Callable[[Path, Path], list[str]]:
    return lambda w, here: [a.format(w=w, here=here) for a in args]


CASES = [
    Case("missing data path", _train("--data", "{w}/missing", "--no-download"), "downloading is off", fresh=True),
    Case("empty data folder, offline", _train("--data", "{w}/empty"), "could not download"),
    Case("empty class folder", _train("--data", "{w}/t_empty"), "class folder test/cat holds no images"),
    Case("corrupt image", _train("--data", "{w}/t_corrupt"), "0002.png: corrupt image"),
    Case("truncated image", _train("--data", "{w}/t_trunc"), "0001.png: corrupt or truncated image"),
    Case("train/ and test/ classes differ", _train("--data", "{w}/t_mismatch"), "hold different classes"),
    Case("not a gzip tarball", _train("--data", "{w}/notgz.tar.gz"), "not a gzip tarball"),
    Case("hidden sizes empty", _train("--hidden-sizes"), "--hidden-sizes: expected at least one argument"),
    Case("hidden sizes zero", _train("--hidden-sizes", "0"), "--hidden-sizes must be all >= 1"),
    Case("hidden sizes negative", _train("--hidden-sizes", "-5"), "--hidden-sizes must be all >= 1"),
    Case("hidden sizes not integers", _train("--hidden-sizes", "wide"), "--hidden-sizes expects int"),
    Case("lr 0", _train("--lr", "0"), "--lr must be > 0", fresh=True),
    Case("batch size 0", _train("--batch-size", "0"), "--batch-size must be >= 1"),
    Case("epochs 0", _train("--epochs", "0"), "--epochs must be >= 1"),
    Case("seed below 0", _train("--seed", "-1"), "--seed must be in [0, 2**32 - 1]"),
    Case("seed of 2**32", _train("--seed", str(2**32)), "--seed must be in [0, 2**32 - 1]"),
    Case("Nesterov without momentum", _train("--recipe", "strong", "--momentum", "0"), "--momentum must be > 0"),
    Case("infinite learning rate", _train("--lr", "inf"), "--lr must be a finite number"),
    Case("infinite std", _train("--std", "0.5", "inf", "0.5"), "--std must be a finite number"),
    Case("lr neither a number nor auto", _train("--lr", "fast"), "--lr must be a number or auto"),
    Case("unknown device", _train("--device", "tpu"), "--device must be auto, cpu, cuda or cuda:N"),
    Case("unknown progress mode", _train("--progress", "sometimes"), "--progress must be one of"),
    Case("unknown precision", _train("--precision", "fp16"), "--precision must be one of"),
    Case("unknown whitening", _train("--whiten", "pca2"), "--whiten must be one of"),
    Case(
        "negative whitening regulariser",
        _train("--whiten", "zca", "--whiten-regularizer", "-1"),
        "--whiten-regularizer must be >= 0",
    ),
    Case("EMA momentum of 1", _train("--ema-momentum", "1"), "--ema-momentum must be in [0, 1)"),
    Case("negative MixUp parameter", _train("--mixup", "-0.2"), "--mixup must be >= 0"),
    Case("unknown optimizer", _train("--optimizer", "lion"), "--optimizer must be one of"),
    Case("abbreviated option", _train("--hidden-size", "64"), "did you mean --hidden-sizes?"),
    Case(
        "crop padding the images cannot hold",
        _train("--data", "{w}/tree", "--augment", "crop", "--crop-padding", "8"),
        "--crop-padding must be below the image size 8x8",
    ),
    Case(
        "exact ZCA of too few images",
        _train("--data", "{w}/tree", "--whiten", "zca", "--whiten-regularizer", "0"),
        "covariance is singular",
    ),
    Case(
        "unwritable run directory",
        _cmd("train", "--no-progress", "--data", "{w}/tree", "--run-dir", "{w}/afile/run"),
        "cannot write there",
    ),
    Case(
        "run directory already holds a run",
        _cmd("train", "--no-progress", "--data", "{w}/tree", "--run-dir", "{w}/done"),
        "already holds a run",
    ),
    Case(
        "resume with another architecture",
        _cmd("train", "--no-progress", "--resume", "{w}/done", "--epochs", "2", "--hidden-sizes", "64"),
        "the checkpoint's architecture differs",
    ),
    Case(
        "resume from a truncated checkpoint",
        _cmd("train", "--no-progress", "--resume", "{w}/done_truncated", "--epochs", "2"),
        "corrupt or truncated checkpoint",
    ),
    Case(
        "checkpoint needing arbitrary unpickling",
        _cmd("train", "--no-progress", "--resume", "{w}/done_payload", "--epochs", "2"),
        "refused",
        fresh=True,
    ),
    Case(
        "resume that changes the batch size",
        _cmd("train", "--no-progress", "--resume", "{w}/done", "--batch-size", "4"),
        "cannot change --batch-size 256 -> 4",
    ),
    Case(
        "resume that changes the activation",
        _cmd("train", "--no-progress", "--resume", "{w}/done", "--epochs", "2", "--activation", "gelu"),
        "cannot change --activation relu -> gelu",
    ),
    Case(
        "resume of a finished run", _cmd("train", "--no-progress", "--resume", "{w}/done"), "already finished 1 epochs"
    ),
    Case("resume of a missing run", _cmd("train", "--resume", "{w}/nope"), "no run there"),
    Case(
        "lr auto on a resumed run",
        _cmd("train", "--resume", "{w}/done", "--epochs", "2", "--lr", "auto"),
        "--lr auto finds a rate for a new run",
    ),
    Case(
        "handler spec that does not import",
        _train("--handler", "no_such_module:attach"),
        "cannot import no_such_module",
    ),
    Case("switch written as no-progress in run.toml", _train("--config", "{w}/negated.toml"), "not no-progress = true"),
    Case(
        "handler and handlers both in run.toml",
        _train("--config", "{w}/twice.toml"),
        "handler and handlers set the same option",
    ),
    Case(
        'resume = "auto", nothing to resume', _cmd("train", "--config", "{w}/auto.toml"), "no resumable run under runs/"
    ),
    Case("CIFAR-10 batch that would run code", _train("--data", "{w}/cifar"), "not a CIFAR-10 batch, refused"),
    Case(
        "image declaring 40000x40000 pixels",
        _train("--data", "{w}/t_bomb"),
        "0003.png: Image size (1600000000 pixels) exceeds",
    ),
    Case("image file of 100 MB", _train("--data", "{w}/t_huge"), "0002.png: 104857600 bytes"),
    Case("damaged data file", _train("--data", "{w}/damaged.mlpdata"), "damaged data file"),
    Case(
        "evaluate on data with other class names",
        _cmd("evaluate", "{w}/done", "--data", "{w}/t_renamed", "--out", "{here}/cm.png"),
        "its 3 classes are not the run's 3",
    ),
    Case(
        "evaluate on images of another shape",
        _cmd("evaluate", "{w}/done", "--data", "{w}/t_small", "--out", "{here}/cm.png"),
        "its images are 3x4x4",
    ),
    Case(
        "evaluate on an unknown device",
        _cmd("evaluate", "{w}/done", "--device", "tpu", "--out", "{here}/cm.png"),
        "--device must be auto, cpu, cuda or cuda:N",
    ),
    Case(
        "evaluate a whitened run whose whitening.pt is corrupt",
        _cmd("evaluate", "{w}/white_corrupt", "--out", "{here}/cm.png"),
        "whitening.pt: not a whitening file",
    ),
    Case(
        "evaluate a whitened run without its whitening.pt",
        _cmd("evaluate", "{w}/white_missing", "--out", "{here}/cm.png"),
        "whitening.pt: missing",
    ),
    Case(
        "samples with seed below 0",
        _cmd("samples", "--data", "{w}/tree", "--seed", "-1", "--out", "{here}/s.png"),
        "--seed must be in [0, 2**32 - 1]",
    ),
    Case(
        "lr-find with start above end",
        # --no-progress: else the line saying the data were decoded comes first (the rates are
        # checked once the data are loaded).
        _cmd("lr-find", "--no-progress", "--data", "{w}/tree", "--start-lr", "1", "--end-lr", "0.1"),
        "need 0 < start < end",
    ),
    Case("predict with a folder that is no run", _cmd("predict", "{w}/empty", "{w}/tree"), "neither a run directory"),
    Case(
        "predict, nothing readable",
        _cmd("predict", "{w}/done", "{w}/notgz.tar.gz", "{w}/afile"),
        "2 input(s) could not be read, 0 classified",
        lines=3,  # one per input that could not be read, then the count
    ),
    Case("predict --top-k 0", _cmd("predict", "{w}/done", "{w}/tree", "--top-k", "0"), "--top-k must be >= 1"),
    Case(
        "export to a missing folder",
        _cmd("export", "{w}/done", "--format", "onnx", "--out", "{w}/no/m.onnx"),
        "does not exist; create it or choose another --out",
    ),
    Case(
        "export --format onnx without the export extra",
        _cmd("export", "{w}/done", "--format", "onnx", "--out", "{here}/m.onnx"),
        "ONNX export needs onnxruntime, which is not installed",
        extra_path="no_onnxruntime",
        fresh=True,
    ),
]
if torch.cuda.is_available():  # the case needs a machine without CUDA
    CUDA_CASES = []
else:
    CUDA_CASES = [Case("CUDA without one", _train("--device", "cuda", "--data", "{w}/tree"), "CUDA is not available")]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder``, with a file's size and modification time: what a write changes.
    A folder counts by its presence only: its time changes when a command takes the run's lock
    (a file it removes again), which writes nothing."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (0, 0)
        for p in folder.rglob("*")
    }


def _environment(case: Case, world: Path, here: Path) -> dict[str, str]:
    """The case's environment: its own folder for home, caches and temporary files."""
    pythonpath = [str(world / case.extra_path)] if case.extra_path else []
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*pythonpath, str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "HOME": str(here),
        "TMPDIR": str(here),
        "XDG_CACHE_HOME": str(here / ".cache"),
        "IGNITE_MLP_CACHE": str(here / "cache"),
    }


@dataclass
class Answer:
    status: int
    stderr: str


def run_fresh(case: Case, world: Path, here: Path) -> Answer:
    """``python -m ignite_mlp ...`` in a new interpreter, run from the case's folder."""
    here.mkdir(parents=True)
    argv = [sys.executable, "-m", "ignite_mlp", *case.argv(world, here)]
    env = _environment(case, world, here)
    done = subprocess.run(argv, cwd=here, env=env, capture_output=True, text=True, timeout=300)
    return Answer(done.returncode, done.stderr)


def run_forked(cases: list[tuple[Case, Path]], world: Path) -> dict[str, Answer]:
    """The cases one after another, each in a process forked from one that imported torch once
    (see tests/cli_forker.py): the same command, run from its own folder, at a fraction of the cost."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    forker = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "cli_forker.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    answers = {}
    try:
        for case, here in cases:
            here.mkdir(parents=True)
            request = {
                "argv": case.argv(world, here),
                "cwd": str(here),
                "env": _environment(case, world, here),
                "path": [str(world / case.extra_path)] if case.extra_path else [],
                "stdout": str(here / "stdout"),
                "stderr": str(here / "stderr"),
            }
            forker.stdin.write(json.dumps(request) + "\n")  # type: ignore[union-attr]
            forker.stdin.flush()  # type: ignore[union-attr]
            status = json.loads(forker.stdout.readline())["status"]  # type: ignore[union-attr]
            answers[case.name] = Answer(status, (here / "stderr").read_text())
    finally:
        forker.stdin.close()  # type: ignore[union-attr]
        forker.wait(timeout=60)
    return answers


@pytest.fixture(scope="module")
def tour(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Answer], list[str]]:
    """Every case's answer, and the paths of the world that changed (none, if all went well)."""
    world = tmp_path_factory.mktemp("world")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("IGNITE_MLP_CACHE", str(tmp_path_factory.mktemp("world-cache")))
        build_world(world)
    before = _snapshot(world)
    folders = tmp_path_factory.mktemp("cases")
    numbered = [(case, folders / f"{i:02d}") for i, case in enumerate(CASES + CUDA_CASES)]
    # The fresh interpreters run beside the forked cases: they are the slow ones.
    with ThreadPoolExecutor(max_workers=2) as pool:
        fresh = {c.name: pool.submit(run_fresh, c, world, here) for c, here in numbered if c.fresh}
        answers = run_forked([(c, here) for c, here in numbered if not c.fresh], world)
        answers |= {name: future.result() for name, future in fresh.items()}
    after = _snapshot(world)
    return world, answers, sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


@pytest.mark.parametrize("case", CASES + CUDA_CASES, ids=lambda c: c.name)
def test_bad_input_is_one_line_and_exit_2(case: Case, tour: tuple) -> None:
    world, answers, changed = tour
    answer = answers[case.name]
    err = answer.stderr
    assert answer.status == 2, (answer.status, err)
    assert err.count("\n") == case.lines and err.endswith("\n"), err
    assert "Traceback" not in err and case.message in err, err
    assert not (world / "PWNED").exists()  # no crafted pickle ran
    assert changed == [], "a case wrote into the shared data or runs"
