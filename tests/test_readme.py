"""The README's and docs' commands and examples stay true: CI runs exactly the README's test
command, every `ignite-mlp` command shown parses, and the Python and TOML examples run as written."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks(kind: str, page: str = "README.md") -> list[str]:
    return [b.strip() for b in re.findall(rf"```{kind}\n(.*?)```", (ROOT / page).read_text(), flags=re.S)]


def _cli_arguments(line: str) -> list[str] | None:
    """The arguments a shell line gives ignite-mlp (``.venv/bin/ignite-mlp ...`` or ``torchrun ... -m
    ignite_mlp ...``), or None when it does not run ignite-mlp."""
    words = shlex.split(line)
    for i, word in enumerate(words):
        if word.endswith("ignite-mlp"):
            return words[i + 1 :]
        if word == "-m" and words[i + 1 : i + 2] == ["ignite_mlp"]:
            return words[i + 2 :]
    return None


def shown_commands() -> list[tuple[str, list[str]]]:
    """Every ignite-mlp command in a bash block of the README or docs/, as (page, arguments)."""
    commands = []
    for page in PAGES:
        for block in _blocks("bash", str(page.relative_to(ROOT))):
            for line in block.splitlines():
                for part in line.split("&&"):
                    if (arguments := _cli_arguments(part)) is not None:
                        commands.append((page.name, arguments))
    return commands


def test_the_command_finder_reads_both_ways_of_starting_the_cli() -> None:
    assert _cli_arguments(".venv/bin/ignite-mlp evaluate runs/x") == ["evaluate", "runs/x"]
    assert _cli_arguments("torchrun --nproc-per-node 2 -m ignite_mlp train --epochs 2") == ["train", "--epochs", "2"]
    assert _cli_arguments(".venv/bin/pip install -q -e '.[export]'") is None


def test_the_pages_show_every_command() -> None:
    shown = {arguments[0] for _, arguments in shown_commands()}
    assert shown == {"train", "evaluate", "samples", "lr-find", "predict", "export", "sweep"}


def _command_id(value: str | list[str]) -> str:
    return value if isinstance(value, str) else " ".join(value)


@pytest.mark.parametrize(("page", "arguments"), shown_commands(), ids=_command_id)
def test_every_command_shown_is_one_the_cli_accepts(page: str, arguments: list[str]) -> None:
    from ignite_mlp.cli import build_parser

    # Parsing only: a misspelt or removed flag, or a value the option refuses, exits 2 here.
    build_parser().parse_args(arguments)


def test_ci_runs_the_readmes_test_command() -> None:
    main_cmd, test_cmd = _blocks("bash")[:2]
    assert "ignite-mlp train" in main_cmd and "pytest" in test_cmd
    assert test_cmd in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_handler_example_runs_as_written(tmp_path: Path) -> None:
    pack = os.environ.get("IGNITE_MLP_PACK")
    if not pack:
        pytest.skip("the example trains on the pack: set IGNITE_MLP_PACK")
    example = next(b for b in _blocks("python", "docs/extending.md") if "extra_handlers=[attach]" in b)
    # Run it as written, from a folder where ../shared/data/... is the pack.
    work = tmp_path / "project"
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "cifar10-jpg.tar.gz").symlink_to(Path(pack).resolve())
    work.mkdir()
    out = subprocess.run([sys.executable, "-c", example], cwd=work, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"^lr 0\.001 at epoch 2$", out.stdout, flags=re.M)
    assert "new best" in out.stdout and (work / "runs" / "extend-demo" / "history.json").is_file()


def test_onnx_example_runs_with_onnxruntime_alone_and_agrees_with_predict(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    import numpy as np
    from conftest import make_tree
    from PIL import Image

    from ignite_mlp import TrainConfig, train
    from ignite_mlp.inference.classifier import load_classifier
    from ignite_mlp.inference.export import export
    from ignite_mlp.inference.predict import predict

    example = next(b for b in _blocks("python", "docs/inference.md") if "onnxruntime.InferenceSession" in b)
    # The example's files, where it expects them: a run's ONNX export and an RGBA picture.
    run = tmp_path / "runs" / "auto"
    data = make_tree(tmp_path / "tree")
    train(TrainConfig(data=str(data), run_dir=str(run), epochs=2, batch_size=8, lr=0.05, progress=False), write=print)
    export(run, "onnx")
    (tmp_path / "my_pictures").mkdir()
    rgba = np.random.default_rng(0).integers(0, 256, (30, 40, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(tmp_path / "my_pictures" / "ship.png")
    # Nothing of this package, and no torch, is imported by the example.
    check = "\nimport sys\nassert not {'torch', 'ignite_mlp'} & set(sys.modules), 'imported torch or ignite_mlp'\n"
    out = subprocess.run([sys.executable, "-c", example + check], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    printed = [line.split() for line in out.stdout.splitlines()]
    (prediction,), _ = predict(load_classifier(run), [str(tmp_path / "my_pictures" / "ship.png")])
    assert [c for c, _ in printed] == [c for c, _ in prediction.top]
    assert [float(p.rstrip("%")) for _, p in printed] == pytest.approx([100 * v for _, v in prediction.top], abs=0.06)


def test_the_run_toml_of_the_options_page_is_accepted_as_written(tmp_path: Path) -> None:
    from ignite_mlp.config.train_config import config_from_sources

    (block,) = _blocks("toml", "docs/options.md")
    toml = tmp_path / "run.toml"
    toml.write_text(block)
    config = config_from_sources({}, str(toml))
    assert (config.epochs, config.hidden_sizes, config.lr) == (20, [512, 256], 0.01)
    assert config.handlers == ["scripts/custom_handler.py:attach"]
