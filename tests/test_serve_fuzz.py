"""Every query and path parameter of every GET page, sent hostile values: never a 5xx.

The routes and their parameters are read from the FastAPI app itself (its
OpenAPI description, which FastAPI derives from each route's dependant,
router-level dependencies such as ``format`` included),
so a page added later is fuzzed without touching this file. Each value goes
in both as a page and as ``?format=json``. A bad value must answer 4xx (or
be harmlessly ignored); the registry file must not change by a byte.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest

pytest.importorskip("fastapi", reason='xreg serve needs pip install "xreg[serve]"')

from fastapi.testclient import TestClient  # noqa: E402

from tests.test_serve_registry import patient_keys, serve, sort_patients  # noqa: E402
from xreg.serve.app import asgi_app  # noqa: E402

HOSTILE = (
    "99999999999999999999", "-99999999999999999999", "9" * 400, "-1", "0", "1.5", "1e309",
    "nan", "inf", "abc", "", " ", "x" * 5000, "' OR 1=1 --", "1; DROP TABLE images; --",
    "%00", "\x00", "..", "../../../etc/passwd", "unknown_value", "ünïcødé", "<script>",
    "0x10", "true", "null", "[]",
)


@dataclass(frozen=True)
class Page:
    """One GET route and the names of its query and path parameters."""

    path: str
    query: tuple[str, ...]
    path_params: tuple[str, ...]

    def url(self, path_values: dict[str, str], query: dict[str, str]) -> str:
        url = self.path
        for name, value in path_values.items():
            url = url.replace("{" + name + "}", quote(value, safe=""))
        return url + ("?" + urlencode(query) if query else "")


def get_pages(gate: Any) -> list[Page]:
    """Every GET route of the app inside ``gate``, with its parameters.

    Read through FastAPI's own OpenAPI generator over ``app.routes``: it walks
    each route's dependant (signature, ``Depends``, router-level dependencies
    such as ``format``), which ``APIRoute`` objects alone no longer show once
    routers are included (FastAPI wraps them).
    """
    from fastapi.openapi.utils import get_openapi

    app = asgi_app(gate)
    spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
    pages = []
    for path, operations in spec["paths"].items():
        if "get" not in operations:
            continue
        params = operations["get"].get("parameters", [])
        pages.append(Page(path, tuple(p["name"] for p in params if p["in"] == "query"),
                          tuple(p["name"] for p in params if p["in"] == "path")))
    return pages


def _fingerprint(registry: Path) -> tuple[str, list[str]]:
    """The file's bytes, and its rows (a write still in the WAL shows in the dump)."""
    digest = hashlib.sha256(registry.read_bytes()).hexdigest()
    db = sqlite3.connect(f"file:{registry}?mode=ro", uri=True)
    try:
        return digest, list(db.iterdump())
    finally:
        db.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    out, weights = sort_patients(tmp_path_factory.mktemp("fuzz"))
    for client in serve(out, weights, raise_errors=False):  # a 500 is an answer here
        yield client, out


def good_path_values(out: Path) -> dict[str, str]:
    """A value per path parameter name that names something real, where we know one."""
    db = sqlite3.connect(out / "registry.sqlite")
    try:
        sha = str(db.execute("SELECT sha256 FROM images WHERE state = 'done'").fetchone()[0])
    finally:
        db.close()
    key = next(iter(patient_keys(out).values()))
    return {"sha": sha, "kind": "thumb", "key": key}


def _check(client: TestClient, url: str, failures: list[str]) -> None:
    answer = client.get(url)
    if answer.status_code >= 500:
        failures.append(f"{answer.status_code} {url[:160]}")


def test_the_gallery_page_bug_is_a_422(served: tuple[TestClient, Path]) -> None:
    client, _ = served
    assert client.get("/gallery?page=99999999999999999999").status_code == 422
    assert client.get("/review?page=99999999999999999999").status_code == 422
    answer = client.get("/gallery?page=-3&format=json")
    assert answer.status_code == 422 and "page" in answer.json()["error"]
    assert client.get("/gallery?page=2").status_code == 200  # a real page number still works


def test_every_get_parameter_survives_hostile_values(served: tuple[TestClient, Path]) -> None:
    client, out = served
    registry = out / "registry.sqlite"
    good = good_path_values(out)
    pages = get_pages(client.gate)  # type: ignore[attr-defined]
    # The enumeration itself must work, or the loop below proves nothing.
    assert {"/", "/gallery", "/image/{sha}", "/review"} <= {p.path for p in pages}
    failures: list[str] = []
    for page in pages:  # a plain visit first: it may cache (the heatmap page records one)
        _check(client, page.url({n: good.get(n, "x") for n in page.path_params}, {}), failures)
    before = _fingerprint(registry)
    fuzzed: set[tuple[str, str]] = set()
    for page in pages:
        defaults = {n: good.get(n, "x") for n in page.path_params}
        for name in page.query:
            fuzzed.add((page.path, name))
            for value in HOSTILE:
                for fmt in ({}, {"format": "json"}):
                    _check(client, page.url(defaults, {**fmt, name: value}), failures)
        for name in page.path_params:
            fuzzed.add((page.path, "{" + name + "}"))
            for value in HOSTILE:
                if value in ("", ".."):  # another route, or a path the client normalises
                    continue
                for fmt in ({}, {"format": "json"}):
                    _check(client, page.url({**defaults, name: value}, fmt), failures)
    assert not failures, "\n".join(failures[:40])
    assert {("/gallery", "page"), ("/gallery", "format"), ("/review", "page"),
            ("/image/{sha}", "{sha}"), ("/patients", "since"), ("/studies", "body_part"),
            ("/patient/{key}", "{key}")} <= fuzzed
    assert _fingerprint(registry) == before


def test_unknown_enum_values_are_refused_not_ignored(served: tuple[TestClient, Path]) -> None:
    client, _ = served
    for url in ("/gallery?reviewed=maybe", "/gallery?instrument=2", "/?format=xml",
                "/gallery?status=" + quote("' OR 1=1 --"), "/gallery?body_part=" + "a" * 500):
        answer = client.get(url)
        assert answer.status_code == 422, url
        assert "<script" not in answer.text and "OR 1=1" not in answer.text
    # Known values still filter: nothing is "fracture" among the knee films.
    knee = client.get("/gallery?body_part=knee&fracture=1&format=json").json()
    assert knee["total"] == 0
    hand = client.get("/gallery?body_part=hand&fracture=fracture&format=json").json()
    assert hand["total"] == 2 and all(re.fullmatch(r"[0-9a-f]{64}", i["sha256"])
                                      for i in hand["items"])
