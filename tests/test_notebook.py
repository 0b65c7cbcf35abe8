"""scripts/tutorial.ipynb runs top to bottom in a real Jupyter kernel and shows what the tutorial
shows; it is committed without outputs; ignite_mlp.notebook tells a kernel from a terminal or a file.

The execution test trains on the tiny generated tree (3 epochs), or on the pack with one epoch
when IGNITE_MLP_PACK is set. The notebook's first cell reads its settings from TUTORIAL_DATA,
TUTORIAL_EPOCHS and TUTORIAL_RUN_DIR.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from conftest import PACK_VARIABLE, make_tree
from nbclient import NotebookClient

from ignite_mlp.notebook import bar_fits, in_jupyter

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "scripts" / "tutorial.ipynb"
WIDGET = "application/vnd.jupyter.widget-view+json"


def test_committed_notebook_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the tutorial has code cells"
    assert [c.id for c in code if c.outputs or c.execution_count is not None] == []
    assert "widgets" not in nb.metadata  # widget state is an output too


@pytest.mark.parametrize("pack_there", [True, False])
def test_first_cell_finds_the_pack_beside_the_project(
    pack_there: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A project folder with the pack beside it (or not), and the kernel's cwd in its scripts/.
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    pack = tmp_path / "shared" / "data" / "cifar10-jpg.tar.gz"
    if pack_there:
        pack.parent.mkdir(parents=True)
        pack.write_bytes(b"")
    for name in ("TUTORIAL_DATA", "TUTORIAL_EPOCHS", "TUTORIAL_RUN_DIR"):
        monkeypatch.delenv(name, raising=False)
    first = next(c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code")
    for cwd in (project / "scripts", project):  # JupyterLab's cwd, or the project root
        monkeypatch.chdir(cwd)
        settings: dict[str, Any] = {}
        exec(first.source, settings)  # plain Python: no magics in the settings cell
        assert settings["DATA"] == str(pack if pack_there else project / "data")
        assert settings["RUN_DIR"] == project / "runs" / "tutorial"
        assert settings["EPOCHS"] == 3  # the fast setting; the tutorial's 50 is one edit away
    assert "# the tutorial: 50" in first.source


def _kernel_spec(folder: Path) -> str:
    """A kernelspec running this very Python, so the test never picks another "python3"."""
    spec = folder / "kernels" / "ignite-mlp-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "test", "language": "python"}))
    return spec.name


def _text(cell: Any) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def _cell(nb: Any, snippet: str) -> Any:
    return next(c for c in nb.cells if c.cell_type == "code" and snippet in c.source)


def test_notebook_runs_in_a_kernel_and_shows_the_tutorial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pack = os.environ.get(PACK_VARIABLE)  # absolute (conftest.py): the kernel runs in scripts/
    data = Path(pack) if pack else make_tree(tmp_path / "tree")
    run_dir = tmp_path / "runs" / "tutorial"
    monkeypatch.setenv("TUTORIAL_DATA", str(data))
    monkeypatch.setenv("TUTORIAL_EPOCHS", "1" if pack else "3")
    monkeypatch.setenv("TUTORIAL_RUN_DIR", str(run_dir))
    # The kernel imports this checkout's package, whatever is installed.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    kernel = _kernel_spec(tmp_path / "jupyter")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    # One cell more: the kernel must count as a place for a progress bar (see ignite_mlp.notebook).
    probe = "from ignite_mlp.notebook import bar_fits, in_jupyter\nprint('kernel:', in_jupyter(), bar_fits())"
    nb.cells.append(nbformat.v4.new_code_cell(probe))
    # Run as JupyterLab does, from scripts/; any cell error raises CellExecutionError here.
    client = NotebookClient(nb, timeout=600, kernel_name=kernel, resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()

    summary = _text(_cell(nb, "print(summarize("))
    assert f"data: {data}" in summary and "classes (train/test images)" in summary and "image shape 3x" in summary

    pictures = [c for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert _cell(nb, "samples.grid()") in pictures  # the sample grid
    assert _cell(nb, "confusion_matrix_figure(") in pictures

    # The one-hot printout: a single 1, at the position of the label printed above it.
    one_hot = _text(_cell(nb, "F.one_hot("))
    label = re.search(r"label (\d+) = (\w+)", one_hot)
    vector = re.search(r"tensor\(\[([01, \n]+)\]\)", one_hot)
    assert label and vector, one_hot
    values = [int(v) for v in vector.group(1).replace("\n", "").split(",")]
    assert values == [int(k == int(label.group(1))) for k in range(len(values))]
    assert len(values) == (10 if pack else 3)

    # The final accuracy line is the run's own best, as history.json holds it.
    training = _text(_cell(nb, "train(config"))
    best = max(json.loads((run_dir / "history.json").read_text())["val_acc_epoch"])
    assert f"best validation accuracy {best:.2f}%" in training
    assert re.search(r"^Epoch +1/\d+: train loss", training, flags=re.M)
    assert f"accuracy {best:.2f}%" in _text(_cell(nb, "evaluation.report()"))

    # The progress bar is a widget (Ignite's ProgressBar through tqdm's notebook bar), not text.
    bars = [o for o in _cell(nb, "train(config").outputs if WIDGET in o.get("data", {})]
    assert bars, "no widget output in the training cell"
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    texts = [m["state"].get("value", "") for m in state.values() if m["model_name"] == "HTMLModel"]
    assert any(t.startswith("Epoch") for t in texts)  # Ignite's bar description, "Epoch [1/3]: ..."

    assert "new best" in _text(_cell(nb, "extra_handlers=[attach]"))
    assert _text(nb.cells[-1]).strip() == "kernel: True True"


def test_outside_a_kernel_a_bar_needs_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert not in_jupyter()  # pytest runs in no kernel
    assert not bar_fits(io.StringIO())
    assert bar_fits(Terminal())
