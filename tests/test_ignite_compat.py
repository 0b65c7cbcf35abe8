"""ignite_mlp.handlers.ignite_compat: each adapter of Ignite's private attributes against the installed Ignite.

If an Ignite upgrade changes one of them, the test of that adapter fails here, by name.
"""

from pathlib import Path

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver

from ignite_mlp.handlers.console import EverySeconds
from ignite_mlp.handlers.ignite_compat import event_filter_of, event_handlers, ignite_filter_arguments, saved_filenames


def _first(engine: Engine) -> None: ...


def _second(engine: Engine) -> None: ...


def test_event_handlers_in_the_order_they_were_attached() -> None:
    engine = Engine(lambda e, b: None)
    engine.add_event_handler(Events.EPOCH_COMPLETED, _first)
    engine.add_event_handler(Events.EPOCH_COMPLETED, _second)
    engine.add_event_handler(Events.STARTED, _second)
    found = {event: [h.__name__ for h in handlers] for event, handlers in event_handlers(engine)}
    assert found == {Events.EPOCH_COMPLETED: ["_first", "_second"], Events.STARTED: ["_second"]}


def test_saved_filenames_are_the_files_on_disk(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 1)
    checkpoint = Checkpoint({"model": model}, DiskSaver(tmp_path, require_empty=False), n_saved=2)
    engine = Engine(lambda e, b: None)
    for iteration in (1, 2, 3):
        engine.state.iteration = iteration
        checkpoint(engine)
    assert sorted(saved_filenames(checkpoint)) == sorted(p.name for p in tmp_path.glob("*.pt"))
    assert len(saved_filenames(checkpoint)) == 2


def test_event_filters_and_their_arguments() -> None:
    engine = Engine(lambda e, b: None)
    seconds = EverySeconds(0.25)
    engine.add_event_handler(Events.ITERATION_COMPLETED(every=5), _first)
    engine.add_event_handler(Events.EPOCH_COMPLETED(once=[3]), _first)
    engine.add_event_handler(Events.ITERATION_COMPLETED(event_filter=seconds), _first)
    engine.add_event_handler(Events.STARTED, _first)
    handlers = dict(event_handlers(engine))
    every = event_filter_of(handlers[Events.ITERATION_COMPLETED][0])
    assert every is not None and ignite_filter_arguments(every) == {"every": 5}
    once = event_filter_of(handlers[Events.EPOCH_COMPLETED][0])
    assert once is not None and ignite_filter_arguments(once) == {"once": [3]}
    assert event_filter_of(handlers[Events.ITERATION_COMPLETED][1]) is seconds
    assert ignite_filter_arguments(seconds) is None
    assert event_filter_of(handlers[Events.STARTED][0]) is None


def test_metric_device_is_where_the_metric_accumulates() -> None:
    from ignite.metrics import Accuracy

    from ignite_mlp.handlers.ignite_compat import metric_device

    assert metric_device(Accuracy(device="cpu")) == torch.device("cpu")


def test_tensorboardx_writer_is_the_threaded_one_the_adapters_know(tmp_path) -> None:
    from tensorboardX import SummaryWriter

    from ignite_mlp.handlers.ignite_compat import tensorboardx_file_writer, tensorboardx_thread_known
    from ignite_mlp.handlers.tensorboard.events import SynchronousEventWriter, add_scalar, write_synchronously

    writer = SummaryWriter(str(tmp_path))
    threaded = tensorboardx_file_writer(writer).event_writer
    assert tensorboardx_thread_known(threaded)
    write_synchronously(writer)  # through tensorboardx_stop_thread
    assert isinstance(tensorboardx_file_writer(writer).event_writer, SynchronousEventWriter)
    assert not threaded._worker.is_alive()  # tensorboardX's thread has ended
    add_scalar(writer, "loss", 0.5, 1)
    writer.close()
    assert next(tmp_path.glob("events.out.tfevents.*")).stat().st_size > 0
