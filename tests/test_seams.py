"""Seams between the packages: one place opens onnxruntime sessions; no module imports itself in a circle."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "onnxmbs"


def test_only_the_runtime_opens_onnxruntime_sessions():
    calls = re.compile(r"\bInferenceSession\s*\(")
    found = {str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py") if calls.search(p.read_text())}
    assert found == {"onnxmbs/runtime/session.py"}


def _modules(package: Path) -> dict[str, Path]:
    found = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (getattr(test, "id", None) == "TYPE_CHECKING"
                                         or getattr(test, "attr", None) == "TYPE_CHECKING")


def _imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, str]]:
    """(module, what it may be: ``a.b`` for ``from a import b``) of every import in ``tree``, at module level
    or inside a function (a lazy import still makes the modules depend on each other), not under TYPE_CHECKING."""
    names, todo = [], [tree]
    while todo:
        node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if _type_checking(child):
                todo.extend(child.orelse)
            elif isinstance(child, ast.Import):
                names += [(alias.name, alias.name) for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    here = module.split(".")[:len(module.split(".")) - child.level + is_package]
                    base = ".".join(here + ([base] if base else []))
                names += [(base, f"{base}.{alias.name}") for alias in child.names]
            else:
                todo.append(child)
    return names


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from a import b`` imports ``a.b`` when that is a module)."""
    modules = _modules(package)
    graph = {}
    for module, path in modules.items():
        imported = _imported(ast.parse(path.read_text()), module, path.name == "__init__.py")
        targets = {name if name in modules else base for base, name in imported}
        graph[module] = {name for name in targets if name in modules and name != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle (its modules, the first repeated at the end), or [] when there is none."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(module: str) -> list[str]:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = 2
        path.pop()
        return []

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return []


def test_no_import_circles_between_onnxmbs_modules():
    assert find_cycle(import_graph(PACKAGE)) == []


@pytest.mark.parametrize("lazy", [False, True])
def test_a_circle_is_found_whether_its_imports_are_at_module_level_or_lazy(tmp_path, lazy):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import g\n")
    importing = "def f():\n    from pkg import a\n" if lazy else "from . import a\n"
    (package / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.c\n" + importing)
    (package / "c.py").write_text("import pkg.b\n")
    graph = import_graph(package)
    assert graph["pkg.b"] == {"pkg.a"}  # the TYPE_CHECKING import of pkg.c is no dependency
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]


def test_type_checking_imports_make_no_circle(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("import pkg.b\n")
    (package / "b.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    from pkg.a import X\n")
    assert find_cycle(import_graph(package)) == []
