"""Review at speed: one film at a time, large, one keystroke per decision.

The page works as plain forms (a button per class, a submit that redirects
to the next film); ``/static/review.js`` turns the same forms into keys and
swaps films from this module's JSON without reloading. The queue is the
library's teaching order (:func:`xreg.registry.reviews.queue_hashes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from xreg.errors import ConfigError, RegistryError
from xreg.registry.reviews import (
    NOT_MSK,
    Review,
    add_review,
    film_review,
    queue_films,
    queue_hashes,
    undo_review,
)
from xreg.serve.deps import render, require_csrf, reviewer_of, state, valid_sha

__all__ = ["key_map", "router"]

router = APIRouter()

_FLAGS = {"1": 1, "0": 0, "": None}
#: Keys the page uses for something other than a class.
_RESERVED = frozenset("iux")
#: The first letter where it is free; p for hip (h is hand), v for spine (s is shoulder).
_PREFERRED = {"ankle": "a", "elbow": "e", "foot": "f", "hand": "h", "hip": "p", "knee": "k",
              "shoulder": "s", "spine": "v", "wrist": "w", NOT_MSK: "n"}
#: What a film page shows of the model's answer (never the film's path: it may
#: carry a patient folder's name).
_FILM_FIELDS = ("sha256", "status", "body_part", "body_part_prob", "instrument",
                "instrument_prob", "fracture", "fracture_prob", "scope", "review_reason")


def key_map(choices: Sequence[str]) -> list[dict[str, str]]:
    """One key per class, stable for a given list: the preferred letter, else the
    first free letter of the name, else a digit."""
    used: set[str] = set(_RESERVED)
    keys: dict[str, str] = {}
    for name in choices:
        key = _PREFERRED.get(name)
        if key is not None and key not in used:
            keys[name] = key
            used.add(key)
    for name in choices:
        if name in keys:
            continue
        free = [c for c in name.lower() if c.isalpha() and c not in used]
        free += [d for d in "123456789" if d not in used]
        if free:
            keys[name] = free[0]
            used.add(free[0])
    return [{"key": keys[name], "label": name} for name in choices if name in keys]


def _choices(body_parts: tuple[str, ...]) -> list[str]:
    return [b for b in body_parts if b != "other"] + [NOT_MSK]


def _after(order: list[str], sha: str) -> str | None:
    """The film to show once ``sha`` is decided: the next in the queue, else the first
    one left (films skipped with the arrows), else none."""
    if sha in order:
        rest = order[order.index(sha) + 1:]
        if rest:
            return rest[0]
    left = [s for s in order if s != sha]
    return left[0] if left else None


def _film_context(request: Request, sha: str | None) -> dict[str, Any]:
    """The page's data: the film, what the model said, its place in the queue."""
    current = state(request)
    with current.registry() as reg:
        order = queue_hashes(reg)
        if sha is None and order:
            sha = order[0]
        found = queue_films(reg, [sha]) if sha else []
        if sha is not None and not found:
            raise HTTPException(404, "no such image")
        review = film_review(reg, sha) if sha else None
    film = {k: found[0][k] for k in _FILM_FIELDS} if found else None
    at = order.index(sha) if sha in order else None
    if at is None:  # a reviewed film: the way on is the queue's first
        prev, after = None, _after(order, sha or "")
    else:
        prev = order[at - 1] if at > 0 else None
        after = order[at + 1] if at + 1 < len(order) else None
    return {
        "film": film, "total": len(order), "position": None if at is None else at + 1,
        "prev": prev, "next": after,
        "review": None if review is None else {
            k: review[k] for k in ("id", "reviewer", "body_part", "instrument", "fracture",
                                   "apply_state")},
        "keys": key_map(_choices(current.body_parts)),
    }


@router.get("/review/next")
def next_film(request: Request) -> Response:
    """The first film of the queue (or word that the queue is empty)."""
    return render(request, "review_film.html", _film_context(request, None))


@router.get("/review/film/{sha}")
def film_page(request: Request, sha: str) -> Response:
    return render(request, "review_film.html", _film_context(request, valid_sha(sha)))


def _reviewer(request: Request) -> str:
    name = reviewer_of(request)
    if name is None:
        raise HTTPException(422, "give your name on the review page first")
    return name


def _wants_json(request: Request) -> bool:
    return request.query_params.get("format") == "json"


@router.post("/review/film/{sha}")
def decide(
    request: Request, sha: str, csrf: Annotated[str, Form()],
    body_part: Annotated[str, Form(max_length=80)] = "",
    accept: Annotated[str, Form(max_length=1)] = "",
    instrument: Annotated[str, Form(max_length=1)] = "",
    fracture: Annotated[str, Form(max_length=1)] = "",
) -> Response:
    """Record one decision and answer with the next film: a class, or ``accept=1``
    for the model's body part; instrument and fracture as the form shows them."""
    require_csrf(request, csrf)
    current = state(request)
    current.require_writable()
    name = _reviewer(request)
    sha = valid_sha(sha)
    if instrument not in _FLAGS or fracture not in _FLAGS or accept not in ("", "1"):
        raise HTTPException(422, "instrument and fracture are 1, 0 or empty; accept is 1 "
                                 "or empty")
    if bool(accept) == bool(body_part):
        raise HTTPException(422, "choose a body part, or accept the model's answer")
    with current.writable_registry() as reg:
        found = queue_films(reg, [sha])
        if not found:
            raise HTTPException(404, "no placed image with that content hash")
        if accept and found[0]["body_part"] is None:
            raise HTTPException(422, "the model gave this film no body part to accept")
        order = queue_hashes(reg)
        review = Review(sha, name, body_part or found[0]["body_part"], _FLAGS[instrument],
                        _FLAGS[fracture])
        try:
            review_id = add_review(reg, review, current.body_parts)
        except ConfigError as exc:
            raise HTTPException(422, str(exc)) from None
        except RegistryError as exc:
            raise HTTPException(404, str(exc)) from None
    after = _after(order, sha)
    if _wants_json(request):
        return render(request, "message.html", {
            "review_id": review_id, "sha256": sha, "body_part": review.body_part,
            "next": after})
    return RedirectResponse(f"/review/film/{after}" if after else "/review/next",
                            status_code=303)


@router.post("/reviews/undo")
def undo(request: Request, csrf: Annotated[str, Form()]) -> Response:
    """Take back this reviewer's latest decision (409 once it has been applied)."""
    require_csrf(request, csrf)
    current = state(request)
    current.require_writable()
    name = _reviewer(request)
    with current.writable_registry() as reg:
        try:
            undone = undo_review(reg, name)
        except RegistryError as exc:
            raise HTTPException(409, str(exc)) from None
    if _wants_json(request):
        return render(request, "message.html", {"undone": {
            k: undone[k] for k in ("id", "sha256", "body_part", "instrument", "fracture")}})
    return RedirectResponse(f"/review/film/{undone['sha256']}", status_code=303)
