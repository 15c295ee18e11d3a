"""The package's import graph: no module of ``phototag`` imports itself back through others (no circles), and FastAPI
stays inside ``phototag.serve.app``.

Every ``import`` / ``from ... import`` inside ``src/phototag`` counts, also those inside functions (a lazy import
still ties two modules together) and under ``TYPE_CHECKING`` is left out (it never runs). The graph is read with
:mod:`ast`, so nothing is imported to check it.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "phototag"


def module_name(path: Path) -> str:
    parts = ("phototag", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of the statements under ``if TYPE_CHECKING:`` (imports there never run)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    return skipped


def imported_modules(path: Path, modules: set[str]) -> dict[str, int]:
    """The phototag modules ``path`` imports (resolved to the modules that exist), with the line of each."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = _type_checking_blocks(tree)
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        while target and target not in modules:  # `from .x import name`: name may be a function, not a module
            target = target.rpartition(".")[0]
        if target and target != name:
            found.setdefault(target, line)

    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "phototag":
                    add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "phototag":
                prefix = node.module
            else:
                continue
            for alias in node.names:
                target = f"{prefix}.{alias.name}"
                add(target if target in modules else prefix, node.lineno)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported phototag module: line of the import}.

    An import of a package's ``__init__`` by one of its own modules is left out: it is Python's loading order, not a
    dependency (a submodule is always imported through its package).
    """
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    graph = {}
    for file in files:
        name = module_name(file)
        graph[name] = {t: line for t, line in imported_modules(file, modules).items() if not name.startswith(t + ".")}
    return graph


def find_circle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import circle (``[a, b, ..., a]``), or ``None`` (stdlib :mod:`graphlib` does the search)."""
    try:
        graphlib.TopologicalSorter({k: set(v) for k, v in graph.items()}).prepare()
    except graphlib.CycleError as err:
        return list(reversed(err.args[1]))
    return None


def test_the_import_graph_is_read():
    graph = import_graph()
    assert "phototag.serve.batching" in graph["phototag.serve.app"]
    assert "phototag.serve.app" in graph["phototag.serve.run"]  # a lazy import inside create_app counts
    assert "phototag.model" not in graph["phototag.serve.uploads"]  # only under TYPE_CHECKING
    assert "phototag.serve" not in graph["phototag.serve.run"]  # its own package's __init__
    assert len(graph) > 40
    assert find_circle({"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}}) in (
        ["a", "b", "c", "a"],
        ["b", "c", "a", "b"],
        ["c", "a", "b", "c"],
    )


def test_no_import_circles():
    graph = import_graph()
    circle = find_circle(graph)
    if circle is not None:
        where = ", ".join(f"{a} line {graph[a][b]}" for a, b in zip(circle, circle[1:], strict=False))
        pytest.fail(f"import circle in src/phototag: {' -> '.join(circle)} (imports at {where})")


@pytest.mark.parametrize("library", ["fastapi", "starlette", "uvicorn"])
def test_only_the_serve_app_imports_the_web_framework(library):
    users = []
    for file in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(file.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            if any(n.split(".")[0] == library for n in names):
                users.append(module_name(file))
    allowed = {"phototag.serve.app", "phototag.serve.run"} if library in ("uvicorn", "h11") else {"phototag.serve.app"}
    assert set(users) <= allowed, sorted(set(users))
