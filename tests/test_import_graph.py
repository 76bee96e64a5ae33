"""qlib_hist's modules import each other without a circle.

The graph is read from the source with ``ast``: an edge for every import a module makes when it is imported,
i.e. outside functions and classes (``if TYPE_CHECKING:`` blocks count: they are module level and they are the
usual way a circle hides). ``from .a import b`` is an edge to ``a`` (and to ``a.b`` when that is a module). A
package's ``__init__`` that a submodule import runs first is not an edge: the package is already importing.
Imports inside functions (lazy, such as :mod:`qlib_hist.explain`'s ``__getattr__`` that hands over the qrun
record) are not counted there; a second check counts them too, so that a lazy import cannot close a circle either
(``explain -> qlib_edge.record -> explain_report -> explain`` was one).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

import qlib_hist

PACKAGE = Path(qlib_hist.__file__).parent
ROOT_NAME = "qlib_hist"


def module_files() -> Dict[str, Path]:
    """Module name -> its file, for every module of the package."""
    files = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _module_level_imports(tree: ast.Module) -> List[ast.stmt]:
    """The import statements run when the module is imported: outside functions and classes."""
    found: List[ast.stmt] = []

    def visit(body: List[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            else:
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(node, field, None) or [])
                for handler in getattr(node, "handlers", None) or []:
                    visit(handler.body)

    visit(tree.body)
    return found


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> Optional[str]:
    if not node.level:
        return node.module
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _all_imports(tree: ast.Module) -> List[ast.stmt]:
    """Every import statement, functions' included."""
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def import_graph(lazy: bool = False) -> Dict[str, Set[str]]:
    """Module -> the package's modules it imports at module level (``lazy``: anywhere, functions included)."""
    files = module_files()
    graph: Dict[str, Set[str]] = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        edges: Set[str] = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in _all_imports(tree) if lazy else _module_level_imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                source = _absolute(module, is_package, node)
                if source is None:
                    continue
                targets = [source] + [f"{source}.{alias.name}" for alias in node.names]
            edges |= {t for t in targets if t in files and t != module}
        graph[module] = edges
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One circle ``[a, b, ..., a]`` in ``graph``, or None (depth-first search, three colours)."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_imports_without_a_circle() -> None:
    graph = import_graph()
    assert {"qlib_hist.training", "qlib_hist.callbacks", "qlib_hist.qlib_edge.record"} <= set(graph)
    assert "qlib_hist.callbacks" in graph["qlib_hist.training"]  # the graph sees relative imports
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_no_circle_either_with_the_lazy_imports() -> None:
    graph = import_graph(lazy=True)
    assert "qlib_hist.qlib_edge.record" in graph["qlib_hist.explain"]  # explain's __getattr__ hands the record over
    assert "qlib_hist.qlib_edge.record" in graph["qlib_hist"]  # and so does the package's, where YAMLs name it
    cycle = find_cycle(graph)
    assert cycle is None, "import circle through a lazy import: " + " -> ".join(cycle or [])


def test_the_circle_finder_finds_circles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_type_checking_imports_count(tmp_path) -> None:
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .training import Trainer\n")
    names = [n.module for n in _module_level_imports(tree) if isinstance(n, ast.ImportFrom)]
    assert names == ["typing", "training"]
    lazy = ast.parse("def f():\n    from .qlib_edge.record import HISTExplainRecord\n")
    assert _module_level_imports(lazy) == []
