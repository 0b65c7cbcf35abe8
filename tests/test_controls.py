"""ignite_mlp.handlers.controls: schedules set the learning rate as configured; early stopping stops."""

import math

import pytest
import torch
from ignite.engine import Engine, Events

from ignite_mlp.engine.optimizers import make_optimizer
from ignite_mlp.engine.trainer import create_trainer
from ignite_mlp.handlers.controls import attach_early_stopping, attach_ema, attach_lr_schedule, restore_ema
from ignite_mlp.model import MLP


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


def test_ema_of_the_weights_follows_the_formula_step_by_step() -> None:
    torch.manual_seed(0)
    model = MLP(12, 3, [6], norm="batch")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    trainer = create_trainer(model, optimizer, torch.nn.CrossEntropyLoss(), torch.device("cpu"))
    momentum = 0.3
    ema = attach_ema(trainer, model, momentum)
    # By hand: start from the initial state, then mix in each step's weights and statistics.
    expected = {k: v.clone().double() for k, v in model.state_dict().items() if v.is_floating_point()}

    def by_hand(_: Engine) -> None:
        for k, v in model.state_dict().items():
            if k in expected:
                expected[k] = (1 - momentum) * expected[k] + momentum * v.double()

    trainer.add_event_handler(Events.ITERATION_COMPLETED, by_hand)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, 2, 2, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(4)]
    trainer.run(batches, max_epochs=2)
    averaged = ema.ema_model.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(averaged[k].double(), v, rtol=1e-5, atol=1e-6)
    assert not torch.equal(averaged["layers.1.weight"], model.state_dict()["layers.1.weight"])
    assert attach_ema(trainer, model, 0.0) is None


def test_restored_ema_comes_from_the_checkpoint_or_else_the_model() -> None:
    model = MLP(12, 3, [6])
    trainer = Engine(lambda e, b: None)
    ema = attach_ema(trainer, model, 0.1)
    saved = {k: torch.full_like(v, 2.0) for k, v in model.state_dict().items()}
    restore_ema(ema, {"ema_model": saved})
    assert all(bool((v == 2.0).all()) for v in ema.ema_model.state_dict().values())
    restore_ema(ema, {})  # a checkpoint from before the average was turned on
    for a, b in zip(ema.ema_model.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_weight_decay_spares_biases_and_norms_only_when_asked(name: str) -> None:
    model = MLP(12, 3, [6], norm="layer")
    optimizer = make_optimizer(model, name, 1e-3, 0.9, 0.05, nesterov=name == "sgd", decay_norms=False)
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    for param_name, p in model.named_parameters():  # weight matrices are 2-D; biases, LayerNorm 1-D
        assert (id(p) in decayed) == ("weight" in param_name and "layers.2" not in param_name), param_name
    every = make_optimizer(model, name, 1e-3, 0.9, 0.05)
    assert [len(g["params"]) for g in every.param_groups] == [len(list(model.parameters()))]
    assert every.param_groups[0]["weight_decay"] == 0.05
    if name == "adamw":
        assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["betas"][0] == 0.9
    else:
        assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["nesterov"]

    # One SGD step by hand: a spared bias moves by its gradient only, a weight also by its decay.
    torch.manual_seed(0)
    lin = torch.nn.Linear(2, 1)
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    sgd = make_optimizer(lin, "sgd", 0.1, 0.0, 0.5, decay_norms=False)
    lin(torch.ones(1, 2)).sum().backward()
    sgd.step()
    torch.testing.assert_close(lin.weight.detach(), w0 - 0.1 * (torch.ones(1, 2) + 0.5 * w0))
    torch.testing.assert_close(lin.bias.detach(), b0 - 0.1 * torch.ones(1))
