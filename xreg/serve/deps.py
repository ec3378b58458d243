"""What a route needs from the app, without importing the app.

:class:`AppState` (config, model, upload store, templates) hangs on
``app.state.xreg``; routes reach it with :func:`state` and answer with
:func:`render`. :mod:`xreg.serve.app` builds the state and includes the
routes; no route module imports :mod:`xreg.serve.app`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal
from urllib.parse import unquote

from fastapi import HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.templating import Jinja2Templates

from xreg import __version__
from xreg.model.checkpoint import LoadedModel
from xreg.registry import Registry
from xreg.serve.config import ServeConfig
from xreg.serve.security import check_csrf
from xreg.serve.uploads import Analyser, UploadStore

__all__ = ["MAX_PAGE", "AppState", "Label", "Page", "out_path", "page_format", "render",
           "require_csrf", "reviewer_of", "state", "valid_sha"]

_SHA = 64

#: The highest page number a pager accepts: beyond any registry's last page, and
#: far inside SQLite's 64-bit OFFSET (a bigger int is a 500 from sqlite3, not a 404).
MAX_PAGE = 1_000_000

#: A page number from the query string: 1 to :data:`MAX_PAGE`, else 422.
Page = Annotated[int, Query(ge=1, le=MAX_PAGE)]

#: A label filter (status, body part, scope): lower-case words, short, or empty for any.
Label = Annotated[str, Query(max_length=40, pattern=r"^[a-z0-9_]*$")]


def page_format(fmt: Annotated[Literal["html", "json"], Query(alias="format")] = "html",
                ) -> None:
    """Refuse ``?format=`` values other than html and json (422), on every route.

    :func:`render` reads the value itself; this dependency only validates it.
    """


@dataclass
class AppState:
    """What every request may use: the config, the model, the upload store."""

    config: ServeConfig
    loaded: LoadedModel
    store: UploadStore
    analyser: Analyser
    templates: Jinja2Templates

    @property
    def body_parts(self) -> tuple[str, ...]:
        return tuple(self.loaded.card.head("body_part").labels)

    @contextmanager
    def registry(self) -> Iterator[Registry]:
        """The registry, read-only (reading works while a sort writes: WAL)."""
        if not self.config.registry_path.exists():
            raise HTTPException(404, f"no registry yet in {self.config.out_root.name}: "
                                     "run xreg sort into it, or add an upload")
        with Registry(self.config.registry_path, readonly=True) as reg:
            yield reg

    @contextmanager
    def writable_registry(self) -> Iterator[Registry]:
        self.require_writable()
        with Registry(self.config.registry_path) as reg:
            yield reg

    def require_writable(self) -> None:
        if self.config.read_only:
            raise HTTPException(403, "this server is read-only (--read-only)")


def state(request: Request) -> AppState:
    current: AppState = request.app.state.xreg
    return current


def require_csrf(request: Request, given: str | None) -> None:
    if not check_csrf(request.state.csrf, given):
        raise HTTPException(403, "the form's CSRF token is missing or wrong; reload the page")


def valid_sha(value: str) -> str:
    """A content hash from a URL; anything else is a 404, never a path."""
    if len(value) != _SHA or any(c not in "0123456789abcdef" for c in value):
        raise HTTPException(404, "no such image")
    return value


def reviewer_of(request: Request) -> str | None:
    fixed = state(request).config.reviewer
    return fixed or unquote(request.cookies.get("xreg_reviewer", "")).strip() or None


def render(request: Request, name: str, context: dict[str, Any],
           status_code: int = 200) -> Response:
    """The template ``name``, or with ``?format=json`` the same context as JSON."""
    if request.query_params.get("format") == "json":
        return JSONResponse(_plain(context), status_code)
    current = state(request)
    page = {**context, "csrf": request.state.csrf, "read_only": current.config.read_only,
            "reviewer": reviewer_of(request), "version": __version__,
            "model_name": current.loaded.card.name}
    return current.templates.TemplateResponse(request, name, page, status_code=status_code)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "to_dict"):
        return _plain(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    return value


def out_path(config: ServeConfig, rel: str) -> Path:
    """A registry-recorded path under OUT; refuse anything that could escape it.

    Not resolved: a ``--mode link`` placement is a symlink out of OUT by design.
    """
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or any(p in ("..", ".") for p in parts):
        raise HTTPException(404, "no such file")
    return config.out_root / rel
