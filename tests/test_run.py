"""ignite_mlp.run.training: a whole run on tiny data writes everything it promises."""

import json
from pathlib import Path

import pytest
import torch
from conftest import TrainedRuns
from ignite.engine import Events

from ignite_mlp import TrainConfig, train
from ignite_mlp.data import load_dataset
from ignite_mlp.errors import UserError
from ignite_mlp.handlers.history import HISTORY_KEYS
from ignite_mlp.handlers.ignite_compat import event_handlers
from ignite_mlp.model import MLP
from ignite_mlp.run.checkpoint_io import safe_load
from ignite_mlp.run.rundir import RunDir


def _config(data: Path, run_dir: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), run_dir=str(run_dir), epochs=3, batch_size=8, lr=0.05, progress=False)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def baselines(tmp_path_factory: pytest.TempPathFactory) -> TrainedRuns:
    """Uninterrupted runs with :func:`_config`'s settings, each trained once for the module."""
    return TrainedRuns(tmp_path_factory.mktemp("baselines"), epochs=3, batch_size=8, lr=0.05)


def test_run_writes_config_history_checkpoints_tensorboard_curves(tarball: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = train(_config(tarball, run_dir), write=lambda s: None)
    history = json.loads((run_dir / "history.json").read_text())
    assert list(history) == list(HISTORY_KEYS) and all(len(v) == 3 for v in history.values())
    assert history == result.history
    assert json.loads((run_dir / "config.json").read_text())["epochs"] == 3
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert (run_dir / "curves.png").stat().st_size > 0
    assert result.best_val_acc == max(history["val_acc_epoch"])
    assert result.best_epoch == history["val_acc_epoch"].index(result.best_val_acc) + 1
    assert result.best_checkpoint and result.best_checkpoint.is_file()
    assert result.last_checkpoint and result.last_checkpoint.name == "last_checkpoint_15.pt"  # 3 epochs x 5 batches
    # The best checkpoint reproduces the recorded best validation accuracy.
    ds = load_dataset(tarball)
    model = MLP(ds.in_features, ds.num_classes, [128])
    model.load_state_dict(torch.load(result.best_checkpoint, weights_only=True))
    with torch.no_grad():
        x = (ds.test_images.float() / 255 - 0.5) / 0.5
        acc = 100 * (model(x).argmax(1) == ds.test_labels).float().mean().item()
    assert acc == pytest.approx(result.best_val_acc, abs=1e-4)
    assert "best validation accuracy" in result.report()


def test_same_seed_same_history_different_seed_differs(tree: Path, tmp_path: Path, baselines: TrainedRuns) -> None:
    a = baselines.run(epochs=2).history  # trained earlier, in another folder, from another copy of the images
    b = train(_config(tree, tmp_path / "b", epochs=2), write=lambda s: None).history
    c = train(_config(tree, tmp_path / "c", epochs=2, seed=1), write=lambda s: None).history
    assert a == b and a != c


def test_learns_the_tiny_task(tree: Path, tmp_path: Path) -> None:
    # Classes differ in brightness: a few epochs must beat chance (33%) clearly.
    result = train(_config(tree, tmp_path / "r", epochs=8, lr=0.02), write=lambda s: None)
    assert result.best_val_acc > 80


def test_extra_handlers_receive_engines_and_context(tree: Path, tmp_path: Path) -> None:
    calls: list[int] = []

    def attach(trainer, evaluator, context) -> None:
        assert context.run_dir == tmp_path / "r" and context.config.epochs == 2
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: calls.append(e.state.epoch))

    train(_config(tree, tmp_path / "r", epochs=2), extra_handlers=[attach], write=lambda s: None)
    assert calls == [1, 2]


def test_existing_run_is_refused_then_overwritten(tree: Path, tmp_path: Path, baselines: TrainedRuns) -> None:
    baselines.copy(tmp_path / "r", epochs=2)
    before = (tmp_path / "r" / "history.json").read_bytes()
    with pytest.raises(UserError, match="already holds a run"):
        train(_config(tree, tmp_path / "r", epochs=1), write=lambda s: None)
    assert (tmp_path / "r" / "history.json").read_bytes() == before
    train(_config(tree, tmp_path / "r", epochs=1, overwrite=True), write=lambda s: None)
    assert len(json.loads((tmp_path / "r" / "history.json").read_text())["val_loss"]) == 1
    assert len(list((tmp_path / "r" / "checkpoints").glob("best_*.pt"))) == 1


def test_bf16_run_trains(tree: Path, tmp_path: Path) -> None:
    result = train(_config(tree, tmp_path / "r", epochs=4, precision="bf16"), write=lambda s: None)
    assert result.best_val_acc > 50


def test_resume_with_more_epochs_equals_one_long_run(tmp_path: Path, baselines: TrainedRuns) -> None:
    straight = baselines.run(epochs=4)
    baselines.copy(tmp_path / "split", epochs=2)
    resumed = train(RunDir(tmp_path / "split").resume_config(epochs=4), write=lambda s: None)
    for key, values in straight.history.items():
        assert resumed.history[key] == pytest.approx(values, abs=1e-6), key
    assert resumed.best_checkpoint.name == straight.best_checkpoint.name
    assert len(list((tmp_path / "split" / "checkpoints").glob("best_*.pt"))) == 1
    # What TensorBoard shows across a resume is checked in test_tensorboard.py.


def test_resume_refuses_a_finished_run_and_a_changed_architecture(tmp_path: Path, baselines: TrainedRuns) -> None:
    baselines.copy(tmp_path / "r", epochs=2)
    with pytest.raises(UserError, match="already finished 2 epochs"):
        train(RunDir(tmp_path / "r").resume_config(), write=lambda s: None)
    before = (tmp_path / "r" / "history.json").read_bytes()
    with pytest.raises(UserError, match=r"layers.1.weight: checkpoint \(128, 192\) vs model \(64, 192\)"):
        train(RunDir(tmp_path / "r").resume_config(epochs=3, hidden_sizes=[64]), write=lambda s: None)
    assert (tmp_path / "r" / "history.json").read_bytes() == before


def test_nan_loss_stops_with_a_message_and_keeps_the_best(tree: Path, tmp_path: Path) -> None:
    calls: list[int] = []

    def poison(trainer, evaluator, context) -> None:
        # From epoch 3 on, the weights turn to NaN: the loss follows at once.
        @trainer.on(Events.EPOCH_STARTED(once=3))
        def _(engine) -> None:
            with torch.no_grad():
                next(context.model.parameters()).fill_(float("nan"))
            calls.append(engine.state.iteration)

    result = train(_config(tree, tmp_path / "r", epochs=6), extra_handlers=[poison], write=lambda s: None)
    assert calls == [10]
    assert result.stopped and "epoch 3, iteration 11" in result.stopped and "--lr 0.005" in result.stopped
    assert len(result.history["val_loss"]) == 2
    assert result.best_checkpoint.is_file()


def test_overfit_batches_memorises_and_reports(tree: Path, tmp_path: Path) -> None:
    result = train(
        _config(tree, tmp_path / "r", epochs=40, overfit_batches=2, lr=0.05, dropout=0.5, weight_decay=0.1),
        write=lambda s: None,
    )
    assert result.history["train_acc_epoch"][-1] == 100.0
    assert any(n.startswith("overfit check passed") for n in result.notes)
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["dropout"] == 0.0 and saved["weight_decay"] == 0.0  # regularisation off for the check
    failing = train(_config(tree, tmp_path / "f", epochs=1, overfit_batches=2, lr=1e-6), write=lambda s: None)
    assert any(n.startswith("overfit check failed") for n in failing.notes)


def test_dry_run_and_epoch_length(tree: Path, tmp_path: Path) -> None:
    iterations: list[int] = []

    def count(trainer, evaluator, context) -> None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: iterations.append(e.state.iteration))

    dry = train(_config(tree, tmp_path / "dry", dry_run=True), extra_handlers=[count], write=lambda s: None)
    assert iterations == [1, 2] and len(dry.history["val_loss"]) == 1
    iterations.clear()
    short = train(
        _config(tree, tmp_path / "short", epochs=3, epoch_length=2), extra_handlers=[count], write=lambda s: None
    )
    assert iterations == [1, 2, 3, 4, 5, 6] and len(short.history["val_loss"]) == 3


def test_dropout_and_schedule_reach_the_model_and_optimizer(tree: Path, tmp_path: Path) -> None:
    lrs: list[float] = []

    def spy(trainer, evaluator, context) -> None:
        assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.3 for m in context.model.modules())
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED, lambda e: lrs.append(context.optimizer.param_groups[0]["lr"])
        )

    train(
        _config(tree, tmp_path / "r", epochs=2, dropout=0.3, lr_schedule="cosine"),
        extra_handlers=[spy],
        write=lambda s: None,
    )
    assert lrs[0] == pytest.approx(0.05) and lrs[-1] < 0.01 and lrs == sorted(lrs, reverse=True)


def test_label_smoothing_reaches_the_training_loss(tree: Path, tmp_path: Path) -> None:
    steps: list[tuple[float, torch.Tensor, torch.Tensor]] = []

    def spy(trainer, evaluator, context) -> None:
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED,
            lambda e: steps.append((e.state.output["loss"].item(), e.state.output["y_pred"], e.state.output["y"])),
        )

    train(_config(tree, tmp_path / "r", epochs=1, label_smoothing=0.2), extra_handlers=[spy], write=lambda s: None)
    loss, logits, y = steps[0]
    k, eps = logits.shape[1], 0.2
    target = torch.full_like(logits, eps / k)  # smoothed target: eps/K everywhere, plus 1-eps on the true class
    target[torch.arange(len(y)), y] += 1 - eps
    assert loss == pytest.approx(-(target * logits.log_softmax(1)).sum(1).mean().item(), rel=1e-5)


def test_dataset_normalisation_is_measured_and_saved(tree: Path, tmp_path: Path) -> None:
    train(_config(tree, tmp_path / "r", epochs=1, normalize="dataset"), write=lambda s: None)
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    ds = load_dataset(tree)
    pixels = ds.train_images.double() / 255
    assert saved["mean"] == pytest.approx(pixels.mean(dim=(0, 2, 3)).tolist(), abs=1e-5)
    assert saved["std"] == pytest.approx(pixels.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-5)


def _ctrl_c_at(iteration: int):
    """A handler that presses Ctrl-C (a real SIGINT to this process) after ``iteration``."""
    import os
    import signal

    def attach(trainer, evaluator, context) -> None:
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED(once=iteration), lambda _: os.kill(os.getpid(), signal.SIGINT)
        )

    return attach


@pytest.mark.parametrize(("epoch_length", "stop_at"), [(None, 7), (None, 10), (3, 4), (3, 6)])
def test_ctrl_c_anywhere_then_resume_equals_an_uninterrupted_run(
    tree: Path, tmp_path: Path, baselines: TrainedRuns, epoch_length: int | None, stop_at: int
) -> None:
    from ignite_mlp.errors import TrainingInterrupted

    # 5 batches per pass; stops mid-epoch, and on an epoch's last step (10, 6: it stops one later).
    kw = dict(epochs=4, epoch_length=epoch_length)
    straight = baselines.run(**kw).history
    with pytest.raises(TrainingInterrupted):
        train(_config(tree, tmp_path / "cut", **kw), extra_handlers=[_ctrl_c_at(stop_at)], write=lambda s: None)
    resumed = train(RunDir(tmp_path / "cut").resume_config(), write=lambda s: None).history
    for key in straight:
        assert resumed[key] == pytest.approx(straight[key], abs=1e-6), key


def test_relative_run_dir_paths_are_reported_as_they_are_on_disk(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = train(_config(tree, Path("runs") / "rel", epochs=1), write=lambda s: None)
    assert result.best_checkpoint.parent == Path("runs") / "rel" / "checkpoints"
    assert result.best_checkpoint.is_file() and result.last_checkpoint.is_file()
    assert f"best checkpoint: {result.best_checkpoint}\n" in result.report() + "\n"


# Every ingredient of --recipe best, on tiny data.
BEST = dict(
    whiten="zca",
    hidden_sizes=[32],
    norm="layer",
    activation="gelu",
    blocks=1,
    mixup=0.2,
    cutmix=1.0,
    augment="flip+crop",
    crop_padding=1,
    ema_momentum=0.2,
    tta=True,
    optimizer="adamw",
    lr=3e-3,
    weight_decay=0.05,
    lr_schedule="onecycle",
    label_smoothing=0.1,
)


def _best_config(data: Path, run_dir: Path, **kw) -> TrainConfig:
    return _config(data, run_dir, **{**BEST, **kw})


def test_best_ingredients_evaluate_reproduces_the_recorded_best(tree: Path, baselines: TrainedRuns) -> None:
    from ignite_mlp.data.whitening import zca
    from ignite_mlp.inference.evaluate import evaluate

    result = baselines.run(**BEST, epochs=3)  # evaluate only reads the run
    run = result.run_dir
    # The whitening saved is the one of the training split, and evaluate whitens with it.
    saved = RunDir(run).read_whitening()
    assert torch.equal(saved.matrix, zca(load_dataset(tree).train_images, 0.1).matrix)
    report = evaluate(run)
    history = result.history
    assert report.epoch == result.best_epoch
    assert report.accuracy == pytest.approx(result.best_val_acc, abs=1e-9)
    assert report.loss == pytest.approx(history["val_loss"][report.epoch - 1], abs=1e-7)
    # The best checkpoint holds the averaged weights, not the trained ones; the last one both.
    last = torch.load(result.last_checkpoint, weights_only=True)
    assert set(last["ema_model"]) == set(last["model"])
    assert any(not torch.equal(last["ema_model"][k], last["model"][k]) for k in last["model"])
    assert evaluate(result.last_checkpoint).accuracy == pytest.approx(history["val_acc_epoch"][-1], abs=1e-9)


def test_best_ingredients_ctrl_c_then_resume_equals_an_uninterrupted_run(
    tree: Path, tmp_path: Path, baselines: TrainedRuns
) -> None:
    from ignite_mlp.errors import TrainingInterrupted

    straight = baselines.run(**BEST, epochs=3).history
    with pytest.raises(TrainingInterrupted):  # mid-epoch 2: the average, mixing and whitening must carry over
        train(_best_config(tree, tmp_path / "cut", epochs=3), extra_handlers=[_ctrl_c_at(7)], write=lambda s: None)
    resumed = train(RunDir(tmp_path / "cut").resume_config(), write=lambda s: None).history
    for key in straight:
        assert resumed[key] == pytest.approx(straight[key], abs=1e-6), key


def test_builtin_handlers_epoch_end_order_and_what_a_resume_restores(tree: Path, tmp_path: Path) -> None:
    names: list[str] = []

    def look(trainer, evaluator, context) -> None:  # user handlers come after every built-in one
        handlers = dict(event_handlers(trainer))[Events.EPOCH_COMPLETED]
        names.extend(getattr(h, "__qualname__", type(h).__name__) for h in handlers)

    result = train(_config(tree, tmp_path / "r", epochs=1, patience=2), extra_handlers=[look], write=lambda s: None)
    order = [
        next(i for i, n in enumerate(names) if key in n) for key in ("validate", "History", "log_epoch", "Checkpoint")
    ]
    assert order == sorted(order), names  # validation, then history, TensorBoard, the last checkpoint
    assert result.last_checkpoint is not None
    saved = safe_load(result.last_checkpoint)
    # "trainer" before "train_metrics", which reads the restored iteration.
    assert list(saved) == [
        "model",
        "optimizer",
        "trainer",
        "train_metrics",
        "history",
        "random",
        "early_stopping",
        "best_checkpoint",
    ]


def test_ablation_probe_script_runs_as_a_handler_in_the_resolved_precision(tree: Path, tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "scripts" / "ablation_probe.py"
    config = _config(tree, tmp_path / "r", epochs=2, ema_momentum=0.5, handlers=[f"{script}:attach"])
    assert config.precision == "auto"  # what the probe once passed on as it was, and failed on
    result = train(config, write=lambda s: None)
    probe = json.loads((tmp_path / "r" / "probe.json").read_text())
    assert [row["epoch"] for row in probe] == [1, 2]
    # Validation runs the moving average (no TTA): the probe's "ema" row is the recorded accuracy.
    assert [row["ema"] for row in probe] == pytest.approx(result.history["val_acc_epoch"], abs=1e-3)
    assert all(set(row) >= {"plain", "tta", "ema", "ema+tta"} for row in probe)


def test_resume_auto_from_python_continues_the_newest_run(
    tmp_path: Path, baselines: TrainedRuns, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # --resume auto looks under ./runs
    baselines.copy(tmp_path / "runs" / "first", epochs=2)
    result = train(baselines.config(Path("runs/ignored"), epochs=3, resume="auto"), write=lambda s: None)
    assert result.run_dir.resolve() == (tmp_path / "runs" / "first").resolve()
    assert len(json.loads((tmp_path / "runs" / "first" / "history.json").read_text())["val_loss"]) == 3
    assert not (tmp_path / "runs" / "ignored").exists()
