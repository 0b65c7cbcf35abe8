"""ignite_mlp.controls: schedules set the learning rate as configured; early stopping stops."""

import math

import pytest
import torch
from ignite.engine import Engine, Events

from ignite_mlp.controls import attach_early_stopping, attach_lr_schedule


def _lrs(schedule: str, epochs: int = 4, per_epoch: int = 5, **kw) -> list[float]:
    """The learning rate each iteration's step used."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    seen: list[float] = []
    trainer = Engine(lambda e, b: seen.append(optimizer.param_groups[0]["lr"]))
    attach_lr_schedule(trainer, optimizer, schedule, 0.1, epochs * per_epoch, per_epoch, **kw)
    trainer.run(range(per_epoch), max_epochs=epochs)
    return seen


def test_no_schedule_keeps_the_rate() -> None:
    assert _lrs("none") == [0.1] * 20


def test_step_schedule_drops_by_gamma_every_n_epochs() -> None:
    lrs = _lrs("step", epochs=6, step_epochs=2, gamma=0.5)
    expected = [0.1] * 10 + [0.05] * 10 + [0.025] * 10  # 5 iterations per epoch, drop every 2 epochs
    assert lrs == pytest.approx(expected)


def test_cosine_schedule_follows_half_a_cosine_to_zero() -> None:
    lrs = _lrs("cosine")
    expected = [0.1 * (1 + math.cos(math.pi * i / 20)) / 2 for i in range(20)]
    assert lrs == pytest.approx(expected)


def test_onecycle_warms_up_then_anneals() -> None:
    lrs = _lrs("onecycle")
    peak = int(0.3 * 20)
    assert lrs[0] == pytest.approx(0.1 / 25)
    assert lrs[peak] == pytest.approx(0.1) and max(lrs) == pytest.approx(0.1)
    assert lrs[peak // 2] == pytest.approx(0.1 / 25 + (0.1 - 0.1 / 25) * (peak // 2) / peak)
    assert all(a > b for a, b in zip(lrs[peak:], lrs[peak + 1 :], strict=False))


@pytest.mark.parametrize(
    ("metric", "values", "stop_epoch"),
    [
        ("val_loss", [1.0, 0.9, 0.95, 0.92, 0.91, 0.5], 4),  # best at 2, no better at 3 and 4
        ("val_acc", [0.1, 0.2, 0.3, 0.25, 0.3, 0.9], 5),
    ],
)
def test_early_stopping_stops_after_patience_epochs(metric: str, values: list[float], stop_epoch: int) -> None:
    trainer = Engine(lambda e, b: None)
    key = "loss" if metric == "val_loss" else "accuracy"
    evaluator = Engine(lambda e, b: None)

    @evaluator.on(Events.COMPLETED)
    def set_metric(engine: Engine) -> None:
        engine.state.metrics[key] = values[trainer.state.epoch - 1]

    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run([0]))
    # the metric must be set before EarlyStopping reads it: attach it after set_metric
    assert attach_early_stopping(trainer, evaluator, patience=2, metric=metric) is not None
    trainer.run([0], max_epochs=len(values))
    assert trainer.state.epoch == stop_epoch
    assert attach_early_stopping(trainer, evaluator, patience=0, metric=metric) is None
