"""The registry browser: counts and a chart, the gallery, one image's page and pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from xreg.registry.browse import choices, counts, gallery, image_detail, parse_filter, placed_path
from xreg.serve.deps import Label, Page, out_path, render, state, valid_sha
from xreg.serve.thumbs import thumbnail

router = APIRouter()

#: A yes/no gallery filter: 1, 0 or its label; empty or ``unknown`` (the overview's
#: chart links to it) for any.
_Flag = Literal["", "0", "1", "unknown"]

_IMAGE_CACHE = {"Cache-Control": "private, max-age=3600"}
_SIZES = {"thumb": 256, "preview": 768}


def bars(groups: dict[str, int]) -> list[dict[str, Any]]:
    """Rows of a horizontal bar chart: label, count, bar length in [0, 100]."""
    top = max(groups.values(), default=0) or 1
    return [{"label": k, "count": v, "length": round(100 * v / top, 1)}
            for k, v in sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))]


@router.get("/")
def overview(request: Request) -> Response:
    current = state(request)
    if not current.config.registry_path.exists():
        return render(request, "overview.html", {"counts": {}, "charts": {}, "total": 0})
    with current.registry() as reg:
        groups = counts(reg)
        runs = reg.runs()[-5:]
    total = sum(groups.get("status", {}).values())
    charts = {name: bars(values) for name, values in groups.items()}
    recent = [{"id": r["id"], "started": r["started"], "status": r["status"],
               "model_name": r["model_name"], "model_sha256": r["model_sha256"],
               "input_root": r["input_root"]} for r in reversed(runs)]
    return render(request, "overview.html",
                  {"counts": groups, "charts": charts, "total": total, "runs": recent})


@router.get("/gallery")
def gallery_page(request: Request, page: Page = 1, status: Label = "", body_part: Label = "",
                 scope: Label = "",
                 instrument: _Flag | Literal["instrument", "no_instrument"] = "",
                 fracture: _Flag | Literal["fracture", "no_fracture"] = "",
                 reviewed: Literal["", "yes", "no"] = "") -> Response:
    query = {"status": status, "body_part": body_part, "scope": scope,
             "instrument": instrument, "fracture": fracture, "reviewed": reviewed}
    where = parse_filter(query)
    with state(request).registry() as reg:
        found = gallery(reg, where, page=page)
        values = choices(reg)
    keep = {k: v for k, v in query.items() if v}
    return render(request, "gallery.html", {
        "items": found.items, "total": found.total, "page": found.page,
        "pages": found.pages, "filters": keep, "choices": values})


@router.get("/image/{sha}")
def image_page(request: Request, sha: str) -> Response:
    with state(request).registry() as reg:
        detail = image_detail(reg, valid_sha(sha))
    if detail is None:
        raise HTTPException(404, "no such image")
    return render(request, "image.html", {"image": detail,
                                          "body_parts": state(request).body_parts})


def _film(request: Request, dest: str | None) -> Path:
    """The placed film at registry path ``dest``; 404 when there is none."""
    if dest is None:
        raise HTTPException(404, "no such image")
    film = out_path(state(request).config, dest)
    if not film.exists():
        raise HTTPException(404, "the film is not at its recorded place")
    return film


def _placed_file(request: Request, sha: str) -> Path:
    with state(request).registry() as reg:
        return _film(request, placed_path(reg, valid_sha(sha)))


def _cached(request: Request, path: Path, media_type: str) -> Response:
    """The file, or 304 when the browser's copy (by ETag) is current."""
    st = path.stat()
    headers = {**_IMAGE_CACHE, "ETag": f'"{st.st_mtime_ns:x}-{st.st_size:x}"'}
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type=media_type, headers=headers)


@router.get("/image/{sha}/{kind}.jpg")
def image_picture(request: Request, sha: str, kind: str) -> Response:
    if kind not in _SIZES:
        raise HTTPException(404, "no such picture")
    film = _placed_file(request, sha)
    made = thumbnail(state(request).config.out_root, film, sha, _SIZES[kind])
    if isinstance(made, str):
        raise HTTPException(404, f"no picture: {made}")
    return _cached(request, made, "image/jpeg")


@router.get("/image/{sha}/heatmap.png")
def image_heatmap(request: Request, sha: str) -> Response:
    """The body-part overlay: the one recorded, else drawn now and kept in ``_heatmaps``."""
    from xreg.explain.heatmaps import HEATMAP_DIR

    current = state(request)
    with current.registry() as reg:
        detail = image_detail(reg, valid_sha(sha))
    film = _film(request, detail["dest_path"] if detail else None)
    assert detail is not None
    rel = detail["heatmap_path"] or f"{HEATMAP_DIR}/{sha[:2]}/{sha[:16]}_body_part.png"
    target = out_path(current.config, rel)
    if not target.is_file():
        why = current.analyser.explain_placed(film, target)
        if why is not None:
            raise HTTPException(404, f"no heatmap: {why}")
        if not current.config.read_only and detail["heatmap_path"] is None:
            with current.writable_registry() as reg:
                reg.set_heatmap(sha, rel)
    return _cached(request, target, "image/png")


@router.get("/favicon.ico")
def favicon() -> Response:
    return RedirectResponse("/static/favicon.svg", status_code=308)
