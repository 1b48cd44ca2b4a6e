"""The package's shape: core knows no Dagster, and no two modules import each other, even through others."""

from __future__ import annotations

import ast
from pathlib import Path

import receipt_pipeline

PACKAGE = Path(receipt_pipeline.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Modules ``path`` imports, those inside functions too (deferred, they still make two modules depend on
    each other). ``from package import module`` counts as the module."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & set(MODULES)
            imported |= submodules or {node.module}
    return imported


def _graph() -> dict[str, set[str]]:
    return {name: {m for m in _imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def test_core_has_no_dagster_import():
    core = [path for path in (PACKAGE / "core").rglob("*.py")]
    dagster = {
        str(path.relative_to(PACKAGE)): sorted(m for m in _imports(path) if m.split(".")[0] == "dagster")
        for path in core
    }
    assert len(core) > 20 and {path: found for path, found in dagster.items() if found} == {}


def test_no_import_circle():
    graph = _graph()
    assert graph["receipt_pipeline.core.training"] >= {"receipt_pipeline.core.checkpoint_store"}

    def circle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for following in graph.get(node, ()):
                if following == start:
                    return [*path, start]
                if following not in seen:
                    seen.add(following)
                    stack.append((following, [*path, following]))
        return None

    circles = [circle for name in graph if (circle := circle_from(name))]
    assert circles == []
