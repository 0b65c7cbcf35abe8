"""ignite_mlp.checkpoint_names: the one place a checkpoint file's name is spelled. The names it
parses are the names Ignite's Checkpoint writes in a real run, and no other module of the package
spells them in its code."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from ignite_mlp import checkpoint_names

PACKAGE = Path(__file__).resolve().parents[1] / "ignite_mlp"
# The names' fixed parts, as a module would spell them to make, find or parse a file.
SPELLED = re.compile(r"(best_model|last_checkpoint|interrupted_checkpoint)_|val_acc=|\b(best|last|interrupted)_\*")


def _code_strings(path: Path) -> list[str]:
    """Every string constant of a module that is not a docstring."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_no_other_module_spells_a_checkpoint_name() -> None:
    spelled = {
        f"{path.relative_to(PACKAGE)}: {text!r}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "checkpoint_names.py"
        for text in _code_strings(path)
        if SPELLED.search(text)
    }
    assert not spelled, f"checkpoint names spelled outside ignite_mlp/checkpoint_names.py: {sorted(spelled)}"


def test_the_grep_sees_a_spelling_when_there_is_one(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text('"""best_model_1_val_acc=2.pt in a docstring is fine."""\nNAME = "last_checkpoint_*.pt"\n')
    assert [t for t in _code_strings(module) if SPELLED.search(t)] == ["last_checkpoint_*.pt"]


def test_the_names_a_real_run_writes_are_the_ones_it_parses(tree: Path, tmp_path: Path) -> None:
    from ignite_mlp import TrainConfig, train

    run = tmp_path / "r"
    train(TrainConfig(data=str(tree), run_dir=str(run), epochs=2, batch_size=8, progress=False), write=lambda s: None)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    [best] = [n for n in names if checkpoint_names.best_epoch(n) is not None]
    [last] = [n for n in names if checkpoint_names.resumable(n) is not None]
    assert len(names) == 2
    accuracies = json.loads((run / "history.json").read_text())["val_acc_epoch"]
    epoch = accuracies.index(max(accuracies)) + 1
    assert (checkpoint_names.best_epoch(best), checkpoint_names.best_score(best)) == (epoch, round(max(accuracies), 4))
    assert checkpoint_names.resumable(last) == (2 * 5, False)  # 36 training images: 5 batches of 8 an epoch
