"""The shape of the code: rooms whose imports run one way, no circles, no reach-ins.

Walks every module of rag/, ingest/ and web/ with `ast` (nothing is imported), so it holds
for imports inside functions and under `TYPE_CHECKING` too. The order of the rooms is the
one docs/architecture.md draws: a room may import its own modules and the rooms before it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("rag", "ingest", "web")
# Foundation first, the command line last: each room may import only the rooms before it.
ROOMS = (
    "rag",  # config, errors, records
    "rag.index",
    "rag.embed",
    "rag.models",
    "rag.llm",
    "rag.qa",
    "rag.accounts",
    "ingest",
    "rag.ops",  # the doctor checks what ingest needs (Tesseract)
    "web",
    "rag.cli",
)
# `python -m rag` starts the command line: the one arrow allowed to run up.
ENTRY_POINTS = {"rag.__main__"}
# Only the command line imports the project's modules inside functions: each command loads
# its room when it runs, so `rag --help` never imports Litestar, LanceDB or torch.
LAZY_ROOMS = {"rag.cli"}
MAX_MODULE_LINES = 450


def module_files() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


MODULES = module_files()


def room_of(module: str) -> str:
    """The longest room name that contains the module."""
    return max((r for r in ROOMS if module == r or module.startswith(r + ".")), key=len)


def imports(path: Path) -> Iterator[tuple[ast.stmt, str, list[str], bool]]:
    """(node, imported module, names, at module level) for each import of a project module."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(node) for node in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` blocks count as module level
        if isinstance(node, ast.If):
            top_level.update(id(child) for child in node.body)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in PACKAGES:
                names = [alias.name for alias in node.names]
                yield node, node.module, names, id(node) in top_level
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    yield node, alias.name, [], id(node) in top_level


def target_modules(module: str, names: list[str]) -> list[str]:
    """The project modules an import statement reaches (`from rag.index import store`)."""
    found = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
    return found or ([module] if module in MODULES else [])


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for _, module, names, _ in imports(path):
            edges[name].update(t for t in target_modules(module, names) if t != name)
    return edges


def test_every_import_names_a_module_that_exists() -> None:
    missing = [
        f"{path.relative_to(ROOT)}:{node.lineno} imports {module}"
        for path in MODULES.values()
        for node, module, names, _ in imports(path)
        if not target_modules(module, names)
    ]
    assert not missing, missing


def test_no_import_circles() -> None:
    edges = graph()
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                circles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not circles, "\n".join(circles)


def test_rooms_import_only_the_rooms_before_them() -> None:
    order = {room: i for i, room in enumerate(ROOMS)}
    upward = [
        f"{name} ({room_of(name)}) imports {target} ({room_of(target)})"
        for name, targets in graph().items()
        if name not in ENTRY_POINTS
        for target in targets
        if order[room_of(target)] > order[room_of(name)]
    ]
    assert not upward, "\n".join(sorted(upward))


def test_no_module_imports_another_modules_private_names() -> None:
    private = [
        f"{path.relative_to(ROOT)}:{node.lineno} imports {module}.{n}"
        for path in MODULES.values()
        for node, module, names, _ in imports(path)
        for n in names
        if n.startswith("_") and not n.endswith("__")  # `__version__` is public
    ]
    assert not private, "\n".join(private)


def test_project_modules_are_imported_at_module_level() -> None:
    hidden = [
        f"{path.relative_to(ROOT)}:{node.lineno} imports {module} inside a function"
        for name, path in MODULES.items()
        if room_of(name) not in LAZY_ROOMS
        for node, module, _, top in imports(path)
        if not top
    ]
    assert not hidden, "\n".join(hidden)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_small(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines < MAX_MODULE_LINES, f"{MODULES[name].relative_to(ROOT)} has {lines} lines"


def test_subpackage_inits_are_empty() -> None:
    written = [p for p in ROOT.glob("rag/*/__init__.py") if p.read_text().strip()]
    assert not written, written
