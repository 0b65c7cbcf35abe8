"""ignite_mlp.run.spec: every "auto" resolved once, into one frozen RunSpec that the run reads."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from ignite_mlp import TrainConfig, train
from ignite_mlp.data import load_dataset
from ignite_mlp.run.plan import resolve_plan
from ignite_mlp.run.prepare import prepare_data
from ignite_mlp.run.spec import RunSpec, resolve_spec


def _spec(tree: Path, tmp_path: Path, **kw) -> RunSpec:
    base = {"data": str(tree), "run_dir": str(tmp_path / "r"), "batch_size": 8, "progress": False}
    config = TrainConfig(**{**base, **kw})
    plan = resolve_plan(config, write=lambda s: None)
    return resolve_spec(plan, prepare_data(plan), lr=plan.config.lr)


def test_epochs_and_batches_from_the_loader_the_option_or_the_dry_run(tree: Path, tmp_path: Path) -> None:
    full = _spec(tree, tmp_path, epochs=4)
    assert (full.max_epochs, full.epoch_length, full.val_batches, full.total_iterations) == (4, 5, None, 20)
    short = _spec(tree, tmp_path, epochs=4, epoch_length=3)
    assert (short.max_epochs, short.epoch_length, short.val_batches) == (4, 3, None)
    dry = _spec(tree, tmp_path, epochs=4, epoch_length=3, dry_run=True)
    assert (dry.max_epochs, dry.epoch_length, dry.val_batches) == (1, 2, 2)
    assert (dry.progress, dry.main, dry.distributed, dry.rank, dry.world_size) == ("off", True, False, 0, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        dry.max_epochs = 3  # type: ignore[misc]


def test_a_run_resolves_auto_once_and_leaves_the_callers_config_alone(tree: Path, tmp_path: Path) -> None:
    seen: list[RunSpec] = []
    config = TrainConfig(
        data=str(tree),
        run_dir=str(tmp_path / "r"),
        epochs=1,
        batch_size=8,
        progress=False,
        lr="auto",
        normalize="dataset",
    )
    train(config, extra_handlers=[lambda trainer, evaluator, context: seen.append(context.spec)], write=lambda s: None)
    (spec,) = seen
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    # The learning-rate finder's number, the training set's statistics, this machine's precision.
    assert isinstance(spec.config.lr, float) and spec.config.lr == saved["lr"]
    pixels = load_dataset(tree).train_images.float() / 255  # an independent computation
    assert torch.allclose(torch.tensor(spec.config.mean), pixels.mean(dim=(0, 2, 3)), atol=1e-5)
    assert spec.config.mean == saved["mean"] and spec.config.std == saved["std"]
    assert spec.precision in ("fp32", "bf16") and spec.config.precision == spec.precision
    # config.json keeps the precision decided, never "auto": a resume elsewhere takes it (test_precision.py);
    # the device stays a request ("auto"), beside the one used.
    assert (saved["precision"], saved["precision_reason"]) == (spec.precision, spec.precision_reason)
    assert (saved["device"], saved["resolved_device"]) == ("auto", "cpu")
    assert (config.lr, config.precision, config.mean) == ("auto", "auto", [0.5])  # nothing written back


def test_a_non_main_rank_shows_no_progress(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ignite_mlp.distributed import ranks

    assert _spec(tree, tmp_path, progress="on").progress == "bar"
    monkeypatch.setattr(ranks, "is_main", lambda: False)
    spec = _spec(tree, tmp_path, progress="on")
    assert (spec.main, spec.progress) == (False, "off")  # rank 0 speaks for the run
