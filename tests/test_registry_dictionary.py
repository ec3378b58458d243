"""docs/registry.md describes every table, view and column of a fresh registry."""

from __future__ import annotations

import re
from pathlib import Path

from xreg.registry import SCHEMA_VERSION, Registry

DOC = Path(__file__).resolve().parents[1] / "docs" / "registry.md"
_HEADING = re.compile(r"^###\s+(table|view)\s+`([a-z_0-9]+)`\s*$")
_ROW = re.compile(r"^\|\s*`([a-z_0-9]+)`\s*\|(.+)\|\s*$")


def documented(text: str) -> dict[tuple[str, str], dict[str, list[str]]]:
    """(kind, name) -> column -> its other cells, from the markdown tables."""
    found: dict[tuple[str, str], dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in text.splitlines():
        heading = _HEADING.match(line)
        if heading:
            current = found.setdefault((heading[1], heading[2]), {})
        elif line.startswith("#"):
            current = None
        elif current is not None and (row := _ROW.match(line)):
            current[row[1]] = [c.strip() for c in re.split(r"(?<!\\)\|", row[2])]
    return found


def test_every_table_view_and_column_is_described(tmp_path: Path) -> None:
    docs = documented(DOC.read_text(encoding="utf-8"))
    missing = []
    with Registry(tmp_path / "registry.sqlite") as reg:
        objects = reg._db.execute("SELECT type, name FROM sqlite_master WHERE type IN"
                                  " ('table', 'view') AND name NOT LIKE 'sqlite_%'").fetchall()
        for kind, name in objects:
            columns = [r[1] for r in reg._db.execute(f"PRAGMA table_info({name})")]
            described = docs.get((kind, name))
            if described is None:
                missing.append(f"{kind} {name}")
                continue
            missing += [f"{name}.{c}" for c in columns if c not in described]
            for column in columns:
                cells = described.get(column, ["", "", str(SCHEMA_VERSION)])
                since = cells[-1]
                assert since.isdigit() and 1 <= int(since) <= SCHEMA_VERSION, (name, column)
                assert cells[0], f"{name}.{column} has no meaning"
    assert not missing, f"docs/registry.md does not describe: {', '.join(missing)}"
    assert len(objects) >= 7


def test_the_parser_notices_a_missing_column() -> None:
    text = "### table `t`\n| column | meaning | values | since |\n|---|---|---|---|\n" \
           "| `a` | one | 1 | 1 |\n\n### view `v`\n| `b` | two \\| three | x | 10 |\n"
    assert documented(text) == {("table", "t"): {"a": ["one", "1", "1"]},
                                ("view", "v"): {"b": ["two \\| three", "x", "10"]}}
