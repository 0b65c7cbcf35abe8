"""Each epoch's batches: the training loader's fresh shuffle per epoch, set by the trainer."""

from __future__ import annotations

from ignite.engine import Engine, Events

from ignite_mlp.data import TensorLoader


def attach_epoch_shuffle(trainer: Engine, loader: TensorLoader, epoch_length: int) -> None:
    """Set up each epoch's batches on a ``trainer`` that runs ``epoch_length`` iterations an epoch:
    a fresh shuffle per epoch and, on a resume mid-epoch, the rest of that epoch.

    >>> import torch
    >>> images, labels = torch.zeros(8, 1, 1, 1, dtype=torch.uint8), torch.zeros(8, dtype=torch.long)
    >>> loader = TensorLoader(images, labels, 4, [0.5], [0.5], shuffle=True)
    >>> trainer = Engine(lambda engine, batch: loader.epoch)
    >>> attach_epoch_shuffle(trainer, loader, epoch_length=2)
    >>> trainer.run(loader, max_epochs=3).output  # the loader served epoch 3's shuffle last
    3
    """

    def start_epoch(engine: Engine) -> None:
        done_in_epoch = engine.state.iteration - (engine.state.epoch - 1) * epoch_length
        loader.set_epoch(engine.state.epoch, start=done_in_epoch % len(loader))
        if epoch_length != len(loader) and done_in_epoch == 0:
            # A custom epoch length: start each epoch from its own shuffle. (Not on a resumed
            # epoch: Ignite then sets up the data itself and counts the iterations already done.)
            engine.set_data(loader)

    trainer.add_event_handler(Events.EPOCH_STARTED, start_epoch)
