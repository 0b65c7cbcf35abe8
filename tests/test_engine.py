"""ignite_mlp.engine.trainer: the Ignite trainer matches a plain PyTorch loop step for step."""

import copy

import torch
from torch import nn

from ignite_mlp.engine.trainer import attach_train_metrics, create_evaluator, create_trainer, forward_fn
from ignite_mlp.model import MLP


def _batches(n: int = 5, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 3, 4, 4, generator=g), torch.randint(0, 4, (16,), generator=g)) for _ in range(n)]


def test_ignite_trainer_equals_plain_pytorch_loop() -> None:
    torch.manual_seed(0)
    model = MLP(48, 4, [32])
    reference = copy.deepcopy(model)
    batches = _batches()

    def sgd(m: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)

    trainer = create_trainer(model, sgd(model), nn.CrossEntropyLoss(), torch.device("cpu"))
    trainer.run(batches, max_epochs=2)

    opt = sgd(reference)
    losses = []
    for _ in range(2):
        for x, y in batches:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(reference(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert trainer.state.output["loss"].item() == losses[-1]


def test_trainer_metrics_come_from_the_epochs_own_outputs() -> None:
    torch.manual_seed(1)
    model = MLP(48, 4, [8])
    batches = _batches(3)
    seen = []
    trainer = create_trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), torch.device("cpu")
    )
    attach_train_metrics(trainer, torch.device("cpu"))
    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.output))
    trainer.run(batches, max_epochs=1)
    correct = sum((o["y_pred"].argmax(1) == o["y"]).sum().item() for o in seen)
    total_loss = sum(nn.functional.cross_entropy(o["y_pred"], o["y"], reduction="sum").item() for o in seen)
    assert trainer.state.metrics["accuracy"] == correct / 48
    assert abs(trainer.state.metrics["loss"] - total_loss / 48) < 1e-6


def test_evaluator_matches_plain_computation() -> None:
    torch.manual_seed(2)
    model = MLP(48, 4, [8])
    batches = _batches(3, seed=5)
    metrics = create_evaluator(model, nn.CrossEntropyLoss(), torch.device("cpu")).run(batches).metrics
    with torch.no_grad():
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        logits = model(x)
    assert metrics["accuracy"] == (logits.argmax(1) == y).sum().item() / len(y)
    assert abs(metrics["loss"] - nn.functional.cross_entropy(logits, y).item()) < 1e-6


def test_bf16_forward_runs_under_autocast_and_stays_close() -> None:
    torch.manual_seed(3)
    model = MLP(48, 4, [32])
    x = torch.randn(8, 3, 4, 4)
    out = forward_fn("bf16", torch.device("cpu"))(model, x)
    assert out.dtype == torch.float32
    # bf16 has ~3 significant digits: close to fp32 but not equal.
    ref = model(x)
    assert not torch.equal(out, ref)
    torch.testing.assert_close(out, ref, atol=5e-2, rtol=5e-2)


def test_train_metrics_counted_in_folds_equal_ignites_per_batch_metrics() -> None:
    from ignite.engine import Engine
    from ignite.metrics import Accuracy, Average

    from ignite_mlp.engine.trainer import MeanLoss, TrainAccuracy

    g = torch.Generator().manual_seed(4)
    steps = [
        {
            "y_pred": torch.randn(n, 5, generator=g),
            "y": torch.randint(0, 5, (n,), generator=g),
            "loss": torch.rand((), generator=g),
        }
        for n in [16] * 10 + [7]  # a short last batch, as at the end of an epoch
    ]
    engine = Engine(lambda e, out: out)
    TrainAccuracy(lambda o: (o["y_pred"], o["y"]), "cpu", fold_every=3).attach(engine, "ours_acc")
    MeanLoss(lambda o: (o["loss"], len(o["y"])), "cpu", fold_every=3).attach(engine, "ours_loss")
    Accuracy(lambda o: (o["y_pred"], o["y"])).attach(engine, "ignite_acc")
    # Ignite's Average of per-sample values: each sample carries its batch's mean loss.
    Average(lambda o: o["loss"].expand(len(o["y"]), 1)).attach(engine, "ignite_loss")
    metrics = engine.run(steps, max_epochs=2).metrics
    assert metrics["ours_acc"] == metrics["ignite_acc"]
    assert abs(metrics["ours_loss"] - float(metrics["ignite_loss"])) < 1e-6


def test_train_metric_state_saved_mid_fold_resumes_the_same_count() -> None:
    from ignite_mlp.engine.trainer import TrainAccuracy

    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(8, 3, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(7)]
    straight = TrainAccuracy(lambda o: o, "cpu", fold_every=4)
    for b in batches:
        straight.update(b)
    first = TrainAccuracy(lambda o: o, "cpu", fold_every=4)
    for b in batches[:5]:  # one fold done, one step pending
        first.update(b)
    resumed = TrainAccuracy(lambda o: o, "cpu", fold_every=4)
    resumed.load_state_dict(first.state_dict())
    for b in batches[5:]:
        resumed.update(b)
    expected = sum((x.argmax(1) == y).sum().item() for x, y in batches) / 56
    assert straight.compute() == resumed.compute() == expected


def test_build_engines_makes_the_configured_model_and_optimizer(tree, tmp_path) -> None:
    from ignite_mlp import TrainConfig
    from ignite_mlp.run.engines import build_engines
    from ignite_mlp.run.plan import resolve_plan
    from ignite_mlp.run.prepare import prepare_data
    from ignite_mlp.run.spec import resolve_spec

    config = TrainConfig(
        data=str(tree), run_dir=str(tmp_path / "r"), hidden_sizes=[16, 8], lr=0.3, momentum=0.5, nesterov=True
    )
    plan = resolve_plan(config, write=lambda s: None)
    data = prepare_data(plan)
    engines = build_engines(resolve_spec(plan, data, lr=plan.config.lr), data)
    linears = [m for m in engines.model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(192, 16), (16, 8), (8, 3)]
    group = engines.optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (0.3, 0.5, True)
    assert not engines.should_stop()
    engines.stop(2, None)  # a Ctrl-C
    assert engines.should_stop()


def test_tta_evaluator_equals_averaging_two_forward_passes_by_hand() -> None:
    torch.manual_seed(4)
    model = MLP(48, 4, [16], norm="batch").eval()
    batches = _batches(3, seed=7)
    metrics = create_evaluator(model, nn.CrossEntropyLoss(), torch.device("cpu"), tta=True).run(batches).metrics
    with torch.no_grad():
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        mirrored = x[:, :, :, torch.arange(3, -1, -1)]  # each row of pixels reversed, by index
        logits = (model(x) + model(mirrored)) / 2
    assert metrics["accuracy"] == (logits.argmax(1) == y).sum().item() / len(y)
    assert abs(metrics["loss"] - nn.functional.cross_entropy(logits, y).item()) < 1e-6
    plain = create_evaluator(model, nn.CrossEntropyLoss(), torch.device("cpu")).run(batches).metrics
    assert plain["loss"] != metrics["loss"]


def test_train_accuracy_of_mixed_batches_counts_the_larger_label() -> None:
    from ignite.engine import Engine

    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 2.0, 0.0]])
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.6, 0.4], [0.2, 0.0, 0.8]])  # larger labels: 0, 1, 2
    engine = Engine(lambda e, batch: {"loss": torch.tensor(1.0), "y_pred": logits, "y": soft})
    metrics = attach_train_metrics(engine, torch.device("cpu"))
    engine.run([0], max_epochs=1)
    assert engine.state.metrics["accuracy"] == 1 / 3  # only the first row's argmax matches
    assert metrics["loss"].compute() == 1.0
