"""The thesis's upload app: drop films (or an AP + lateral), see what the model says."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, Response

from xreg.config import SortOptions
from xreg.errors import LockedError
from xreg.serve.deps import render, require_csrf, state, valid_sha
from xreg.serve.uploads import add_to_registry

router = APIRouter()


def _read(files: list[UploadFile], limit: int) -> list[tuple[str, bytes]]:
    if len(files) > limit:
        raise HTTPException(413, f"too many files in one upload: {len(files)} "
                                 f"(the limit is {limit})")
    return [(f.filename or "upload", f.file.read()) for f in files if f.filename or f.size]


@router.get("/upload")
def upload_page(request: Request) -> Response:
    return render(request, "upload.html", {"max_files": state(request).config.max_files})


@router.post("/upload")
def upload(request: Request, csrf: Annotated[str, Form()],
           files: Annotated[list[UploadFile], File()]) -> Response:
    """Analyse the dropped films in a private temp folder; nothing is placed."""
    require_csrf(request, csrf)
    current = state(request)
    dropped = _read(files, current.config.max_files)
    if not dropped:
        raise HTTPException(422, "choose at least one file")
    results = current.analyser.analyse(dropped)
    return render(request, "upload_result.html", {
        "results": results, "keepable": [r.sha256 for r in results
                                         if r.status not in ("refused",)],
        "min_confidence": current.analyser.min_confidence})


@router.post("/upload/pair")
def upload_pair(request: Request, csrf: Annotated[str, Form()],
                ap: Annotated[UploadFile, File()],
                lateral: Annotated[UploadFile, File()]) -> Response:
    """Score an AP and a lateral hip film, joined side by side, for fracture."""
    require_csrf(request, csrf)
    current = state(request)
    (ap_file,) = _read([ap], 1) or [("", b"")]
    (lateral_file,) = _read([lateral], 1) or [("", b"")]
    if not ap_file[1] or not lateral_file[1]:
        raise HTTPException(422, "choose an AP film and a lateral film")
    result = current.analyser.analyse_pair(ap_file, lateral_file)
    return render(request, "pair_result.html", {"pair": result})


@router.get("/upload/{key}/overlay.png")
def upload_overlay(request: Request, key: str) -> Response:
    path = state(request).store.overlay(valid_sha(key))
    if not path.is_file():
        raise HTTPException(404, "no overlay for that upload (uploads are kept a while only)")
    return FileResponse(path, media_type="image/png")


@router.post("/upload/add")
def add(request: Request, csrf: Annotated[str, Form()],
        sha: Annotated[list[str], Form()]) -> Response:
    """Place kept uploads in OUT through ``xreg sort``'s own path (409 while a sort runs)."""
    require_csrf(request, csrf)
    current = state(request)
    current.require_writable()
    config = current.config
    options = SortOptions(weights=config.weights, mode="copy", min_age=0.0,
                          registry=config.registry, device=config.device, workers=1)
    try:
        result, missing = add_to_registry(current.store, [valid_sha(s) for s in sha],
                                          config.out_root, options,
                                          current.analyser.model)
    except LockedError:
        raise HTTPException(409, "a sort is running on this folder; add the films when it "
                                 "has finished") from None
    return render(request, "added.html", {"result": result.to_dict(), "missing": missing})
