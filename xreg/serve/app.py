"""``create_app``: the FastAPI app over one sorted folder (a thin skin, as the CLI is).

Routes parse, call the library (:mod:`xreg.registry.browse`,
:mod:`xreg.registry.reviews`, :mod:`xreg.sort.relocate`,
:mod:`xreg.serve.uploads`) and render a server-side template; every GET page
is also JSON with ``?format=json``. No route writes SQL or places a file.
Routes take what they need from :mod:`xreg.serve.deps`, never from here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from xreg import __version__
from xreg.model.checkpoint import LoadedModel, default_weights, load_checkpoint
from xreg.registry import Registry
from xreg.serve import (
    routes_browse,
    routes_fastreview,
    routes_registry,
    routes_review,
    routes_upload,
)
from xreg.serve.config import ServeConfig
from xreg.serve.deps import AppState, page_format
from xreg.serve.security import Gate
from xreg.serve.uploads import Analyser, UploadStore

__all__ = ["AppState", "asgi_app", "create_app"]


def create_app(config: ServeConfig, *, loaded: LoadedModel | None = None,
               heatmaps: bool = True) -> Any:
    """The web app for ``config``; ``loaded`` skips loading the classifier again."""
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
    for module in (routes_browse, routes_registry, routes_review, routes_fastreview,
                   routes_upload):
        app.include_router(module.router, dependencies=[Depends(page_format)])

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

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        # Name the parameter and the rule, never echo the value back (it may be huge).
        where = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg')}"
                          for e in exc.errors()[:5])
        return await _error(request, HTTPException(422, f"invalid request: {where}"))

    return Gate(app, config)


def asgi_app(gate: Any) -> FastAPI:
    """The FastAPI app inside the gate (for tests that look at its state)."""
    inner: FastAPI = gate.app
    return inner


