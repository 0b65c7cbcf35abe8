"""ignite_mlp.handlers.guardrails: each warning appears exactly when its rule is broken."""

import math

import torch
from ignite.engine import Engine

from ignite_mlp.handlers.guardrails import (
    attach_initial_loss_check,
    overfit_report,
    overfitting_start,
    setup_warnings,
)
from ignite_mlp.handlers.history import History


def test_setup_warnings_only_when_a_rule_is_broken() -> None:
    assert setup_warnings(256, [128], torch.device("cuda")) == []
    assert setup_warnings(256, [100], torch.device("cpu")) == []  # CPU: no tiles
    bad = setup_warnings(4, [100], torch.device("cuda"))
    assert len(bad) == 2
    assert "batch size 4 is below 8" in bad[0] and "noisy" in bad[0]
    assert "not multiples of 32" in bad[1] and "tiles" in bad[1]


def _first_loss_warnings(loss: float, classes: int) -> list[str]:
    said: list[str] = []
    trainer = Engine(lambda e, b: {"loss": torch.tensor(loss)})
    attach_initial_loss_check(trainer, classes, said.append)
    trainer.run([0, 1, 2], max_epochs=1)
    return said


def test_initial_loss_check_compares_with_ln_classes() -> None:
    assert _first_loss_warnings(math.log(10) + 0.2, 10) == []
    said = _first_loss_warnings(9.0, 10)
    assert len(said) == 1 and "first loss is 9.000" in said[0] and "ln(10) = 2.303" in said[0]


def test_overfitting_detected_with_the_epoch_it_began() -> None:
    h = History()
    series = [(2.0, 2.1), (1.8, 1.9), (1.6, 1.7), (1.4, 1.75), (1.2, 1.8), (1.0, 1.9)]
    for train, val in series:
        h.record({"accuracy": 0.5, "loss": train}, {"accuracy": 0.5, "loss": val})
    assert overfitting_start(h) == 3  # val loss lowest at epoch 3, then rose 3 epochs in a row
    calm = History()
    for train, val in [(2.0, 2.1), (1.8, 1.9), (1.6, 1.95), (1.4, 1.9), (1.2, 1.85)]:
        calm.record({"accuracy": 0.5, "loss": train}, {"accuracy": 0.5, "loss": val})
    assert overfitting_start(calm) is None


def test_overfit_report_verdicts() -> None:
    assert overfit_report(100.0, 2).startswith("overfit check passed")
    failed = overfit_report(40.0, 2)
    assert failed.startswith("overfit check failed") and "learning rate" in failed
