"""The package's shape: stage packages, few loose modules, no import cycles in serve."""

from __future__ import annotations

import ast
from pathlib import Path

import xreg

PACKAGE = Path(xreg.__file__).parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_no_route_module_imports_the_app() -> None:
    routes = sorted((PACKAGE / "serve").glob("routes_*.py"))
    assert routes, "no route modules found"
    for path in routes + [PACKAGE / "serve" / "deps.py"]:
        assert "xreg.serve.app" not in _imports(path), f"{path.name} imports xreg.serve.app"


def test_hip_and_explain_are_packages_and_the_old_modules_are_gone() -> None:
    for package, modules in {"hip": ("pairing", "run"),
                             "explain": ("saliency", "heatmaps")}.items():
        assert (PACKAGE / package / "__init__.py").is_file()
        for module in modules:
            assert (PACKAGE / package / f"{module}.py").is_file()
    for loose in ("hip.py", "pairing.py", "explain.py", "heatmaps.py"):
        assert not (PACKAGE / loose).exists(), f"xreg/{loose} should live in a package now"
