"""The review queue: a person corrects what the model was unsure of, then applies it."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from xreg.errors import ConfigError, LockedError, RegistryError
from xreg.registry.browse import counts
from xreg.registry.reviews import NOT_MSK, Review, add_review, latest_reviews, review_queue
from xreg.serve.deps import Page, render, require_csrf, reviewer_of, state, valid_sha
from xreg.sort.folders import output_lock
from xreg.sort.relocate import apply_reviews

router = APIRouter()

_FLAGS = {"1": 1, "0": 0, "": None}


def _choices(body_parts: tuple[str, ...]) -> list[str]:
    return [b for b in body_parts if b != "other"] + [NOT_MSK]


@router.get("/review")
def queue_page(request: Request, page: Page = 1) -> Response:
    current = state(request)
    with current.registry() as reg:
        items, total = review_queue(reg, page=page)
        waiting = counts(reg)["status"].get("review", 0)
    return render(request, "review.html", {
        "items": items, "total": total, "in_review": waiting, "page": max(1, page),
        "pages": max(1, -(-total // 24)), "choices": _choices(current.body_parts)})


@router.post("/reviewer")
def set_reviewer(request: Request, csrf: Annotated[str, Form()],
                 name: Annotated[str, Form(max_length=80)]) -> Response:
    """Who is reviewing in this browser (when ``xreg serve`` was not given --reviewer)."""
    require_csrf(request, csrf)
    name = " ".join(name.split())
    if not name:
        raise HTTPException(422, "give a reviewer name")
    response = RedirectResponse("/review", status_code=303)
    response.set_cookie("xreg_reviewer", quote(name), httponly=True, samesite="strict")
    return response


@router.post("/review/{sha}")
def submit_review(
    request: Request, sha: str, csrf: Annotated[str, Form()],
    body_part: Annotated[str, Form()], instrument: Annotated[str, Form()] = "",
    fracture: Annotated[str, Form()] = "", note: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Record one decision; what the model said stays as it was."""
    require_csrf(request, csrf)
    current = state(request)
    current.require_writable()
    name = reviewer_of(request)
    if name is None:
        raise HTTPException(422, "give your name on the review page first")
    if instrument not in _FLAGS or fracture not in _FLAGS:
        raise HTTPException(422, "instrument and fracture are 1, 0 or empty")
    review = Review(valid_sha(sha), name, body_part, _FLAGS[instrument],
                    _FLAGS[fracture], note or None)
    with current.writable_registry() as reg:
        try:
            review_id = add_review(reg, review, current.body_parts)
        except ConfigError as exc:
            raise HTTPException(422, str(exc)) from None
        except RegistryError as exc:
            raise HTTPException(404, str(exc)) from None
    if request.query_params.get("format") == "json":
        return render(request, "message.html", {"review_id": review_id})
    return RedirectResponse("/review", status_code=303)


@router.get("/reviews")
def reviews_page(request: Request) -> Response:
    with state(request).registry() as reg:
        latest = sorted(latest_reviews(reg).values(), key=lambda r: -r["id"])
    pending = sum(r["apply_state"] != "done" for r in latest)
    return render(request, "reviews.html", {"reviews": latest, "unapplied": pending})


@router.post("/apply")
def apply(request: Request, csrf: Annotated[str, Form()],
          review_id: Annotated[int | None, Form()] = None) -> Response:
    """Move reviewed films to the folders their reviews earn (409 while a sort runs)."""
    require_csrf(request, csrf)
    current = state(request)
    current.require_writable()
    out_root = current.config.out_root
    try:
        with output_lock(out_root), current.writable_registry() as reg:
            done = apply_reviews(reg, out_root, None if review_id is None else [review_id])
    except LockedError:
        raise HTTPException(409, "a sort is running on this folder; apply when it has "
                                 "finished") from None
    except RegistryError as exc:
        raise HTTPException(404, str(exc)) from None
    return render(request, "applied.html", {"applied": done})
