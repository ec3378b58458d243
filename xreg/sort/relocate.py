"""Apply a review: move a placed film to the folder the reviewer's label earns.

The destination comes from ``plan_moves`` with the layout of the run that
placed the film, and the file goes there through ``apply_move`` (temp name,
fsync, verify, no-replace link), under the OUT lock, like every placement.
The order of effects makes a kill at any moment safe:

1. journal the apply in the review row (``pending``: from, to);
2. place the new copy (a hard link where the filesystem allows, else a
   verified copy; a ``--mode link`` symlink is re-pointed at its source);
3. one transaction: the image's new ``dest_path`` and status, the review
   ``placed``;
4. remove the old name (only if it still holds this content), then ``done``.

A run that finds a ``pending`` apply adopts the new copy if it is complete
(and goes on from 3) or removes its temp file and leaves the review
unapplied, with why; a ``placed`` one goes on from 4. The film is always in
at least one place the registry knows.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from xreg.errors import PlacementError, RegistryError
from xreg.registry import Registry
from xreg.registry.reviews import (
    NOT_MSK,
    body_part_members,
    commit_apply,
    finish_apply,
    get_review,
    image_row,
    interrupted_applies,
    journal_apply,
    unapplied_reviews,
    undo_apply,
)
from xreg.sort.placement import (
    DEFAULT_LAYOUT,
    REVIEW_DIR,
    Move,
    PlanItem,
    apply_move,
    clean_temps,
    find_placed,
    holds,
    plan_moves,
)

__all__ = ["Applied", "apply_reviews", "plan_review_move", "recover_applies",
           "set_review_note"]


@dataclass(frozen=True)
class Applied:
    """What applying one review did; ``moved`` is False when the folder was already right."""

    review_id: int
    sha256: str
    from_path: str
    to_path: str | None
    moved: bool
    error: str | None = None
    note: str | None = None  # why a set review kept the film where it was or sent it to _review


def _layout(image: dict[str, Any]) -> str:
    try:
        return str(json.loads(image.get("run_options") or "{}").get("layout") or DEFAULT_LAYOUT)
    except (TypeError, ValueError):
        return DEFAULT_LAYOUT


def _flag(value: int | None, name: str) -> str:
    return "" if value is None else (name if value else f"no_{name}")


def plan_review_move(image: dict[str, Any], review: dict[str, Any], out_root: Path) -> Move:
    """Where ``review`` sends ``image`` (pure): its layout, the reviewer's labels.

    Labels the reviewer did not judge keep the model's value; a film that is
    not musculoskeletal stays in (or goes to) ``_review``. A set review
    (``hand|wrist``) names no single folder: a sorted film whose body part
    is in the set keeps it, any other goes to (or stays in) ``_review``
    (:func:`set_review_note` says which, and why).
    """
    body_part, status = _review_folder(image, review["body_part"])
    instrument = review["instrument"] if review["instrument"] is not None \
        else image["instrument"]
    fracture = review["fracture"] if review["fracture"] is not None else image["fracture"]
    current = PurePosixPath(image["dest_path"])
    name = current.name
    date = image.get("study_date") or ""
    stem, _, ext = name.partition(".")
    fields = {
        "body_part": body_part, "instrument": _flag(instrument, "instrument"),
        "fracture": _flag(fracture, "fracture"), "view": image.get("view_position") or "",
        "laterality": image.get("laterality") or "", "study_date": date, "year": date[:4],
        "modality": image.get("modality") or "", "study_uid": image.get("study_uid") or "",
        "name": name, "stem": stem, "ext": ext, "sha8": image["sha256"][:8],
    }
    item = PlanItem(out_root / current, image["sha256"], status, fields)
    return plan_moves([item], layout=_layout(image))[0]


def _review_folder(image: dict[str, Any], reviewed: str) -> tuple[str, str]:
    """The body-part folder and status a review's body part earns ``image``."""
    if reviewed == NOT_MSK:
        return reviewed, "review"
    members = body_part_members(reviewed)
    if len(members) == 1:
        return reviewed, "sorted"
    if image.get("status") == "sorted" and image.get("body_part") in members:
        return str(image["body_part"]), "sorted"
    return reviewed, "review"


def set_review_note(image: dict[str, Any], reviewed: str) -> str | None:
    """Why a set review left ``image`` where it is or sent it to ``_review`` (else None)."""
    if len(body_part_members(reviewed)) < 2:
        return None
    body_part, status = _review_folder(image, reviewed)
    if status == "sorted":
        return f"reviewed as {reviewed}: kept under {body_part}, which is in the set"
    return f"reviewed as {reviewed}: a set names no single folder, so the film is in _review"


def apply_reviews(registry: Registry, out_root: Path,
                  review_ids: list[int] | None = None) -> list[Applied]:
    """Apply the given reviews (default: every latest review not yet applied).

    The caller holds the OUT lock (:func:`xreg.sort.runner.output_lock`).
    """
    recover_applies(registry, out_root)
    if review_ids is None:
        todo = unapplied_reviews(registry)
    else:
        todo = []
        for rid in review_ids:
            review = get_review(registry, rid)
            if review is None:
                raise RegistryError(f"no review {rid}")
            todo.append(review)
    return [_apply_one(registry, out_root, review) for review in todo]


def _apply_one(registry: Registry, out_root: Path, review: dict[str, Any]) -> Applied:
    image = image_row(registry, review["sha256"])
    if image is None:
        raise RegistryError("the reviewed image is no longer in the registry")
    move = plan_review_move(image, review, out_root)
    note = set_review_note(image, review["body_part"])
    current = image["dest_path"]
    if str(move.dest) == current:
        commit_apply(registry, review["id"], image["sha256"], current, move.status)
        finish_apply(registry, review["id"])
        return Applied(review["id"], image["sha256"], current, current, moved=False,
                       note=note)
    journal_apply(registry, review["id"], current, str(move.dest))
    try:
        dest = _place(move, image, out_root)
    except (PlacementError, OSError) as exc:
        undo_apply(registry, review["id"], f"not moved: {exc}")
        return Applied(review["id"], image["sha256"], current, None, False, str(exc), note)
    _finish(registry, review["id"], image, current, str(dest), move.status, out_root)
    return Applied(review["id"], image["sha256"], current, str(dest), moved=True, note=note)


def _link_target(path: Path) -> Path:
    return Path(os.readlink(path))


def _place(move: Move, image: dict[str, Any], out_root: Path) -> PurePosixPath:
    """Put a second name on the film at ``move.dest``; the old one stays."""
    old = out_root / image["dest_path"]
    if image["mode"] == "link":
        target = Move(_link_target(old), move.sha256, move.dest, move.status)
        return apply_move(target, out_root, "link")
    try:
        return apply_move(move, out_root, "hardlink")
    except PlacementError:  # a share without hard links: a verified copy instead
        return apply_move(move, out_root, "copy")


def _finish(registry: Registry, review_id: int, image: dict[str, Any], old: str, new: str,
            status: str, out_root: Path) -> None:
    commit_apply(registry, review_id, image["sha256"], new, status)
    if old != new:
        _remove_old(out_root / old, image["sha256"], image["mode"])
    finish_apply(registry, review_id)


def _remove_old(path: Path, sha256: str, mode: str) -> None:
    """Remove the film's old name, only if it still is this film."""
    if not os.path.lexists(path):
        return
    if mode == "link":
        if not path.is_symlink():
            return
    elif path.is_symlink() or not holds(path, sha256, path, "copy"):
        return
    os.unlink(path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_applies(registry: Registry, out_root: Path) -> int:
    """Finish or undo applies a killed process left half done; returns how many."""
    rows = interrupted_applies(registry)
    for row in rows:
        old = row["from_path"]
        image = {"sha256": row["sha256"], "mode": row["mode"], "dest_path": old}
        if row["apply_state"] == "placed":
            _finish(registry, row["id"], image, old, row["to_path"],
                    _status_of(registry, row["sha256"]), out_root)
            continue
        source = out_root / old
        mode = "link" if row["mode"] == "link" else "copy"
        if mode == "link" and source.is_symlink():
            source = _link_target(source)
        # A kill between the no-replace link and the temp's removal leaves both.
        clean_temps(out_root, [row["to_path"]], [row["sha256"]])
        placed = find_placed(out_root, row["to_path"], row["sha256"], source, mode)
        if placed is None:
            undo_apply(registry, row["id"], "interrupted before the file was placed; "
                                            "apply again")
            continue
        # The plan that journalled this apply chose the folder (a set review may
        # have chosen _review); the placed path says which.
        status = "review" if PurePosixPath(placed).parts[0] == REVIEW_DIR else "sorted"
        _finish(registry, row["id"], image, old, placed, status, out_root)
    return len(rows)


def _status_of(registry: Registry, sha256: str) -> str:
    stored = registry.get_image(sha256)
    return stored.status if stored is not None else "sorted"
