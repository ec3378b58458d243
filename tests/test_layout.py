"""The package's shape (stage packages, few loose modules, no import cycles in serve) and
its documentation's: the paths the pages name exist, every relative link resolves, and
the README's front page names the quick start and commands that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from urllib.parse import unquote

import pytest
import typer

import xreg
from xreg.cli import app

PACKAGE = Path(xreg.__file__).parent
REPO = PACKAGE.parent


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


_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)


def _prose(text: str) -> str:
    """The Markdown without fenced code blocks and inline code: what can hold links."""
    return re.sub(r"`[^`\n]*`", "", _FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: rendered text, lower case, punctuation dropped."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors: set[str] = set()
    for match in re.finditer(r"^#{1,6}[ \t]+(.+?)[ \t#]*$",
                             _FENCE.sub("", path.read_text(encoding="utf-8")), re.MULTILINE):
        slug = _slug(match.group(1))
        # GitHub numbers repeated headings: slug, slug-1, slug-2, ...
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


@pytest.mark.parametrize(("heading", "slug"), [
    ("Heatmaps: `xreg explain`, `--heatmaps`", "heatmaps-xreg-explain---heatmaps"),
    ("Exit codes (for cron)", "exit-codes-for-cron"),
    ("Every hospital, not one: sites, site augmentation, leave-one-site-out",
     "every-hospital-not-one-sites-site-augmentation-leave-one-site-out"),
    ("What `xreg sort` guarantees", "what-xreg-sort-guarantees"),
])
def test_slug_is_githubs(heading: str, slug: str) -> None:
    assert _slug(heading) == slug


def test_every_relative_link_in_the_readme_and_docs_resolves() -> None:
    # Files (and images) must exist; a #anchor must be a heading of the target page.
    # http(s) and mailto links are not checked.
    broken: list[str] = []
    checked = 0
    for page in _pages():
        for target in re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)",
                                 _prose(page.read_text(encoding="utf-8"))):
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
                continue
            checked += 1
            file, _, anchor = unquote(target).partition("#")
            dest = (page.parent / file).resolve() if file else page
            where = f"{page.relative_to(REPO)}: ({target})"
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif anchor and (dest.suffix != ".md" or anchor not in _anchors(dest)):
                broken.append(f"{where}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert checked > 40, f"only {checked} relative links found: did the regex break?"
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_quick_start_is_the_two_make_targets() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block, "the quick start has no sh block"
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert [c for c in commands if c] == ["make demo", "make test"]
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), f"no `make {target}`"


def test_every_command_in_the_readme_table_exists() -> None:
    # Rows like `xreg sort IN OUT` or `xreg registry stats\|runs OUT`: the command, and
    # for a group each subcommand named, must be registered in the CLI.
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Commands", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `xreg ([^`]+)`", section, re.MULTILINE)
    assert len(rows) >= 10, f"the commands table has only {len(rows)} rows"
    cli = typer.main.get_command(app)
    commands = cli.commands  # type: ignore[attr-defined]
    missing = []
    for row in rows:
        name, *rest = row.split()
        if name not in commands:
            missing.append(name)
        elif hasattr(commands[name], "commands") and rest:
            missing += [f"{name} {sub}" for sub in rest[0].split("\\|")
                        if sub not in commands[name].commands]
    assert not missing, f"the README names commands the CLI lacks: {missing}"
