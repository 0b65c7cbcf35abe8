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
