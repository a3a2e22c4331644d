"""The package's layers point one way: read from the source (``ast``), without importing anything.

- ``functional`` never imports Lightning, nor any other part of the package but ``_checks``;
- nothing below the top-level facade imports ``callbacks`` (the Lightning side sits on top);
- the parts of the package (subpackages and top-level modules) import each other without cycles;
- no module imports a private name or a private module of another part (``functional._model`` from
  ``callbacks``, ``report._STYLE`` from ``compare``); the top-level private helpers every part shares
  (``_checks``) are the exception, by design.

:data:`KNOWN` lists the private cross-part imports that exist while issue #26 (item 3: ``functional/_model.py``
split by concern, one figure stack) is under way; a new one fails, and so does an entry that no longer exists
(delete it).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "lightning_sensitivity"
ROOT = REPO / PACKAGE
SHARED = {"_checks"}  # top-level private modules every part may import
FUNCTIONAL_MAY_IMPORT = {"functional", "_checks"}
KNOWN: set[tuple[str, str]] = {
    ("lightning_sensitivity.report", "lightning_sensitivity._report_figures.BUILDERS"),
    ("lightning_sensitivity.report", "lightning_sensitivity._report_figures.Entry"),
    ("lightning_sensitivity.report", "lightning_sensitivity._report_figures._distance_figure"),
    ("lightning_sensitivity.report", "lightning_sensitivity._report_figures._jacobian_figures"),
    ("lightning_sensitivity.report", "lightning_sensitivity._report_figures._new_figure"),
    ("lightning_sensitivity.report", "lightning_sensitivity._report_figures._stiffness_figures"),
    ("lightning_sensitivity.report", "lightning_sensitivity._report_figures._transition_figures"),
    ("lightning_sensitivity.callbacks.base", "lightning_sensitivity.functional._model.check_measure_dtype"),
    ("lightning_sensitivity.callbacks.base", "lightning_sensitivity.functional._model.check_output_key"),
    ("lightning_sensitivity.callbacks._loop", "lightning_sensitivity.functional._model.unwrap_model"),
    ("lightning_sensitivity.callbacks._model", "lightning_sensitivity.functional._model.unwrap_model"),
    ("lightning_sensitivity.compare.page", "lightning_sensitivity.report._new_figure"),
    ("lightning_sensitivity.compare.page", "lightning_sensitivity.report._STYLE"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> list[tuple[str, str]]:
    """``(importing module, imported dotted name)`` for every import in the package, relative ones resolved;
    ``from a import b`` gives ``a.b``."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        module = _module_name(path)
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found += [(module, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                found += [(module, f"{base}.{alias.name}") for alias in node.names if alias.name != "*"]
    return found


def _part(dotted: str) -> str:
    """The part of the package a dotted name belongs to: its subpackage or top-level module (``""``: the facade)."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else ""


def _is_part(name: str) -> bool:
    return (ROOT / name).is_dir() or (ROOT / f"{name}.py").is_file()


def _internal() -> list[tuple[str, str, str, str]]:
    """``(module, imported, its part, the imported part)`` for the imports of the package by itself; a name
    imported from the facade (``from lightning_sensitivity import keys``) counts as the part it names."""
    rows = []
    for module, imported in _imports():
        if imported.split(".")[0] != PACKAGE:
            continue
        target = _part(imported)
        if target and not _is_part(target):  # a name the facade re-exports, not a part
            target = ""
        rows.append((module, imported, _part(module), target))
    return rows


def test_functional_imports_neither_lightning_nor_the_rest_of_the_package():
    lightning = [(m, i) for m, i in _imports() if _part(m) == "functional" and i.split(".")[0] == "lightning"]
    assert lightning == []
    outside = [(m, i) for m, i, src, dst in _internal() if src == "functional" and dst not in FUNCTIONAL_MAY_IMPORT]
    assert outside == []


def test_only_the_facade_imports_the_callbacks():
    assert [(m, i) for m, i, src, dst in _internal() if dst == "callbacks" and src not in ("", "callbacks")] == []


def test_the_parts_import_each_other_without_cycles():
    graph: dict[str, set[str]] = defaultdict(set)
    for _, _, src, dst in _internal():
        if src and dst and src != dst:  # the facade re-exports everything: it is above every part
            graph[src].add(dst)
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif len(path) < len(graph) + 1:
                visit(nxt, [*path, nxt])

    for start in sorted(graph):
        visit(start, [start])
    assert cycles == [], f"import cycles between parts of the package: {cycles}"


def test_no_private_imports_across_parts():
    private = set()
    for module, imported, src, dst in _internal():
        if src == dst or not dst:
            continue
        below_part = imported.split(".")[2:]  # what is imported from the part: modules, then a name
        private_part = dst.startswith("_") and dst not in SHARED
        if private_part or any(s.startswith("_") and not s.startswith("__") for s in below_part):
            private.add((module, imported))
    new, gone = sorted(private - KNOWN), sorted(KNOWN - private)
    assert new == [], f"private names imported from another part of the package (use or add a public name): {new}"
    assert gone == [], f"fixed: delete these from KNOWN in tests/test_layers.py: {gone}"
