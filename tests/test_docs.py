"""The docs stay true to the code: the options table against the train command's parser, every path
and link they name against the files on disk, the README a front door, no notes on how the work went."""

import argparse
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

# A path in the project (`ignite_mlp/run/plan.py`, `scripts/train.py`, `docs/data.md`), or a module named
# inside the package (`run/plan.py`); not the tail of another path (`../shared/data/...`).
_PROJECT_PATH = re.compile(r"(?<![\w./-])((?:ignite_mlp|scripts|benchmarks|tests|docs)/[\w./-]*\w)")
_PACKAGE_MODULE = re.compile(r"(?<![\w./-])((?:config|data|engine|handlers|run|distributed|inference)/[\w/]*\w\.py)\b")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def train_flags() -> set[str]:
    """Every option string of ``ignite-mlp train`` but --help."""
    from ignite_mlp.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    train = commands.choices["train"]
    return {flag for action in train._actions for flag in action.option_strings} - {"-h", "--help"}


def table_flags(markdown: str) -> set[str]:
    """The flags in the first column of the page's tables; ``--[no-]name`` stands for ``--name`` and ``--no-name``.

    >>> sorted(table_flags("| `--[no-]tta` | off | ... |\\n| `--hidden-sizes N [N ...]` | `128` | `--lr` |"))
    ['--hidden-sizes', '--no-tta', '--tta']
    """
    flags = set()
    for line in markdown.splitlines():
        cells = line.split("|")
        if not line.startswith("|") or len(cells) < 3:
            continue
        for no, name in re.findall(r"--(\[no-\])?([a-z][a-z0-9-]*)", cells[1]):
            flags |= {f"--{name}", f"--no-{name}"} if no else {f"--{name}"}
    return flags


def test_the_options_table_lists_every_train_flag_and_no_other() -> None:
    table = table_flags((DOCS / "options.md").read_text())
    flags = train_flags()
    assert not flags - table, f"train flags missing from docs/options.md: {sorted(flags - table)}"
    assert not table - flags, f"flags in docs/options.md that train does not have: {sorted(table - flags)}"


def test_the_table_reader_sees_a_flag_left_out() -> None:
    table = (DOCS / "options.md").read_text()
    assert "| `--tb-images-every` |" in table
    assert "--tb-images-every" not in table_flags(table.replace("| `--tb-images-every` |", "| every N epochs |"))


def named_paths(markdown: str) -> set[str]:
    """The project paths a page names, package modules given as ``run/plan.py`` under ``ignite_mlp/``.

    >>> sorted(named_paths("see `ignite_mlp/run/plan.py`, `scripts/train.py:main`, run/spec.py and ../shared/data/x"))
    ['ignite_mlp/run/plan.py', 'ignite_mlp/run/spec.py', 'scripts/train.py']
    """
    paths = {p.rstrip(".") for p in _PROJECT_PATH.findall(markdown)}
    return paths | {f"ignite_mlp/{p}" for p in _PACKAGE_MODULE.findall(markdown)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_path_a_page_names_exists(page: Path) -> None:
    missing = sorted(p for p in named_paths(page.read_text()) if not (ROOT / p).exists())
    assert not missing, f"{page.relative_to(ROOT)} names paths that do not exist: {missing}"


def test_the_layout_page_names_every_module_of_the_package() -> None:
    named = named_paths((DOCS / "layout.md").read_text())
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "ignite_mlp").rglob("*.py") if p.name != "__init__.py"}
    assert not modules - named, f"modules docs/layout.md leaves out: {sorted(modules - named)}"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading.

    >>> _anchor("Precision: chosen by the hardware, measured")
    'precision-chosen-by-the-hardware-measured'
    >>> _anchor("`--recipe best`: above 70%")
    '--recipe-best-above-70'
    """
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_between_pages_lands(page: Path) -> None:
    broken = []
    for link in _LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(link)
        elif anchor and path.suffix == ".md":
            headings = re.findall(r"^#+ (.*)$", path.read_text(), flags=re.M)
            if anchor not in {_anchor(h) for h in headings}:
                broken.append(link)
    assert not broken, f"{page.relative_to(ROOT)} links to what is not there: {broken}"


def test_the_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 300
    linked = {Path(link.partition("#")[0]).name for link in _LINK.findall(readme) if link.startswith("docs/")}
    assert linked == {p.name for p in DOCS.glob("*.md")}, "every page in docs/ is linked from the README"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_page_talks_about_how_the_work_went(page: Path) -> None:
    text = page.read_text()
    notes = re.findall(r"(?i)\bissue[ -]?#?\d+|#\d{1,4}\b|this session|an earlier build|lent to this project", text)
    assert not notes, f"{page.relative_to(ROOT)}: {notes}"


def test_the_sweep_page_search_space_parses() -> None:
    """The space.toml shown in docs/sweep.md is one that ``ignite-mlp sweep --space`` accepts."""
    import tomllib

    from ignite_mlp.sweep.space import parse_space

    blocks = re.findall(r"```toml\n(.*?)```", (DOCS / "sweep.md").read_text(), re.S)
    assert blocks, "docs/sweep.md shows no space.toml"
    for block in blocks:
        space = parse_space(tomllib.loads(block), "docs/sweep.md")
        assert space.params, "the example searches nothing"
