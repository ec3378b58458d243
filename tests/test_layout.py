"""The package's shape: stage packages, few loose modules, no import cycles in serve."""

from __future__ import annotations

import ast
import re
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


def test_every_path_named_in_the_architecture_page_exists() -> None:
    # `xreg/sort/placement.py`-style paths, and bare `runner.py` names in the layout table.
    repo = PACKAGE.parent
    text = (repo / "docs" / "architecture.md").read_text(encoding="utf-8")
    spans = re.findall(r"`([^`\s]+)`", text)
    paths = [s for s in spans if re.fullmatch(
        r"(xreg|tests|docs|configs|scripts|benchmarks)/[\w./-]*", s)]
    names = [s for s in spans if re.fullmatch(r"\w+\.py", s)]
    assert len(paths) > 30, "the page names fewer paths than expected: did the regex break?"
    missing = [p for p in paths if not (repo / p).exists()]
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"
    known = {p.name for root in ("xreg", "tests") for p in (repo / root).rglob("*.py")}
    gone = sorted(set(names) - known)
    assert not gone, f"docs/architecture.md names modules that do not exist: {gone}"
