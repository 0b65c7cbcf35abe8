"""The package's shape: no import cycle among its modules, and the CLI's --help imports no torch."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ignite_mlp"


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _module_name(path: Path, package: Path) -> str:
    """``ignite_mlp/data/loader.py`` -> ``ignite_mlp.data.loader``; a package's ``__init__`` is the package."""
    parts = ["ignite_mlp", *path.relative_to(package).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere (top level or inside a function),
    except under ``if TYPE_CHECKING:``, which never runs."""
    modules = {_module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        tree = ast.parse(path.read_text())
        typing_only = [node for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)]
        skipped = {id(inner) for node in typing_only for inner in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # "from ignite_mlp.distributed import ranks" imports the module ignite_mlp.distributed.ranks; "from
                # ignite_mlp.config.train_config import TrainConfig" the module ignite_mlp.config.train_config.
                submodules = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
                targets = submodules if len(submodules) == len(node.names) else [*submodules, node.module]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_package_imports_form_no_cycle() -> None:
    graph = import_graph()
    assert "ignite_mlp.run.training" in graph["ignite_mlp.distributed.launcher"]  # the launcher calls train()
    assert "ignite_mlp.distributed.ranks" in graph["ignite_mlp.run.plan"]  # a run uses the rank helpers
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_help_imports_no_torch() -> None:
    code = (
        "import contextlib, io, sys\n"
        "from ignite_mlp.cli import build_parser\n"
        "parser = build_parser()\n"
        "for argv in (['--help'], ['train', '--help']):\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "        parser.parse_args(argv)\n"
        "    assert '--epochs' in out.getvalue() or 'train' in out.getvalue()\n"
        "heavy = sorted(m for m in ('torch', 'ignite', 'tensorboardX', 'numpy') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_public_names_still_import_lazily() -> None:
    code = (
        "import sys, ignite_mlp\n"
        "assert 'torch' not in sys.modules\n"
        "from ignite_mlp import MLP, RunContext, TrainConfig, train\n"
        "print(train.__module__, MLP.__module__, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["ignite_mlp.run.training", "ignite_mlp.model", "True"]


# ----------------------------------------------------------------------------- import directions

# The layers, lowest first; a module may import its own layer and the ones below, never above.
# A module's layer is that of the longest prefix listed (docs/layout.md explains each).
LAYERS: list[tuple[str, ...]] = [
    # helpers everything may use: errors, atomic writes, the lock, checkpoint names, the terminal, pictures
    (
        "ignite_mlp.errors", "ignite_mlp.version", "ignite_mlp.files", "ignite_mlp.locks", "ignite_mlp.notebook",
        "ignite_mlp.plots", "ignite_mlp.checkpoint_names",
    ),  # fmt: skip
    ("ignite_mlp.config", "ignite_mlp.progress"),  # what a run is asked to do; how it reports
    ("ignite_mlp.data", "ignite_mlp.model", "ignite_mlp.forward"),  # what it learns from, what learns, what it computes
    ("ignite_mlp.engine", "ignite_mlp.distributed.ranks"),  # one training step; who does what across ranks
    ("ignite_mlp.handlers",),  # what is attached to the engines
    ("ignite_mlp.run",),  # one run put together, its files, resuming it
    ("ignite_mlp.inference", "ignite_mlp.distributed", "ignite_mlp.sweep"),  # a run used, launched, repeated
    ("ignite_mlp.cli", "ignite_mlp.__main__"),  # parses and calls
]  # fmt: skip


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of ``module``'s longest listed prefix."""
    best = (-1, -1)
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best[0]:
                best = (len(prefix), index)
    assert best[1] >= 0, f"{module} is in no layer of LAYERS: add it"
    return best[1]


def test_imports_only_go_down_the_layers() -> None:
    graph = import_graph()
    upward = [
        f"{name} -> {target}"
        for name, targets in graph.items()
        if name != "ignite_mlp"  # the package's lazy public names
        for target in targets
        if target != "ignite_mlp" and layer_of(target) > layer_of(name)
    ]
    assert upward == []


def test_the_layer_check_sees_an_upward_import() -> None:
    assert layer_of("ignite_mlp.data.loader") < layer_of("ignite_mlp.run.plan") < layer_of("ignite_mlp.cli")
    assert layer_of("ignite_mlp.distributed.ranks") < layer_of("ignite_mlp.distributed.launcher")


def test_nothing_imports_the_cli() -> None:
    graph = import_graph()
    assert [name for name, targets in graph.items() if "ignite_mlp.cli" in targets] == ["ignite_mlp.__main__"]


def _external_imports(path: Path) -> set[str]:
    """The top-level names of the packages outside ignite_mlp that ``path`` imports anywhere."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_config_data_and_model_never_import_ignite() -> None:
    offenders = [
        str(path.relative_to(PACKAGE.parent))
        for folder in ("config", "data")
        for path in (PACKAGE / folder).rglob("*.py")
        if "ignite" in _external_imports(path)
    ]
    offenders += ["ignite_mlp/model.py"] if "ignite" in _external_imports(PACKAGE / "model.py") else []
    assert offenders == []


def _modules_loaded_by(code: str) -> list[str]:
    """The modules in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


TRAINING_STACK = ("ignite.engine", "ignite_mlp.engine", "ignite_mlp.handlers", "ignite_mlp.run.training")


def test_predict_and_export_load_no_engine_and_no_training_module() -> None:
    loaded = _modules_loaded_by("import ignite_mlp.inference.predict, ignite_mlp.inference.export")
    assert "torch" in loaded  # the check can see what was imported
    assert [m for m in loaded if m.startswith(TRAINING_STACK)] == []


def test_config_data_and_model_load_no_ignite() -> None:
    loaded = _modules_loaded_by("import ignite_mlp.config, ignite_mlp.data, ignite_mlp.model")
    assert "torch" in loaded
    assert [m for m in loaded if m == "ignite" or m.startswith("ignite.")] == []


def test_no_folder_holds_more_than_twelve_modules() -> None:
    sizes = {
        str(folder.relative_to(PACKAGE.parent)): len([p for p in folder.glob("*.py") if p.name != "__init__.py"])
        for folder in [PACKAGE, *(p for p in PACKAGE.rglob("*") if p.is_dir() and (p / "__init__.py").exists())]
    }
    assert {k: v for k, v in sizes.items() if v > 12} == {}
    assert sizes["ignite_mlp/run"] >= 5  # the count sees the modules
