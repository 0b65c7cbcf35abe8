"""ignite_mlp.config.train_config: defaults, validation, TOML file and CLI overrides."""

import argparse
from pathlib import Path

import pytest
import torch

from ignite_mlp.config.train_config import TrainConfig, add_config_arguments, config_from_sources, resolve_device
from ignite_mlp.errors import UserError


def test_defaults_are_the_tutorials_recipe() -> None:
    c = TrainConfig()
    assert (c.hidden_sizes, c.epochs, c.lr, c.momentum, c.weight_decay, c.batch_size) == (
        [128],
        50,
        1e-3,
        0.9,
        1e-4,
        256,
    )
    assert (c.mean, c.std, c.data) == ([0.5], [0.5], "./data")
    assert (c.device, c.precision, c.progress) == ("auto", "auto", "auto")
    c.hidden_sizes.append(64)
    assert TrainConfig().hidden_sizes == [128]  # no shared mutable default


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"epochs": 0}, "--epochs"),
        ({"batch_size": 0}, "--batch-size"),
        ({"lr": 0.0}, "--lr"),
        ({"lr": -1.0}, "--lr"),
        ({"hidden_sizes": []}, "--hidden-sizes"),
        ({"hidden_sizes": [0]}, "--hidden-sizes"),
        ({"hidden_sizes": [64, -3]}, "--hidden-sizes"),
        ({"hidden_sizes": ["wide"]}, "--hidden-sizes"),
        ({"momentum": 1.0}, "--momentum"),
        ({"std": [0.0]}, "--std"),
        ({"device": "tpu"}, "--device"),
        ({"precision": "fp8"}, "--precision"),
        ({"epochs": "ten"}, "--epochs"),
        ({"tb_images_every": -1}, "--tb-images-every"),
        ({"seed": -1}, r"--seed must be in \[0, 2\*\*32 - 1\]"),
        ({"seed": 2**32}, "--seed"),
        ({"nesterov": True, "momentum": 0.0}, "--momentum must be > 0 with --nesterov"),
        ({"lr": float("inf")}, "--lr must be a finite number"),
        ({"weight_decay": float("inf")}, "--weight-decay must be a finite number"),
        ({"mean": [float("nan")]}, "--mean must be a finite number"),
        ({"std": [0.5, float("inf"), 0.5]}, "--std must be a finite number"),
        ({"progress": "sometimes"}, "--progress"),
    ],
)
def test_invalid_values_name_the_flag(kwargs: dict, flag: str) -> None:
    with pytest.raises(UserError, match=flag):
        TrainConfig(**kwargs)


def test_types_are_coerced_where_unambiguous() -> None:
    c = TrainConfig(lr=1, hidden_sizes=(64, 32), epochs=3.0)
    assert c.lr == 1.0 and isinstance(c.lr, float)
    assert c.hidden_sizes == [64, 32] and c.epochs == 3


def _parse(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return vars(parser.parse_args(argv))


def test_cli_flags_come_from_the_dataclass_and_override_toml(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('epochs = 7\nlr = 0.01\nhidden-sizes = [256, 128]\ndata = "from-file"\n')
    cli = _parse(["--epochs", "3", "--hidden-sizes", "64", "32", "--no-tensorboard"])
    assert cli == {"epochs": 3, "hidden_sizes": [64, 32], "tensorboard": False}  # unset flags absent
    c = config_from_sources(cli, str(toml))
    assert (c.epochs, c.lr, c.hidden_sizes, c.data, c.tensorboard) == (3, 0.01, [64, 32], "from-file", False)


def test_progress_takes_a_mode_and_the_old_switches(tmp_path: Path) -> None:
    assert [_parse(argv)["progress"] for argv in (["--progress"], ["--no-progress"], ["--progress", "auto"])] == [
        "on",
        "off",
        "auto",
    ]
    toml = tmp_path / "run.toml"
    toml.write_text("progress = false\n")  # a file written for the former on/off flag
    assert config_from_sources({}, str(toml)).progress == "off"
    assert TrainConfig(progress=True).progress == "on"


def test_bad_toml_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        config_from_sources({}, str(tmp_path / "nope.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 3")
    with pytest.raises(UserError, match="not valid TOML"):
        config_from_sources({}, str(bad))
    bad.write_text("epoks = 3")
    with pytest.raises(UserError, match=r"unknown key.*epoks"):
        config_from_sources({}, str(bad))


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_recipes_are_presets_under_explicit_values(tmp_path: Path) -> None:
    from ignite_mlp.config.train_config import RECIPES

    strong = config_from_sources({"recipe": "strong"})
    for key, value in RECIPES["strong"].items():
        assert getattr(strong, key) == value, key
    toml = tmp_path / "run.toml"
    toml.write_text("epochs = 7\n")
    mixed = config_from_sources({"recipe": "strong", "dropout": 0.0}, str(toml))
    assert (mixed.epochs, mixed.dropout, mixed.norm) == (7, 0.0, "batch")  # file and flag beat the preset
    assert config_from_sources({}) == TrainConfig()  # the tutorial recipe is the default
    with pytest.raises(UserError, match="--recipe"):
        config_from_sources({"recipe": "magic"})


def test_every_option_of_a_recipe_is_checked_at_the_start() -> None:
    # The strong recipe turns Nesterov on; momentum 0 on top used to fail inside SGD.
    with pytest.raises(UserError, match="--no-nesterov"):
        config_from_sources({"recipe": "strong", "momentum": 0.0})
    assert TrainConfig(seed=2**32 - 1).seed == 2**32 - 1  # the whole range numpy accepts


def test_checks_that_need_the_image_shape() -> None:
    crop = TrainConfig(augment="flip+crop", crop_padding=8)
    with pytest.raises(UserError, match="--crop-padding must be below the image size 8x8"):
        crop.check_data((3, 8, 8))
    crop.check_data((3, 32, 32))
    TrainConfig(augment="flip", crop_padding=8).check_data((3, 8, 8))  # no crop: the padding is unused
    with pytest.raises(UserError, match="--device must be auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")  # evaluate takes a device without a TrainConfig


def test_toml_keys_are_the_flag_names(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('handler = ["my_module:attach", "extra.py:attach"]\nhidden-sizes = 64\neval_batch_size = 10\n')
    c = config_from_sources({}, str(toml))  # --handler is the flag; handlers the field
    assert (c.handlers, c.hidden_sizes, c.eval_batch_size) == (["my_module:attach", "extra.py:attach"], [64], 10)
    toml.write_text('handlers = "my_module:attach"\n')
    assert config_from_sources({}, str(toml)).handlers == ["my_module:attach"]
    toml.write_text('handler = ["a:b"]\nhandlers = ["c:d"]\n')
    with pytest.raises(UserError, match="handler and handlers set the same option"):
        config_from_sources({}, str(toml))
    toml.write_text("no-progress = true\n")
    with pytest.raises(UserError, match="write progress = false"):
        config_from_sources({}, str(toml))


def test_toml_resume_auto_is_resolved_like_the_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from ignite_mlp.run.plan import config_for_command

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "20260101-000000"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(TrainConfig(epochs=3, lr=0.02).to_dict()))
    (run / "checkpoints" / "last_checkpoint_10.pt").write_bytes(b"")
    toml = tmp_path / "run.toml"
    toml.write_text('resume = "auto"\nepochs = 6\n')
    with pytest.raises(ValueError, match="config_for_command"):  # the config alone cannot read a run
        config_from_sources({}, str(toml))
    c = config_for_command({}, str(toml))
    found = Path("runs") / run.name
    assert (Path(c.resume), Path(c.run_dir), c.epochs, c.lr) == (found, found, 6, 0.02)


def test_best_recipe_is_the_studys_chosen_trial_over_strong_without_dropout() -> None:
    import json

    from ignite_mlp.config.train_config import RECIPES

    # The study's own record of its chosen trial at the length that fits the time budget
    # (docs/study/best-68/best.json, written by sweep --report).
    record = json.loads((Path(__file__).resolve().parents[1] / "docs/study/best-68/best.json").read_text())
    best = config_from_sources({"recipe": "best"})
    for key, value in RECIPES["best"].items():
        assert getattr(best, key) == value, key
    for name, value in record["params"].items():  # every searched value, as the trial ran it
        assert getattr(best, name) == value, name
    assert best.epochs == record["epochs"] == record["options"]["epochs"]
    # Beyond the searched values and the length: strong without dropout, plus whitening and TTA.
    strong = TrainConfig.from_recipe("strong")
    differ = {k for k in RECIPES["best"] if getattr(best, k) != getattr(strong, k)} - set(record["params"])
    assert differ == {"dropout", "whiten", "tta", "epochs"}
    assert best.normalize == "fixed"  # the whitening replaces --mean/--std
    assert config_from_sources({"recipe": "best", "ema_momentum": 0.001}).ema_momentum == 0.001
