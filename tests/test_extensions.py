"""ignite_mlp.handlers.extensions: user handlers by spec, the NEW_BEST event, the handler table."""

import sys
from pathlib import Path

import pytest
from ignite.engine import Engine, Events

from ignite_mlp import TrainConfig, train
from ignite_mlp.errors import UserError
from ignite_mlp.handlers.console import EverySeconds
from ignite_mlp.handlers.extensions import TrainEvents, handler_table, load_handler
from ignite_mlp.run.rundir import RunDir

HANDLER_SOURCE = """
from ignite.engine import Events
from ignite_mlp.handlers.extensions import TrainEvents

def attach(trainer, evaluator, context):
    log = context.run_dir / "{name}.log"

    @trainer.on(Events.EPOCH_COMPLETED(every=2))
    def every_other_epoch(engine):
        with open(log, "a") as f:
            f.write(f"epoch {{engine.state.epoch}}\\n")

    @trainer.on(TrainEvents.NEW_BEST)
    def new_best(engine):
        with open(log, "a") as f:
            f.write(f"best {{engine.state.epoch}}\\n")
"""


def _config(data: Path, run_dir: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), run_dir=str(run_dir), epochs=5, batch_size=8, lr=0.05, progress=False)
    return TrainConfig(**{**base, **kw})


def test_handlers_from_a_file_and_from_a_module_fire_on_their_events(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "file_handler.py").write_text(HANDLER_SOURCE.format(name="from_file"))
    package = tmp_path / "pkg" / "my_handlers"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text(HANDLER_SOURCE.format(name="from_module"))
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    specs = [f"{tmp_path / 'file_handler.py'}:attach", "my_handlers.mod:attach"]
    result = train(_config(tree, tmp_path / "run", handlers=specs), write=lambda s: None)
    val_acc = result.history["val_acc_epoch"]
    # Epochs whose accuracy beat every earlier one: exactly when the best checkpoint changes.
    new_bests = [e + 1 for e, acc in enumerate(val_acc) if acc > max(val_acc[:e], default=-1)]
    expected = []
    for epoch in range(1, 6):
        if epoch in new_bests:
            expected.append(f"best {epoch}")
        if epoch % 2 == 0:
            expected.append(f"epoch {epoch}")
    for name in ("from_file", "from_module"):
        assert (tmp_path / "run" / f"{name}.log").read_text().split("\n")[:-1] == expected
    sys.modules.pop("my_handlers.mod", None)


def test_new_best_fires_exactly_when_the_best_checkpoint_changes(tree: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, list[str]]] = []

    def attach(trainer: Engine, evaluator: Engine, context) -> None:
        @trainer.on(TrainEvents.NEW_BEST)
        def _(engine: Engine) -> None:
            seen.append((engine.state.epoch, RunDir(context.run_dir).best_checkpoint().name))

    result = train(_config(tree, tmp_path / "run", epochs=6, lr=0.2), extra_handlers=[attach], write=lambda s: None)
    val_acc = result.history["val_acc_epoch"]
    changes = [e + 1 for e, acc in enumerate(val_acc) if acc > max(val_acc[:e], default=-1)]
    assert [epoch for epoch, _ in seen] == changes
    for epoch, name in seen:  # on disk already (the superseded one goes with the epoch's last checkpoint)
        assert name.startswith(f"best_model_{epoch}_")
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("best_*")] == [seen[-1][1]]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "expected MODULE:FUNCTION"),
        ("surely_not_a_module_xyz:attach", "cannot import surely_not_a_module_xyz"),
        ("/nonexistent/h.py:attach", "no such file"),
        ("json:not_there", "has no function 'not_there'"),
    ],
)
def test_bad_handler_specs_are_clear_errors(spec: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        load_handler(spec)
    assert spec in str(info.value)


def test_handler_spec_whose_module_raises(tmp_path: Path) -> None:
    bad = tmp_path / "broken.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(UserError, match=r"cannot import .*RuntimeError: boom"):
        load_handler(f"{bad}:attach")


def test_handler_table_lists_handlers_in_order_with_filters() -> None:
    engine = Engine(lambda e, b: None)

    def first(_: Engine) -> None: ...

    def second(_: Engine) -> None: ...

    engine.add_event_handler(Events.EPOCH_COMPLETED, first)
    engine.add_event_handler(Events.EPOCH_COMPLETED(every=3), second)
    engine.add_event_handler(Events.ITERATION_COMPLETED(event_filter=EverySeconds(0.1)), first)
    rows = [line.split(maxsplit=4) for line in handler_table({"trainer": engine}).splitlines()[2:]]
    assert rows[0][:4] == [
        "trainer",
        "EPOCH_COMPLETED",
        "1",
        "test_handler_table_lists_handlers_in_order_with_filters.first",
    ]
    assert rows[1][3].endswith(".second") and rows[1][4] == "every=3"
    assert rows[2][1] == "ITERATION_COMPLETED" and rows[2][4] == "every 0.1 s"
