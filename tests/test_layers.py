"""The package's layers point one way: its imports, read with ``ast`` (nothing is imported).

* ``functional`` imports neither Lightning nor ``callbacks``/``logging``/``models``/``report``/``compare``: only
  itself and the top-level ``_checks``;
* no cycle between the package's parts (subpackages and top-level modules; the lazy facade ``__init__`` and
  ``if TYPE_CHECKING:`` imports aside);
* no private import across parts: a ``_module`` inside a subpackage is imported only from that subpackage, and a
  ``_name`` only from its own part. The top-level ``_checks`` is the one internal module every part shares.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "lightning_sensitivity"
PACKAGE = ROOT.name
# The leaves every part may import: argument checks, and the names (keys imports nothing of ours at import time;
# it gathers the quantities' declarations from functional when first read).
SHARED = {f"{PACKAGE}._checks", f"{PACKAGE}.keys"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str) -> list[tuple[str, str | None, int]]:
    """``(imported module, imported name or None, line)`` for every import of ``module``, at any depth."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, str | None, int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, None, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    target = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    target = child.module or ""
                for alias in child.names:
                    # `from pkg import submodule` imports the submodule
                    sub = f"{target}.{alias.name}"
                    found.append((sub, None, child.lineno) if sub in MODULES else (target, alias.name, child.lineno))
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _part(module: str) -> str:
    """The part of the package a module belongs to: its subpackage, or itself for a top-level module."""
    return ".".join(module.split(".")[:2])


def _ours(target: str) -> bool:
    return target == PACKAGE or target.startswith(PACKAGE + ".")


def test_the_walk_sees_the_package():
    assert f"{PACKAGE}.functional.jacobian" in MODULES and f"{PACKAGE}.callbacks.base" in MODULES
    assert any(t == f"{PACKAGE}.functional" for t, _, _ in _imports(f"{PACKAGE}.callbacks.base"))


def test_functional_imports_no_lightning_and_nothing_above_it():
    allowed = {f"{PACKAGE}.functional", *SHARED}
    bad = []
    for module in (m for m in MODULES if _part(m) == f"{PACKAGE}.functional"):
        for target, _, line in _imports(module):
            if target.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric"):
                bad.append(f"{module}:{line} imports {target}")
            elif _ours(target) and _part(target) not in allowed and target not in allowed:
                bad.append(f"{module}:{line} imports {target}")
    assert not bad, "functional must stay pure torch:\n" + "\n".join(bad)


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        if module == PACKAGE:  # the lazy facade (`lightning_sensitivity.JacobianNormMonitor`)
            continue
        for target, _, _ in _imports(module):
            if _ours(target) and target != PACKAGE and _part(target) != _part(module):
                graph.setdefault(_part(module), set()).add(_part(target))
    return graph


def test_no_cycle_between_parts():
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt] if nxt in path else [*path, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles between parts of the package: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_private_import_across_parts():
    bad = []
    for module in MODULES:
        for target, name, line in _imports(module):
            if not _ours(target) or target in SHARED:
                continue
            if _part(target) == _part(module):
                continue
            private_module = any(p.startswith("_") and not p.startswith("__") for p in target.split(".")[1:])
            private_name = name is not None and name.startswith("_") and not name.startswith("__")
            if private_module or private_name:
                what = f"{target}.{name}" if name else target
                bad.append(f"{module}:{line} imports {what}")
    assert not bad, "private imports across parts (give the name a public home):\n" + "\n".join(bad)


def test_only_the_facade_imports_the_callbacks():
    """The Lightning glue sits on top: no other part (functional, logging, probes, report, ...) imports it."""
    callbacks = f"{PACKAGE}.callbacks"
    bad = [
        f"{module}:{line} imports {target}"
        for module in MODULES
        if module != PACKAGE and _part(module) != callbacks
        for target, _, line in _imports(module)
        if _part(target) == callbacks
    ]
    assert not bad, "only lightning_sensitivity/__init__.py may import callbacks:\n" + "\n".join(bad)
