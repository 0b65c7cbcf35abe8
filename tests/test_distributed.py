"""ignite_mlp.distributed.launcher: sharded loading, and 2 gloo processes that train like one process.

The multi-process tests run the CLI in a subprocess with a timeout, so a hang fails the test
instead of blocking the suite.
"""

import dataclasses
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ignite_mlp import TrainConfig, train
from ignite_mlp.data import TensorLoader
from ignite_mlp.distributed.launcher import launch
from ignite_mlp.errors import RankError, UserError
from ignite_mlp.handlers.history import HISTORY_KEYS

# Generous: two processes import torch and Ignite on a small, busy machine.
LAUNCH_TIMEOUT = 240


def _labels(loader: TensorLoader) -> list[list[int]]:
    return [y.tolist() for _, y in loader]


def _loader(n: int, batch: int, rank: int = 0, world: int = 1, **kw) -> TensorLoader:
    # Labels are the sample indices, so batches show which samples they hold.
    images = torch.zeros(n, 1, 1, 1, dtype=torch.uint8)
    return TensorLoader(images, torch.arange(n), batch, [0.5], [0.5], rank=rank, world_size=world, **kw)


@pytest.mark.parametrize("world", [2, 3])
def test_training_shards_are_disjoint_and_together_make_the_one_process_batches(world: int) -> None:
    n, batch, epoch = 50, 6, 3
    one = _loader(n, batch, shuffle=True, seed=5)
    one.set_epoch(epoch)
    single = _labels(one)
    shards = []
    for rank in range(world):
        loader = _loader(n, batch, rank, world, shuffle=True, seed=5)
        loader.set_epoch(epoch)
        shards.append(_labels(loader))
        assert all(len(b) <= batch // world for b in shards[-1])
    # Every rank takes the same number of steps: each step is a collective.
    assert len({len(s) for s in shards}) == 1
    seen = [i for shard in shards for b in shard for i in b]
    assert len(seen) == len(set(seen)) == n - n % world  # disjoint; only the tail of n % world left out
    # Step i of all ranks together is the one-process batch i: they agree on the permutation.
    for i in range(len(shards[0])):
        assert sorted(j for shard in shards for j in shard[i]) == sorted(single[i])[: sum(len(s[i]) for s in shards)]
    # Another epoch, another order, still the same on every rank.
    for rank in range(world):
        loader = _loader(n, batch, rank, world, shuffle=True, seed=5)
        loader.set_epoch(epoch + 1)
        assert _labels(loader) != shards[rank]


@pytest.mark.parametrize("world", [2, 3, 4])
def test_validation_shards_hold_every_sample_exactly_once(world: int) -> None:
    n = 11  # does not divide evenly: shards differ by one sample, none is dropped or doubled
    seen = [i for rank in range(world) for b in _labels(_loader(n, 12, rank, world, even_shards=False)) for i in b]
    assert sorted(seen) == list(range(n))


def test_one_process_loader_is_unchanged_by_the_sharding_arguments() -> None:
    plain = TensorLoader(torch.zeros(10, 1, 1, 1, dtype=torch.uint8), torch.arange(10), 4, [0.5], [0.5], shuffle=True)
    assert _labels(plain) == _labels(_loader(10, 4, 0, 1, shuffle=True))


def test_batch_that_does_not_split_is_refused() -> None:
    with pytest.raises(ValueError, match="does not split evenly over 3 processes"):
        _loader(12, 8, 0, 3)
    with pytest.raises(UserError, match="--batch-size must be a multiple of --nproc-per-node 3"):
        TrainConfig(nproc_per_node=3, batch_size=256)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"nproc_per_node": 0}, "--nproc-per-node must be >= 1"),
        ({"backend": "mpi"}, "--backend must be one of"),
        ({"nproc_per_node": 2, "device": "cuda:1"}, "--device must be auto, cpu or cuda with --nproc-per-node > 1"),
        ({"backend": "nccl", "device": "cpu"}, "NCCL only connects GPUs"),
    ],
)
def test_bad_distributed_options_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        TrainConfig(**fields)


def test_cuda_processes_without_the_gpus_are_refused_before_starting(tmp_path: Path) -> None:
    config = TrainConfig(run_dir=str(tmp_path / "r"), device="cuda", nproc_per_node=2, batch_size=8)
    gpus = torch.cuda.device_count()
    with pytest.raises(UserError, match="CUDA is not available" if not gpus else "takes a GPU of its own"):
        launch(dataclasses.replace(config, nproc_per_node=max(2, gpus + 1)))


def test_train_alone_refuses_several_processes(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="ignite_mlp.distributed.launcher.launch"):
        train(TrainConfig(data=str(tree), run_dir=str(tmp_path / "r"), nproc_per_node=2, batch_size=8))


# ----------------------------------------------------------------------------- real processes


def _cli(args: list[str], cwd: Path, launcher: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess, float]:
    """``python [-m LAUNCHER ...] -m ignite_mlp train ARGS``, its output and how long it took."""
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, *launcher, "-m", "ignite_mlp", "train", *args],
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT,
        cwd=cwd,
    )
    return out, time.monotonic() - start


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Three classes whose brightness overlaps, so accuracy lands mid-range (about 60-75% here),
    where a difference in learning would show, unlike on conftest's easily separated classes.
    120 validation images: one image is 0.83 points of accuracy, finer than the 1.5 allowed."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for split in ("train", "test"):
        for k, cls in enumerate(("ant", "bee", "cat")):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(40):
                pixels = np.clip(rng.normal(118 + 10 * k, 50, (8, 8, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


def _flags(data: Path, run_dir: Path, epochs: int) -> list[str]:
    return ["--data", str(data), "--run-dir", str(run_dir), "--epochs", str(epochs), "--batch-size", "8"]


def test_two_gloo_processes_train_like_one_and_resume(data: Path, tmp_path: Path) -> None:
    # One process, in this process: the reference (4 epochs; constant lr, so epochs 1-3 are a 3-epoch run).
    one = train(
        TrainConfig(data=str(data), run_dir=str(tmp_path / "one"), epochs=4, batch_size=8, lr=0.05, progress=False),
        write=lambda s: None,
    ).history

    run_dir = tmp_path / "two"
    flags = [*_flags(data, run_dir, 3), "--lr", "0.05", "--no-progress", "--nproc-per-node", "2"]
    out, _ = _cli(flags, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]

    # One set of run files, written by rank 0 alone.
    history = json.loads((run_dir / "history.json").read_text())
    assert list(history) == list(HISTORY_KEYS) and all(len(v) == 3 for v in history.values())
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["nproc_per_node"], config["world_size"], config["batch_size"]) == (2, 2, 8)
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and checkpoints[1] == "last_checkpoint_45.pt"  # 120 images / 8, 3 epochs
    assert checkpoints[0].startswith("best_model_")
    events = sorted(p.name for p in run_dir.glob("events.out.tfevents.*"))
    assert len(events) == 2 and sum(".hparams." in e for e in events) == 1
    assert (run_dir / "curves.png").is_file()
    assert out.stdout.count("Epoch   3/3") == 1 and out.stdout.count("best validation accuracy") == 1
    assert "2 processes (gloo): each trains on 4 images of every batch of 8" in out.stdout

    # Same global batch, same epochs: the same learning, within 1.5 points of accuracy.
    for epoch in range(3):
        assert abs(history["val_acc_epoch"][epoch] - one["val_acc_epoch"][epoch]) <= 1.5
        assert abs(history["train_acc_epoch"][epoch] - one["train_acc_epoch"][epoch]) <= 1.5
        assert history["loss_epoch"][epoch] == pytest.approx(one["loss_epoch"][epoch], rel=0.02)

    # Resume: the saved config brings back 2 processes; epoch 4 continues as one process's did.
    out, _ = _cli(["--resume", str(run_dir), "--epochs", "4", "--no-progress"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    resumed = json.loads((run_dir / "history.json").read_text())
    assert all(len(v) == 4 for v in resumed.values())
    assert {k: v[:3] for k, v in resumed.items()} == history
    assert abs(resumed["val_acc_epoch"][3] - one["val_acc_epoch"][3]) <= 1.5
    assert resumed["loss_epoch"][3] == pytest.approx(one["loss_epoch"][3], rel=0.02)
    assert (run_dir / "checkpoints" / "last_checkpoint_60.pt").is_file()


FAILING_HANDLER = """
import ignite.distributed as idist
from ignite.engine import Events


def attach(trainer, evaluator, context):
    @trainer.on(Events.ITERATION_COMPLETED(once=3))
    def fail(engine):
        if idist.get_rank() == 1:
            raise RuntimeError("boom on rank 1")
"""


def test_a_failing_rank_ends_the_run_with_its_error(data: Path, tmp_path: Path) -> None:
    handler = tmp_path / "failing.py"
    handler.write_text(FAILING_HANDLER)
    flags = [*_flags(data, tmp_path / "r", 50), "--no-progress", "--nproc-per-node", "2"]
    out, seconds = _cli([*flags, "--handler", f"{handler}:attach"], tmp_path)
    assert out.returncode == 1
    assert "rank 1 failed: RuntimeError: boom on rank 1" in out.stderr
    assert seconds < LAUNCH_TIMEOUT / 2  # it ended; it did not wait for 50 epochs or a timeout


def test_a_user_error_in_the_ranks_is_one_line_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing.tar.gz"
    out, _ = _cli(["--data", str(missing), "--run-dir", str(tmp_path / "r"), "--nproc-per-node", "2"], tmp_path)
    assert out.returncode == 2
    assert f"ignite-mlp: error: --data {missing}" in out.stderr and "Traceback" not in out.stderr


def test_torchrun_launch_trains_one_run(data: Path, tmp_path: Path) -> None:
    # torchrun -m ignite_mlp train, as the README shows (on a free port, not the default 29500).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = ("-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port))
    run_dir = tmp_path / "r"
    out, _ = _cli([*_flags(data, run_dir, 2), "--lr", "0.05", "--no-progress"], tmp_path, torchrun)
    assert out.returncode == 0, out.stderr[-3000:]
    history = json.loads((run_dir / "history.json").read_text())
    assert all(len(v) == 2 for v in history.values())
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["nproc_per_node"], config["world_size"]) == (1, 2)  # torchrun, not the flag, made 2
    assert len(list((run_dir / "checkpoints").glob("last_checkpoint_*.pt"))) == 1
    assert out.stdout.count("Epoch   2/2") == 1 and out.stdout.count("best validation accuracy") == 1


def test_global_batchnorm_normalises_over_every_ranks_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    import ignite.distributed as idist

    from ignite_mlp.distributed import ranks
    from ignite_mlp.distributed.ranks import to_global_batchnorm

    torch.manual_seed(0)
    x = torch.randn(6, 3) * 4 + 2
    reference = torch.nn.BatchNorm1d(3, momentum=0.3)
    model = to_global_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm1d(3, momentum=0.3)))
    # Two ranks holding the same rows: the all-reduce doubles every sum.
    monkeypatch.setattr(idist, "get_world_size", lambda: 2)
    monkeypatch.setattr(ranks, "summed_over_ranks", lambda t: t * 2)
    out = model(x)
    expected = reference(torch.cat([x, x]))[:6]  # BatchNorm1d over the global batch of 12
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(model[0].running_mean, reference.running_mean, atol=1e-6)
    assert torch.allclose(model[0].running_var, reference.running_var, atol=1e-5)
    model.eval()
    reference.eval()
    assert torch.allclose(model(x), reference(x), atol=1e-5)


def test_two_gloo_processes_with_batchnorm_train_like_one(data: Path, tmp_path: Path) -> None:
    # BatchNorm over each rank's 4 images instead of the global 8 learns differently, and each
    # rank would validate with running statistics of its own; normalised over the global batch,
    # 2 processes match 1 to the tolerance of the test without BatchNorm above.
    config = TrainConfig(
        data=str(data), run_dir=str(tmp_path / "one"), epochs=3, batch_size=8, lr=0.05, norm="batch", progress=False
    )
    one = train(config, write=lambda s: None).history
    run_dir = tmp_path / "two"
    flags = [*_flags(data, run_dir, 3), "--lr", "0.05", "--norm", "batch", "--no-progress", "--nproc-per-node", "2"]
    out, _ = _cli(flags, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    history = json.loads((run_dir / "history.json").read_text())
    for epoch in range(3):
        assert abs(history["val_acc_epoch"][epoch] - one["val_acc_epoch"][epoch]) <= 1.5
        assert abs(history["train_acc_epoch"][epoch] - one["train_acc_epoch"][epoch]) <= 1.5
        assert history["loss_epoch"][epoch] == pytest.approx(one["loss_epoch"][epoch], rel=0.02)


def _finish(config: TrainConfig) -> str:
    return f"trained {config.epochs} epochs"


@pytest.mark.parametrize("finished", [(0, 1), (0,)])
def test_a_process_dying_on_its_way_out_fails_the_run_only_if_its_work_was_unfinished(
    finished: tuple[int, ...], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # A stand-in for idist.Parallel: the ranks in `finished` run the real per-rank code to the
    # end, then torch reports process 1 killed by a signal (as gloo's teardown once did in CI).
    import ignite.distributed as idist
    from torch.multiprocessing import ProcessExitedException

    from ignite_mlp.distributed import launcher as distributed

    class RanksThenAbort:
        def __init__(self, **kwargs: object) -> None:
            pass

        def __enter__(self) -> "RanksThenAbort":
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def run(self, fn, *args) -> None:
            for r in finished:
                monkeypatch.setattr(idist, "get_rank", lambda r=r: r)
                fn(r, *args)
            raise ProcessExitedException("process 1 terminated with signal SIGABRT", 1, 4242, -6, "SIGABRT")

    monkeypatch.setattr(distributed.idist, "Parallel", RanksThenAbort)
    monkeypatch.setattr(distributed, "_settle", lambda: None)
    monkeypatch.setattr(distributed, "set_threads", lambda device: None)
    config = TrainConfig(data=str(tmp_path), run_dir=str(tmp_path / "r"), epochs=3, nproc_per_node=2)
    if finished == (0, 1):
        assert launch(config, train_fn=_finish) == "trained 3 epochs"
        assert (
            "warning: after the run, process 1 terminated with signal SIGABRT while exiting" in capsys.readouterr().err
        )
    else:
        with pytest.raises(RankError, match="process 1 failed"):
            launch(config, train_fn=_finish)
