"""ignite_mlp.run.wiring: phase 4 attaches the built-in handlers in the order the run relies on."""

from pathlib import Path

from ignite.engine import Events

from ignite_mlp import TrainConfig
from ignite_mlp.handlers.ignite_compat import event_handlers
from ignite_mlp.run.engines import build_engines
from ignite_mlp.run.plan import prepare_run_dir, resolve_plan
from ignite_mlp.run.prepare import prepare_data
from ignite_mlp.run.wiring import attach_builtins


def test_epoch_end_order_and_what_a_resume_restores(tree: Path, tmp_path: Path) -> None:
    config = TrainConfig(data=str(tree), run_dir=str(tmp_path / "r"), batch_size=8, progress=False, patience=2)
    plan = resolve_plan(config, write=lambda s: None)
    data = prepare_data(plan)
    engines = build_engines(plan, data)
    prepare_run_dir(plan.run_dir, False)
    hooks = attach_builtins(plan, data, engines)
    try:
        names = [
            getattr(h, "__qualname__", type(h).__name__)
            for h in dict(event_handlers(engines.trainer))[Events.EPOCH_COMPLETED]
        ]
        order = [
            next(i for i, n in enumerate(names) if key in n)
            for key in ("validate", "History", "log_epoch", "Checkpoint")
        ]
        assert order == sorted(order), names  # validation, then history, TensorBoard, the last checkpoint
        assert set(hooks.to_save) == {
            "model",
            "optimizer",
            "trainer",
            "train_metrics",
            "history",
            "random",
            "early_stopping",
        }
        assert hooks.files["history"] == plan.run_dir / "history.json"
        assert hooks.run_info["resolved_device"] == "cpu" and hooks.run_info["patience"] == 2
    finally:
        assert hooks.tb is not None
        hooks.tb.close()
