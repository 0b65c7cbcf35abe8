"""ignite_mlp.run.lr_finder: the suggestion lands where plain SGD trains well, the finder trains on the
run's own batches, ``lr-find`` writes only its plot, and ``train --lr auto`` trains with the
suggestion and records it."""

from __future__ import annotations

import io
import json
import math
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_gray_tree, run_cli
from ignite.engine import Engine, Events
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from ignite_mlp.cli import build_parser, config_from_namespace
from ignite_mlp.config.train_config import TrainConfig
from ignite_mlp.data import Dataset
from ignite_mlp.run import lr_finder
from ignite_mlp.run.lr_finder import LRCurve, lr_find, plot_lr_curve
from ignite_mlp.run.training import train

BLUE, RED = (31, 119, 180), (214, 39, 40)  # matplotlib's tab:blue (the curve) and tab:red (the mark)


def _noisy_classes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """3 classes of 8x8 RGB images whose brightness differs by class, under heavy noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    base = (40 + 80 * labels).float().view(-1, 1, 1, 1)
    images = base + 60 * torch.randn(n, 3, 8, 8, generator=generator)
    return images.clamp(0, 255).to(torch.uint8), labels


def _plain_sgd_loss(images: torch.Tensor, labels: torch.Tensor, lr: float, steps: int = 100) -> float:
    """The tutorial's network trained by a plain PyTorch loop at a fixed ``lr``: the training
    loss after ``steps`` steps of batch 32 (inf if it blew up)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 128), nn.ReLU(), nn.Linear(128, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    x = (images.float() / 255 - 0.5) / 0.5
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        pick = torch.randint(0, len(x), (32,), generator=generator)
        loss = nn.functional.cross_entropy(model(x[pick]), labels[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = nn.functional.cross_entropy(model(x), labels).item()
    return final if math.isfinite(final) else math.inf


def _pixels_near(image: np.ndarray, colour: tuple[int, int, int], tolerance: int = 12) -> int:
    return int((np.abs(image[..., :3].astype(int) - colour).max(axis=2) <= tolerance).sum())


def test_suggestion_falls_where_plain_sgd_trains_well_and_the_plot_shows_it(tmp_path: Path) -> None:
    train_x, train_y = _noisy_classes(600, seed=0)
    test_x, test_y = _noisy_classes(60, seed=1)
    dataset = Dataset(train_x, train_y, test_x, test_y, ["a", "b", "c"], "generated")
    # The workable range, measured independently: rates at which 100 plain SGD steps bring the
    # training loss below a tenth of chance level (ln 3); half-decade steps from 1e-4 to 10.
    grid = [10.0**e for e in np.arange(-4, 1.01, 0.5)]
    workable = [lr for lr in grid if _plain_sgd_loss(train_x, train_y, lr) < 0.1 * math.log(3)]
    assert grid[0] < workable[0] and workable[-1] < grid[-1], "the grid must show where training works"

    config = TrainConfig(batch_size=32, progress=False)
    curve, plot = lr_find(config, out=tmp_path / "lr_finder.png", write=lambda line: None, dataset=dataset)
    assert workable[0] <= curve.suggestion <= workable[-1], (curve.suggestion, workable)
    assert curve.diverged and curve.suggestion in curve.lrs
    assert all(b > a for a, b in zip(curve.lrs, curve.lrs[1:], strict=False))  # the rate only grows

    assert plot == plot_lr_curve(curve, tmp_path / "lr_finder.png")
    with Image.open(plot) as img:
        assert img.format == "PNG"
        pixels = np.asarray(img.convert("RGB"))
    assert _pixels_near(pixels, BLUE) > 300  # the curve: a line across the plot
    assert _pixels_near(pixels, RED) > 50  # the suggestion's dot and line


def test_a_nan_loss_counts_as_divergence() -> None:
    curve = LRCurve([1e-3, 1e-2, 1e-1, 1.0], [2.0, 1.5, 1.0, math.inf], 1e-2)
    assert curve.diverged and "diverged" in curve.summary()


def _scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_train_lr_auto_trains_with_the_suggestion_and_records_it(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "auto"
    common = ["--data", str(tree), "--epochs", "2", "--batch-size", "8", "--no-progress"]
    assert run_cli(["train", *common, "--run-dir", str(run), "--lr", "auto"]) == 0
    out = capsys.readouterr().out
    saved = json.loads((run / "config.json").read_text())
    # The finder run again on its own gives the rate config.json holds, and the printed one.
    alone = TrainConfig(data=str(tree), batch_size=8, progress=False)
    curve, _ = lr_find(alone, out=tmp_path / "alone.png", write=lambda line: None)
    assert saved["lr"] == curve.suggestion and f"suggested learning rate {curve.suggestion:.3g}" in out
    assert (run / "lr_finder.png").is_file()
    logged = _scalars(run, "lr_finder/loss")
    finite = [(step, loss) for step, loss in enumerate(curve.losses, start=1) if math.isfinite(loss)]
    assert [step for step, _ in logged] == [step for step, _ in finite]
    assert [v for _, v in logged] == pytest.approx([loss for _, loss in finite], rel=1e-6)
    # It trained with that rate, and the finder left the random state alone: a run given the
    # rate by hand has the same history.
    by_hand = tmp_path / "by-hand"
    assert run_cli(["train", *common, "--run-dir", str(by_hand), "--lr", repr(saved["lr"])]) == 0
    assert json.loads((run / "history.json").read_text()) == json.loads((by_hand / "history.json").read_text())
    # A resumed run keeps its own rate.
    assert run_cli(["train", "--resume", str(run), "--epochs", "3", "--lr", "auto"]) == 2
    assert "a resumed run keeps its own" in capsys.readouterr().err


def test_lr_find_writes_only_its_plot_and_prints_a_train_command(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    args = ["--data", str(tree), "--batch-size", "8", "--hidden-sizes", "64", "--no-progress"]
    assert run_cli(["lr-find", *args, "--num-iter", "40"]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in work.rglob("*")) == ["lr_finder.png"]  # no runs/, nothing else
    command = next(line.removeprefix("train with it: ") for line in out.splitlines() if "train with it" in line)
    words = shlex.split(command)
    assert words[:2] == ["ignite-mlp", "train"]
    parsed = config_from_namespace(build_parser().parse_args(words[1:]))
    suggestion = float(words[words.index("--lr") + 1])
    assert f"suggested learning rate {suggestion:.3g}" in out
    assert parsed == TrainConfig(data=str(tree), batch_size=8, hidden_sizes=[64], progress=False, lr=suggestion)

    # A 1-channel data set of another size, into a run directory: only the plot is written there.
    gray = make_gray_tree(tmp_path / "gray")
    run_dir = tmp_path / "later-run"
    assert run_cli(["lr-find", "--data", str(gray), "--batch-size", "8", "--run-dir", str(run_dir)]) == 0
    assert sorted(p.name for p in run_dir.rglob("*")) == ["lr_finder.png"]
    assert f"--run-dir {run_dir}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--lr", "fast"], "--lr must be a number or auto (got 'fast')"),
        (["lr-find", "--start-lr", "1", "--end-lr", "0.1"], "need 0 < start < end"),
        (["lr-find", "--num-iter", "2"], "--num-iter must be >= 5"),
    ],
)
def test_bad_finder_input_is_one_line(
    argv: list[str], message: str, tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert run_cli([*argv, "--data", str(tree), "--run-dir", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_config_takes_lr_auto_from_toml_and_flags(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('lr = "auto"\n')
    parsed = config_from_namespace(build_parser().parse_args(["train", "--config", str(toml)]))
    assert parsed.lr == "auto"
    assert config_from_namespace(build_parser().parse_args(["train", "--lr", "0.5"])).lr == 0.5


def _first_batch(trainer: Engine, into: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Keep a copy of ``trainer``'s first batch (the loader recycles its buffers)."""

    @trainer.on(Events.ITERATION_STARTED(once=1))
    def keep(engine: Engine) -> None:
        x, y = engine.state.batch
        into.append((x.clone(), y.clone()))


def test_the_finder_trains_on_the_runs_own_first_batch(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    finder_batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    real_create_trainer = lr_finder.create_trainer

    def create_trainer(*args: object, **kwargs: object) -> Engine:
        trainer = real_create_trainer(*args, **kwargs)
        _first_batch(trainer, finder_batches)
        return trainer

    monkeypatch.setattr(lr_finder, "create_trainer", create_trainer)
    run_batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    config = TrainConfig(
        data=str(tree),
        run_dir=str(tmp_path / "r"),
        epochs=1,
        batch_size=8,
        lr="auto",
        whiten="zca",
        mixup=0.4,
        progress="off",
        tensorboard=False,
    )
    train(config, extra_handlers=[lambda trainer, evaluator, context: _first_batch(trainer, run_batches)])
    (finder_x, finder_y), (run_x, run_y) = finder_batches[0], run_batches[0]
    assert torch.equal(finder_x, run_x) and torch.equal(finder_y, run_y)
    # What the run trains on: mixed labels (class probabilities), whitened images (not pixels in [-1, 1]).
    assert run_y.shape == (8, 3) and torch.allclose(run_y.sum(1), torch.ones(8))
    assert run_x.abs().max() > 1.5


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("flags", "drawn"), [([], True), (["--no-progress"], False)])
def test_lr_find_draws_its_progress_bar_on_a_terminal(
    flags: list[str], drawn: bool, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    argv = ["lr-find", "--data", str(tree), "--batch-size", "8", "--num-iter", "10", "--out", str(tmp_path / "p.png")]
    assert run_cli([*argv, *flags]) == 0
    assert ("loss=" in terminal.getvalue()) is drawn  # Ignite's bar shows the batch loss


def test_lr_find_help_lists_only_the_options_it_uses(capsys: pytest.CaptureFixture) -> None:
    assert run_cli(["lr-find", "--help"]) == 0
    flags = {word.rstrip(",") for word in capsys.readouterr().out.split() if word.startswith("--")}
    for used in ("--data", "--recipe", "--whiten", "--mixup", "--hidden-sizes", "--optimizer", "--batch-size"):
        assert used in flags
    for used in ("--start-lr", "--end-lr", "--num-iter", "--device", "--precision", "--out", "--progress", "--seed"):
        assert used in flags
    for unused in ("--epochs", "--lr", "--lr-schedule", "--tensorboard", "--resume", "--handler", "--ema-momentum"):
        assert unused not in flags


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--end-lr", "inf"], "--end-lr must be a rate from 1e-12 to 1000 (got inf)"),
        (["--end-lr", "1e309"], "--end-lr must be a rate from 1e-12 to 1000 (got inf)"),
        (["--start-lr", "5e-324"], "--start-lr must be a rate from 1e-12 to 1000"),
        (["--start-lr", "0.1", "--end-lr", "0.1"], "need 0 < start < end; e.g. 1e-07 and 10"),
        (["--num-iter", "100000000"], "--num-iter must be >= 5 and <= 10000"),
    ],
)
def test_finder_options_are_checked_before_any_data_loads(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # The data path does not exist: an error about it would mean the data was looked at first.
    assert run_cli(["lr-find", "--data", str(tmp_path / "missing"), "--no-download", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
