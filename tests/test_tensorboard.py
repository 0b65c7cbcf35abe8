"""ignite_mlp.handlers.tensorboard.logger: what a run writes, read back by TensorBoard itself.

Two runs on tiny generated data share this module: ``full`` trains 4 epochs straight with
histograms on; ``resumed`` trains 2 epochs, is resumed for 4, stopped by Ctrl-C midway through
epoch 3, and resumed again to the end. Everything is read with the ``tensorboard`` package's
own ``EventAccumulator`` (and, in the last test, from a real ``tensorboard`` server over HTTP)
and checked against what the run left on disk (``history.json``, ``config.json``,
checkpoints) or against numbers worked out by hand from the data and the configuration.
"""

from __future__ import annotations

import gc
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import CLASSES, make_tree, quiet, read_history
from ignite.engine import Engine, Events
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from ignite_mlp import TrainConfig, train
from ignite_mlp.data import normalization
from ignite_mlp.errors import TrainingInterrupted
from ignite_mlp.handlers.history import HISTORY_KEYS, History
from ignite_mlp.handlers.tensorboard.logger import TensorboardView, attach_tensorboard
from ignite_mlp.model import MLP
from ignite_mlp.plots import confusion_matrix_figure, image_grid
from ignite_mlp.run.rundir import RunDir

# The tiny data: 3 classes, 12 training and 4 validation images each, 8x8 RGB.
N_TRAIN, N_VAL, SIDE = 36, 12, 8
BATCH, EPOCHS = 8, 4
ITERS_PER_EPOCH = math.ceil(N_TRAIN / BATCH)  # 5
EPOCH_STEPS = [ITERS_PER_EPOCH * e for e in range(1, EPOCHS + 1)]  # [5, 10, 15, 20]
STOP_AFTER = 12  # the Ctrl-C lands after this iteration (in epoch 3)


def _ctrl_c_after(iteration: int):
    def attach(trainer: Engine, evaluator: Engine, context: Any) -> None:
        @trainer.on(Events.ITERATION_COMPLETED(once=iteration))
        def _(_: Engine) -> None:
            os.kill(os.getpid(), signal.SIGINT)  # what a user's Ctrl-C does

    return attach


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tensorboard")
    tree = make_tree(root / "tree")
    common = dict(data=str(tree), cache_dir=str(root / "cache"), batch_size=BATCH, lr=0.05, progress=False)
    train(
        TrainConfig(
            run_dir=str(root / "runs" / "full"), epochs=EPOCHS, tb_histograms=True, tb_images_every=1, **common
        ),
        write=quiet,
    )

    resumed = root / "runs" / "resumed"
    train(TrainConfig(run_dir=str(resumed), epochs=2, tb_images_every=3, **common), write=quiet)
    with pytest.raises(TrainingInterrupted):
        train(RunDir(resumed).resume_config(epochs=EPOCHS), [_ctrl_c_after(STOP_AFTER)], write=quiet)
    (stopped,) = (resumed / "checkpoints").glob("interrupted_checkpoint_*.pt")
    (root / "stopped_at").write_text(stopped.stem.rsplit("_", 1)[1])
    train(RunDir(resumed).resume_config(), write=quiet)
    return root / "runs"


def _read(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0, "histograms": 0})
    acc.Reload()
    return acc


def _scalars(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _f32(values: list[float]) -> list[float]:
    # TensorBoard stores scalars as float32.
    return [float(np.float32(v)) for v in values]


def _grid_size(count: int, title_lines: int) -> tuple[int, int]:
    """(width, height) of an image grid by hand: 8x8 images enlarged 12x to 96 px, 8 columns,
    14 px per title line, 2 px between cells."""
    cols = min(8, count)
    rows = math.ceil(count / cols)
    return cols * 96 + (cols + 1) * 2, rows * (96 + 14 * title_lines) + (rows + 1) * 2


CONFUSION_SIDE = 16 + 80 + 3 * 36 + 4  # caption, class names, 3 cells of 36 px, margin


@pytest.mark.parametrize("name", ["full", "resumed"])
def test_epoch_scalars_equal_history_json_value_for_value(runs: Path, name: str) -> None:
    acc, history = _read(runs / name), read_history(runs / name)
    assert len(history["val_loss"]) == EPOCHS
    for key in HISTORY_KEYS:
        assert _scalars(acc, f"epoch/{key}") == list(zip(EPOCH_STEPS, _f32(history[key]), strict=True)), key


@pytest.mark.parametrize("name", ["full", "resumed"])
def test_one_loss_per_iteration_run_and_the_lr_at_each_epoch_start(runs: Path, name: str) -> None:
    acc = _read(runs / name)
    assert [step for step, _ in _scalars(acc, "train/loss")] == list(range(1, EPOCHS * ITERS_PER_EPOCH + 1))
    assert _scalars(acc, "train/lr/group_0") == [
        (s - ITERS_PER_EPOCH + 1, float(np.float32(0.05))) for s in EPOCH_STEPS
    ]


def test_resume_duplicates_no_step_and_matches_a_straight_run(runs: Path) -> None:
    full, resumed = _read(runs / "full"), _read(runs / "resumed")
    for tag in resumed.Tags()["scalars"]:
        steps = [step for step, _ in _scalars(resumed, tag)]
        assert steps == sorted(set(steps)), tag  # each step once, in order
    shared = ["train/loss", "train/lr/group_0", "time/epoch_seconds", *(f"epoch/{k}" for k in HISTORY_KEYS)]
    for tag in shared:
        assert [s for s, _ in _scalars(resumed, tag)] == [s for s, _ in _scalars(full, tag)], tag
    # Resuming is exact, so the resumed run logged the very values of the straight one.
    assert _scalars(resumed, "epoch/val_acc_epoch") == _scalars(full, "epoch/val_acc_epoch")


def test_epoch_time_and_samples_per_second(runs: Path) -> None:
    acc = _read(runs / "full")
    seconds = _scalars(acc, "time/epoch_seconds")
    throughput = _scalars(acc, "time/samples_per_second")
    assert [s for s, _ in seconds] == [s for s, _ in throughput] == EPOCH_STEPS
    assert all(v > 0 for _, v in seconds)
    for (_, sec), (_, per_second) in zip(seconds, throughput, strict=True):
        assert per_second * sec == pytest.approx(N_TRAIN, rel=1e-5)  # every training image, once
    assert [s for s, _ in _scalars(acc, "time/validation_seconds")] == EPOCH_STEPS


def _hparams(acc: EventAccumulator) -> tuple[dict[str, Any], int]:
    content = acc.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    end = HParamsPluginData.FromString(content["_hparams_/session_end_info"]).session_end_info
    values = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    return values, end.status


@pytest.mark.parametrize("name", ["full", "resumed"])
def test_hparams_hold_the_config_and_the_best_validation_values(runs: Path, name: str) -> None:
    run_dir = runs / name
    acc, history = _read(run_dir), read_history(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    hparams, status = _hparams(acc)
    assert status == 1  # STATUS_SUCCESS
    assert hparams["lr"] == config["lr"] == 0.05 and hparams["batch_size"] == BATCH
    assert hparams["epochs"] == EPOCHS  # on the resumed run: the last session's, not the first's
    assert hparams["hidden_sizes"] == "[128]" and hparams["resolved_device"] == "cpu"
    assert "run_dir" not in hparams and "progress" not in hparams
    last_step = EPOCH_STEPS[-1]
    assert _scalars(acc, "hparams/best_val_acc") == [(last_step, *_f32([max(history["val_acc_epoch"])]))]
    assert _scalars(acc, "hparams/best_val_loss") == [(last_step, *_f32([min(history["val_loss"])]))]
    assert len(list(run_dir.glob("events.out.tfevents.*.hparams.*"))) == 1  # one entry per run


def test_hparams_are_the_best_epoch_not_the_last(tmp_path: Path) -> None:
    # attach_tensorboard on its own, with any trainer: here a history whose last epoch is worse.
    trainer = Engine(lambda engine, batch: {"loss": torch.tensor(1.0), "y": torch.zeros(2)})
    history = History()
    scripted = iter([(0.5, 1.2), (0.75, 0.9), (0.25, 1.5)])  # (val accuracy, val loss) per epoch

    @trainer.on(Events.EPOCH_COMPLETED)
    def record(_: Engine) -> None:
        acc, loss = next(scripted)
        history.record({"accuracy": 0.1, "loss": 2.0}, {"accuracy": acc, "loss": loss})

    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    tb = attach_tensorboard(
        trainer, optimizer, history, TensorboardView(tmp_path, hparams={"lr": 0.1, "sizes": [4, 2]})
    )
    trainer.run([0, 1], max_epochs=3)
    tb.close()
    acc = _read(tmp_path)
    assert _scalars(acc, "hparams/best_val_acc") == [(6, 75.0)]
    assert _scalars(acc, "hparams/best_val_loss") == [(6, *_f32([0.9]))]
    assert _hparams(acc)[0] == {"lr": 0.1, "sizes": "[4, 2]"}


def _tiny_engines(tmp_path: Path, **options: Any) -> tuple[Engine, Engine]:
    """A trainer and an evaluator with scripted outputs, for attach_tensorboard on its own.

    Validation: 6 images (2 batches of 3), labels ant bee cat ant bee cat, predicted
    ant cat cat bee bee ant, so images 1, 3 and 5 are wrong.
    """
    pixels = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 2, 2, 1, 1, 0]), 3).float()
    scale, shift = normalization([0.5], [0.5], 3)
    batches = [(pixels[:3] * scale + shift, labels[:3]), (pixels[3:] * scale + shift, labels[3:])]
    evaluator = Engine(lambda e, batch: (logits[3 * (e.state.iteration - 1) : 3 * e.state.iteration], batch[1]))
    trainer = Engine(lambda e, batch: {"loss": torch.tensor(0.5), "y": torch.zeros(4)})
    history = History()
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run(batches))
    history_metrics = {"accuracy": 0.5, "loss": 1.0}
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: history.record(history_metrics, history_metrics))
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    view = TensorboardView(tmp_path, classes=CLASSES, **options)
    tb = attach_tensorboard(trainer, optimizer, history, view, evaluator=evaluator)
    trainer.run([0], max_epochs=2)
    tb.close()
    return evaluator, pixels


def _png(event: Any) -> np.ndarray:
    with Image.open(io.BytesIO(event.encoded_image_string)) as png:
        return np.asarray(png.convert("RGB"))


def test_confusion_matrix_and_misclassified_grid_hold_what_the_evaluator_saw(tmp_path: Path) -> None:
    _, pixels = _tiny_engines(tmp_path, normalization=([0.5], [0.5]))
    acc = _read(tmp_path)
    # Rows true, columns predicted, counted by hand from the scripted predictions.
    expected_matrix = confusion_matrix_figure([[1, 1, 0], [0, 1, 1], [1, 0, 1]], CLASSES)
    assert [(e.step, np.array_equal(_png(e), expected_matrix)) for e in acc.Images("val/confusion_matrix")] == [
        (1, True),
        (2, True),
    ]
    # Grouped by true class: ant (image 3), bee (1), cat (5).
    titles = ["pred bee\ntrue ant", "pred cat\ntrue bee", "pred ant\ntrue cat"]
    expected_grid = image_grid(pixels[[3, 1, 5]].numpy(), titles, ncols=8)
    (first, _) = acc.Images("val/misclassified")
    assert np.array_equal(_png(first), expected_grid)


def test_misclassified_grid_spreads_over_the_classes(tmp_path: Path) -> None:
    from ignite.handlers.tensorboard_logger import TensorboardLogger

    from ignite_mlp.handlers.tensorboard.images import ValidationImages

    # Sorted by class, as CIFAR-10's test set is, and every image wrong: the first 3 are all ants.
    pixels = torch.randint(0, 256, (12, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0] * 4 + [1] * 4 + [2] * 4)
    logits = torch.nn.functional.one_hot((labels + 1) % 3, 3).float()
    scale, shift = normalization([0.5], [0.5], 3)
    batches = [(pixels[i : i + 4] * scale + shift, labels[i : i + 4]) for i in range(0, 12, 4)]
    evaluator = Engine(lambda e, batch: (logits[4 * (e.state.iteration - 1) : 4 * e.state.iteration], batch[1]))
    trainer = Engine(lambda e, batch: None)
    images = ValidationImages(trainer, evaluator, CLASSES, normalization=([0.5], [0.5]), count=4)
    tb = TensorboardLogger(log_dir=str(tmp_path))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: (evaluator.run(batches), images.log(tb.writer, 1)))
    trainer.run([0], max_epochs=1)
    tb.close()
    # Round-robin: the first ant, bee and cat, then the second ant; shown grouped by class.
    titles = ["pred bee\ntrue ant"] * 2 + ["pred cat\ntrue bee", "pred ant\ntrue cat"]
    expected_grid = image_grid(pixels[[0, 1, 4, 8]].numpy(), titles, ncols=8)
    (grid,) = _read(tmp_path).Images("val/misclassified")
    assert np.array_equal(_png(grid), expected_grid)


def test_spread_over_classes_takes_each_class_in_turn() -> None:
    from ignite_mlp.plots import spread_over_classes

    true = [1, 1, 1, 0, 2, 1, 0]
    assert spread_over_classes(true, 5).tolist() == [3, 6, 0, 1, 4]  # 0s, then 1s, then the 2
    assert spread_over_classes(true, 100).tolist() == [3, 6, 0, 1, 2, 5, 4]  # all, grouped by class
    assert spread_over_classes([], 3).tolist() == []


def test_images_every_zero_logs_no_image_and_adds_no_metric(tmp_path: Path) -> None:
    evaluator, _ = _tiny_engines(tmp_path, normalization=([0.5], [0.5]), images_every=0)
    assert _read(tmp_path).Tags()["images"] == [] and "confusion_matrix" not in evaluator.state.metrics


def _images(acc: EventAccumulator, tag: str) -> list[tuple[int, tuple[int, int]]]:
    """(step, (width, height)) per image, checking the PNG itself has the size it claims."""
    out = []
    for event in acc.Images(tag):
        with Image.open(io.BytesIO(event.encoded_image_string)) as png:
            assert png.format == "PNG" and png.size == (event.width, event.height)
        out.append((event.step, (event.width, event.height)))
    return out


def test_images_present_with_the_expected_sizes(runs: Path) -> None:
    acc, history = _read(runs / "full"), read_history(runs / "full")
    assert _images(acc, "train/samples") == [(0, _grid_size(32, 1))]  # 32 of the 36 images, one title line
    assert _images(acc, "val/confusion_matrix") == [(s, (CONFUSION_SIDE, CONFUSION_SIDE)) for s in EPOCH_STEPS]
    # As many misclassified images as the recorded validation accuracy implies (all of them:
    # fewer than 32), with two title lines; none logged for an epoch without mistakes.
    wrong = [round(N_VAL * (1 - acc_percent / 100)) for acc_percent in history["val_acc_epoch"]]
    assert any(wrong), "the test needs an epoch with mistakes"
    expected = [(s, _grid_size(n, 2)) for s, n in zip(EPOCH_STEPS, wrong, strict=True) if n]
    assert _images(acc, "val/misclassified") == expected


def test_misclassified_images_are_validation_images_pixel_for_pixel(runs: Path) -> None:
    event = _read(runs / "full").Images("val/misclassified")[0]
    with Image.open(io.BytesIO(event.encoded_image_string)) as png:
        grid = np.asarray(png.convert("RGB"))
    first = grid[2 : 2 + 96 : 12, 2 : 2 + 96 : 12]  # the first cell, one pixel per 12x12 block
    tree = runs.parent / "tree" / "test"
    val_images = [np.asarray(Image.open(p).convert("RGB")) for c in CLASSES for p in sorted((tree / c).glob("*.png"))]
    assert any(np.array_equal(first, image) for image in val_images)


def test_images_every_n_epochs_and_the_samples_once(runs: Path) -> None:
    acc = _read(runs / "resumed")
    # tb_images_every=3: epoch 3, and the last epoch of each session that finished its epochs:
    # 2 (the first session trained 2 epochs) and 4.
    assert [s for s, _ in _images(acc, "val/confusion_matrix")] == [10, 15, 20]
    assert [s for s, _ in _images(acc, "train/samples")] == [0]  # not again on either resume


def _text(acc: EventAccumulator, tag: str) -> list[tuple[int, str]]:
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(f"{tag}/text_summary")]


def test_text_holds_the_resolved_config_and_the_environment(runs: Path) -> None:
    acc = _read(runs / "full")
    ((step, config_md),) = _text(acc, "run/config")
    assert step == 0
    on_disk = json.loads((runs / "full" / "config.json").read_text())
    assert json.loads("\n".join(line.removeprefix("    ") for line in config_md.splitlines())) == on_disk
    ((_, environment_md),) = _text(acc, "run/environment")
    import ignite
    import tensorboardX

    for expected in (torch.__version__, ignite.__version__, tensorboardX.__version__, "| device | cpu"):
        assert expected in environment_md


def test_text_once_per_session_at_its_first_step(runs: Path) -> None:
    stopped_at = int((runs.parent / "stopped_at").read_text())
    assert STOP_AFTER < stopped_at < 3 * ITERS_PER_EPOCH, "the Ctrl-C must land within epoch 3"
    # Sessions started at iterations 0, 10 and the interrupted checkpoint's: each logs at the
    # step its resume purges from, so a session resumed again leaves no stale copy.
    assert [step for step, _ in _text(_read(runs / "resumed"), "run/config")] == [0, 11, stopped_at + 1]


def test_histograms_and_norms_per_layer_only_when_asked(runs: Path) -> None:
    acc = _read(runs / "full")
    names = [name.replace(".", "/") for name, _ in MLP(3 * SIDE * SIDE, 3, [128]).named_parameters()]
    assert len(names) == 4  # two linear layers: weight and bias each
    for kind in ("weights", "grads"):
        for name in names:
            assert [e.step for e in acc.Histograms(f"{kind}/{name}")] == EPOCH_STEPS
            assert [s for s, _ in _scalars(acc, f"{kind}_norm/{name}")] == EPOCH_STEPS
    # The last weight norms are those of the last checkpoint's weights.
    state = torch.load(runs / "full" / "checkpoints" / f"last_checkpoint_{EPOCH_STEPS[-1]}.pt", weights_only=True)
    for name, tensor in state["model"].items():
        assert _scalars(acc, f"weights_norm/{name.replace('.', '/')}")[-1][1] == pytest.approx(
            tensor.norm().item(), rel=1e-6
        )
    assert not _read(runs / "resumed").Tags()["histograms"]  # off by default


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body: dict | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def test_tensorboard_server_serves_the_runs_scalars_and_hparams(runs: Path, tmp_path: Path) -> None:
    port = _free_port()
    log = tmp_path / "tensorboard.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(runs), "--host", "127.0.0.1"]
            + ["--port", str(port), "--load_fast", "false", "--reload_interval", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"tensorboard exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"tensorboard did not serve both runs in 60 s: {log.read_text()}"
            try:
                if sorted(_get(f"{base}/data/runs")) == ["full", "resumed"]:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.25)
        for name in ("full", "resumed"):
            history = read_history(runs / name)
            while True:  # the runs are listed before they are fully read
                query = urllib.parse.urlencode({"run": name, "tag": "epoch/val_acc_epoch"})
                points = _get(f"{base}/data/plugin/scalars/scalars?{query}")
                if len(points) == EPOCHS or time.monotonic() > deadline:
                    break
                time.sleep(0.25)
            assert [(step, value) for _, step, value in points] == list(
                zip(EPOCH_STEPS, _f32(history["val_acc_epoch"]), strict=True)
            )
        # The HParams tab: one session per run, holding that run's best validation accuracy.
        statuses = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
        groups = _get(
            f"{base}/data/plugin/hparams/session_groups",
            {"experimentName": "", "allowedStatuses": statuses, "startIndex": 0, "sliceSize": 10},
        )["sessionGroups"]
        assert sorted(s["name"] for g in groups for s in g["sessions"]) == ["full", "resumed"]
        for group in groups:
            (session,) = group["sessions"]
            best = {m["name"]["tag"]: m["value"] for m in session["metricValues"]}["hparams/best_val_acc"]
            assert best == _f32([max(read_history(runs / session["name"])["val_acc_epoch"])])[0]
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_events_are_in_the_file_as_soon_as_flush_returns(tmp_path: Path) -> None:
    """What a checkpoint covers must already be on disk when it is written. tensorboardX's own
    flush() leaves events queued for its thread; the run's writer has no queue and no thread."""
    import threading

    model = MLP(3 * SIDE * SIDE, 3, [4])
    before = set(threading.enumerate())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tb = attach_tensorboard(Engine(lambda e, b: None), optimizer, History(), TensorboardView(tmp_path))
    assert [t for t in threading.enumerate() if t not in before and t.is_alive()] == []
    for step in range(1, 301):
        tb.writer.add_scalar("burst", step / 7, step)
    tb.writer.flush()
    # Read while the writer is still open, as a kill -9 right after the flush would leave it.
    steps = range(1, 301)
    assert _scalars(_read(tmp_path), "burst") == list(zip(steps, _f32([s / 7 for s in steps]), strict=True))
    tb.close()


def _new_tensors() -> int:
    """How many tensors made since garbage was last collected are alive (with collection off,
    the youngest generation holds every object made since)."""
    return sum(type(o) is torch.Tensor for o in gc.get_objects(generation=0))


def test_an_epochs_losses_are_kept_in_one_tensor_and_written_at_their_steps() -> None:
    # One small tensor kept per step for a whole epoch pinned glibc's heap on long epochs; the
    # losses now go into one preallocated tensor, written out at the epoch's end (or a stop).
    from ignite_mlp.handlers.tensorboard.logger import EpochScalars

    class Recorder:
        def __init__(self) -> None:
            self.file_writer, self.summaries = self, []

        def add_summary(self, summary: Any, step: int) -> None:
            self.summaries.append((step, summary.value[0].simple_value))

        def flush(self) -> None:
            pass

    writer = Recorder()
    scalars = EpochScalars(writer, history=None, evaluator=None, images=None, processes=1)  # type: ignore[arg-type]
    losses = [0.5 + i / 64 for i in range(30)]
    trainer = Engine(lambda e, batch: {"loss": torch.tensor(losses[e.state.iteration - 1]), "y": torch.zeros(4)})
    trainer.add_event_handler(Events.ITERATION_COMPLETED, scalars.keep_loss)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=7), scalars.write_losses)  # as on a stop
    trainer.add_event_handler(Events.EPOCH_COMPLETED, scalars.write_losses)
    alive: dict[int, int] = {}
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED(event_filter=lambda e, i: i in (2, 9, 12, 19, 22, 29)),
        lambda e: alive.__setitem__(e.state.iteration, _new_tensors()),
    )
    gc.collect()
    gc.disable()
    try:
        trainer.run(range(10), max_epochs=3)
    finally:
        gc.enable()
    assert writer.summaries == [(i + 1, loss) for i, loss in enumerate(losses)]  # exact in float32
    # As many tensors alive after 2 steps as after 9, and in each later epoch: nothing kept per step.
    assert len(set(alive.values())) == 1, alive
    assert scalars.samples == 10 * 4 * 3
