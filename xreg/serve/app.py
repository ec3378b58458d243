"""``create_app``: the FastAPI app over one sorted folder (a thin skin, as the CLI is).

Routes parse, call the library (:mod:`xreg.registry.browse`,
:mod:`xreg.registry.reviews`, :mod:`xreg.sort.relocate`,
:mod:`xreg.serve.uploads`) and render a server-side template; every GET page
is also JSON with ``?format=json``. No route writes SQL or places a file.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from xreg import __version__
from xreg.model.checkpoint import LoadedModel, default_weights, load_checkpoint
from xreg.registry import Registry
from xreg.serve.config import ServeConfig
from xreg.serve.security import Gate, check_csrf
from xreg.serve.uploads import Analyser, UploadStore

__all__ = ["AppState", "create_app"]

_SHA = 64


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


def create_app(config: ServeConfig, *, loaded: LoadedModel | None = None,
               heatmaps: bool = True) -> Any:
    """The web app for ``config``; ``loaded`` skips loading the classifier again."""
    from xreg.serve import routes_browse, routes_review, routes_upload

    model = loaded or load_checkpoint(config.weights or default_weights())
    if not config.read_only:
        with Registry(config.registry_path):  # create or migrate once, up front
            pass
    elif config.registry_path.exists():
        Registry(config.registry_path, readonly=True).close()  # says if it needs an upgrade
    store = UploadStore()
    files = resources.files("xreg.serve")
    templates = Jinja2Templates(directory=str(files / "templates"))
    templates.env.filters["pct"] = lambda v: "" if v is None else f"{100 * float(v):.1f}%"
    templates.env.filters["prob"] = lambda v: "" if v is None else f"{float(v):.3f}"

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            store.close()

    app = FastAPI(title="xreg", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.xreg = AppState(config, model, store,
                              Analyser(model, store, hip_weights=config.hip_weights,
                                       heatmaps=heatmaps), templates)
    app.mount("/static", StaticFiles(directory=str(files / "static")), name="static")
    for module in (routes_browse, routes_review, routes_upload):
        app.include_router(module.router)

    @app.exception_handler(HTTPException)
    async def _error(request: Request, exc: HTTPException) -> Response:
        wants_json = (request.query_params.get("format") == "json"
                      or "application/json" in request.headers.get("accept", ""))
        if wants_json:
            return JSONResponse({"error": exc.detail}, exc.status_code)
        body = app.state.xreg.templates.get_template("message.html").render(
            title=f"{exc.status_code}", message=exc.detail, read_only=config.read_only,
            reviewer=None, version=__version__, model_name=model.card.name)
        return HTMLResponse(body, exc.status_code)

    return Gate(app, config)


def asgi_app(gate: Any) -> FastAPI:
    """The FastAPI app inside the gate (for tests that look at its state)."""
    inner: FastAPI = gate.app
    return inner


def out_path(config: ServeConfig, rel: str) -> Path:
    """A registry-recorded path under OUT; refuse anything that could escape it.

    Not resolved: a ``--mode link`` placement is a symlink out of OUT by design.
    """
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or any(p in ("..", ".") for p in parts):
        raise HTTPException(404, "no such file")
    return config.out_root / rel
