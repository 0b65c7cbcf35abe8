"""ignite_mlp.handlers (history, checkpoints, console): each handler on its own, on a tiny Ignite run."""

import json
import re
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn

from ignite_mlp.engine.trainer import attach_train_metrics, create_evaluator, create_trainer
from ignite_mlp.handlers.checkpoints import SaveThenRemove, attach_checkpoints
from ignite_mlp.handlers.console import EverySeconds, attach_epoch_summary, attach_progress_bar
from ignite_mlp.handlers.controls import attach_terminate_on_nan
from ignite_mlp.handlers.extensions import handler_table
from ignite_mlp.handlers.history import HISTORY_KEYS, History, attach_validation
from ignite_mlp.model import MLP


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    train = [(torch.randn(8, 12, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(4)]
    val = [(torch.randn(10, 12, generator=g), torch.randint(0, 3, (10,), generator=g))]
    model = MLP(12, 3, [16])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = create_trainer(model, opt, nn.CrossEntropyLoss(), torch.device("cpu"))
    attach_train_metrics(trainer, torch.device("cpu"))
    evaluator = create_evaluator(model, nn.CrossEntropyLoss(), torch.device("cpu"))
    return model, opt, trainer, evaluator, train, val


def test_history_records_each_epoch_and_writes_json(tmp_path: Path) -> None:
    model, opt, trainer, evaluator, train, val = _setup()
    attach_validation(trainer, evaluator, val)
    history = History(tmp_path / "history.json")
    history.attach(trainer, evaluator)
    val_acc = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: val_acc.append(evaluator.state.metrics["accuracy"]))
    trainer.run(train, max_epochs=3)
    on_disk = json.loads((tmp_path / "history.json").read_text())
    assert list(on_disk) == list(HISTORY_KEYS) and all(len(v) == 3 for v in on_disk.values())
    assert on_disk["val_acc_epoch"] == [100 * a for a in val_acc]  # percent, like the tutorial
    assert on_disk == history.values


def test_checkpoints_best_and_last_reload(tmp_path: Path) -> None:
    model, opt, trainer, evaluator, train, val = _setup()
    attach_validation(trainer, evaluator, val)
    history = History()
    history.attach(trainer, evaluator)
    best, last = attach_checkpoints(
        trainer, evaluator, model, {"model": model, "optimizer": opt, "trainer": trainer, "history": history}, tmp_path
    )
    trainer.run(train, max_epochs=4)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2, files
    best_epoch = history.best_epoch()
    expected = f"best_model_{best_epoch}_val_acc={history.best_val_acc():.4f}.pt"
    assert expected in files and "last_checkpoint_16.pt" in files
    # The last checkpoint reloads (safely) into fresh objects and carries the trainer state.
    state = torch.load(tmp_path / "last_checkpoint_16.pt", weights_only=True)
    fresh = MLP(12, 3, [16])
    fresh.load_state_dict(state["model"])
    for a, b in zip(fresh.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert state["trainer"]["iteration"] == 16 and state["history"]["loss_epoch"] == history.values["loss_epoch"]


def test_epoch_summary_line(tmp_path: Path) -> None:
    model, opt, trainer, evaluator, train, val = _setup()
    attach_validation(trainer, evaluator, val)
    history = History()
    history.attach(trainer, evaluator)
    lines: list[str] = []
    attach_epoch_summary(trainer, history, lines.append)
    trainer.run(train, max_epochs=2)
    assert len(lines) == 2 and lines[1].startswith("Epoch   2/2: train loss")
    assert f"acc {history.values['val_acc_epoch'][1]:.2f}%" in lines[1]


def test_epoch_summary_line_shows_validation_time() -> None:
    # Validation made slow (0.2 s a batch, 2 batches): the line's validation seconds show it, and
    # the training pass's seconds do not include it.
    model, opt, trainer, evaluator, train, val = _setup()
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda _: time.sleep(0.2))
    attach_validation(trainer, evaluator, val * 2)
    history = History()
    history.attach(trainer, evaluator)
    lines: list[str] = []
    attach_epoch_summary(trainer, history, lines.append, evaluator)
    trainer.run(train, max_epochs=1)
    train_s, val_s = (float(x) for x in re.fullmatch(r".*\| ([\d.]+)s \+ val ([\d.]+)s", lines[0]).groups())
    assert val_s >= 0.4 and train_s < 0.4


def test_terminate_on_nan_stops_at_first_bad_loss() -> None:
    model, opt, trainer, evaluator, train, val = _setup()
    attach_terminate_on_nan(trainer)
    with torch.no_grad():
        model.layers[1].weight.fill_(float("nan"))
    trainer.run(train, max_epochs=3)
    assert trainer.state.iteration == 1


def test_every_seconds_passes_an_event_once_per_interval() -> None:
    # Each step takes a quarter of the interval, on a clock that reads the step's time however
    # often it is read: the event passes at the first step and then at every 4th (1, 5, 9, ...).
    engine, passed = Engine(lambda e, b: None), []
    throttle = EverySeconds(1.0, clock=lambda: 0.25 * (engine.state.iteration - 1))
    engine.add_event_handler(
        Events.ITERATION_COMPLETED(event_filter=throttle), lambda e: passed.append(e.state.iteration)
    )
    engine.run(range(20))
    assert passed == [1, 5, 9, 13, 17]


def test_progress_bar_is_redrawn_at_most_four_times_a_second() -> None:
    engine = Engine(lambda e, b: {"loss": torch.tensor(0.0)})
    attach_progress_bar(engine)
    rows = [line.split(maxsplit=4) for line in handler_table({"trainer": engine}).splitlines()[2:]]
    assert [r[4] for r in rows if r[1] == "ITERATION_COMPLETED" and r[3] == "_OutputHandler"] == ["every 0.25 s"]


@pytest.mark.parametrize("saver_kind", ["ignite", "ours"])
def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(
    saver_kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ignite.handlers import Checkpoint, DiskSaver

    model = nn.Linear(2, 2)
    saver = SaveThenRemove(tmp_path) if saver_kind == "ours" else DiskSaver(str(tmp_path), require_empty=False)
    engine = Engine(lambda e, b: None)
    engine.add_event_handler(Events.ITERATION_COMPLETED, Checkpoint({"model": model}, saver, filename_prefix="last"))
    real_save, calls = torch.save, []

    def save_then_die(obj: object, f: object, **kw: object) -> None:
        calls.append(1)
        if len(calls) == 2:  # the second checkpoint never finishes, as under a kill -9
            raise KeyboardInterrupt
        real_save(obj, f, **kw)

    monkeypatch.setattr(torch, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        engine.run(range(3))
    left = sorted(p.name for p in tmp_path.glob("*.pt"))
    if saver_kind == "ignite":
        assert left == []  # Ignite deletes the old file before writing the new one
    else:
        assert left == ["last_model_1.pt"]
        torch.load(tmp_path / left[0], weights_only=True)  # whole
        # And in normal running, one file: the superseded one goes once the new one is written.
        monkeypatch.setattr(torch, "save", real_save)
        fresh, normal = Engine(lambda e, b: None), tmp_path / "normal"
        checkpoint = Checkpoint({"model": model}, SaveThenRemove(normal), filename_prefix="last")
        fresh.add_event_handler(Events.ITERATION_COMPLETED, checkpoint)
        fresh.run(range(3))
        assert sorted(p.name for p in normal.glob("*.pt")) == ["last_model_3.pt"]
