"""Read-only queries a person browses a registry with: counts, a gallery, one image.

What comes back never holds a patient name, birth date or PatientID: the
registry does not store them (PatientID and AccessionNumber only as keyed
hashes), and the image page lists the non-identifying header fields only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from xreg.registry.core import Registry

__all__ = ["FILTERS", "HEADER_FIELDS", "Gallery", "GalleryFilter", "choices", "counts",
           "gallery", "image_detail", "parse_filter", "placed_path"]

#: Header fields an image page shows: none of them identifies a patient.
HEADER_FIELDS = ("modality", "body_part_examined", "view_position", "laterality",
                 "study_date", "study_uid", "series_uid", "sop_uid", "patient_key",
                 "accession_key", "rows", "cols", "frames", "format")

#: Gallery filters: name -> the images column it compares with.
FILTERS = {"status": "status", "body_part": "body_part", "instrument": "instrument",
           "fracture": "fracture", "scope": "scope"}


@dataclass(frozen=True)
class GalleryFilter:
    """Equality filters on placed images; ``None`` means any value."""

    status: str | None = None
    body_part: str | None = None
    instrument: int | None = None
    fracture: int | None = None
    scope: str | None = None
    reviewed: bool | None = None  # True: only reviewed films; False: only unreviewed

    def where(self) -> tuple[str, list[Any]]:
        clauses, params = ["i.state = 'done'"], []
        for name, column in FILTERS.items():
            value = getattr(self, name)
            if value is not None:
                clauses.append(f"i.{column} = ?")
                params.append(value)
        if self.reviewed is not None:
            exists = "EXISTS (SELECT 1 FROM reviews r WHERE r.sha256 = i.sha256)"
            clauses.append(exists if self.reviewed else f"NOT {exists}")
        return " AND ".join(clauses), params


@dataclass(frozen=True)
class Gallery:
    """One page of placed images (newest placement order is by path)."""

    items: list[dict[str, Any]]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def counts(registry: Registry) -> dict[str, dict[str, int]]:
    """Placed images per status, body part, instrument, fracture, scope and review state.

    One grouped scan, folded here: cheaper than a query per grouping.
    """
    db = registry._db
    names = ("status", "body_part", "instrument", "fracture", "scope")
    out: dict[str, dict[str, int]] = {name: {} for name in names}
    total = 0
    for row in db.execute("SELECT status, body_part, instrument, fracture, scope, COUNT(*)"
                          " FROM images WHERE state = 'done' GROUP BY 1, 2, 3, 4, 5"):
        total += int(row[5])
        for name, value in zip(names, row):
            key = _label(name, value)
            out[name][key] = out[name].get(key, 0) + int(row[5])
    reviewed = db.execute("SELECT COUNT(DISTINCT sha256) FROM reviews").fetchone()[0]
    out["review_state"] = {"reviewed": int(reviewed), "not_reviewed": int(total - reviewed)}
    return {name: dict(sorted(values.items())) for name, values in out.items()}


def choices(registry: Registry) -> dict[str, list[str]]:
    """The values the gallery's status, body part and scope filters can take."""
    db = registry._db
    return {column: [str(r[0]) for r in db.execute(
        f"SELECT DISTINCT {column} FROM images WHERE state = 'done' AND {column} IS NOT NULL"
        f" ORDER BY 1")] for column in ("status", "body_part", "scope")}


def placed_path(registry: Registry, sha256: str) -> str | None:
    """Where a placed content hash lies under OUT (one cheap lookup for pictures)."""
    row = registry._db.execute("SELECT dest_path FROM images WHERE sha256 = ? AND"
                               " state = 'done'", (sha256,)).fetchone()
    return str(row[0]) if row else None


def _label(name: str, value: Any) -> str:
    if name in ("instrument", "fracture"):
        positive = name if name == "instrument" else "fracture"
        return {1: positive, 0: f"no_{positive}"}.get(value, "unknown")
    return str(value) if value not in (None, "") else "unknown"


def gallery(registry: Registry, where: GalleryFilter, *, page: int = 1,
            per_page: int = 48) -> Gallery:
    """One page of placed images matching ``where``, ordered by destination path."""
    clause, params = where.where()
    db = registry._db
    total = int(db.execute(f"SELECT COUNT(*) FROM images i WHERE {clause}", params)
                .fetchone()[0])
    page = max(1, page)
    rows = db.execute(
        "SELECT i.sha256, i.status, i.dest_path, i.body_part, i.body_part_prob, i.instrument,"
        " i.fracture, i.scope, (SELECT r.body_part FROM reviews r WHERE r.sha256 = i.sha256"
        " ORDER BY r.id DESC LIMIT 1) AS reviewed_body_part"
        f" FROM images i WHERE {clause} ORDER BY i.dest_path LIMIT ? OFFSET ?",
        [*params, per_page, (page - 1) * per_page]).fetchall()
    return Gallery([dict(r) for r in rows], total, page, per_page)


def image_detail(registry: Registry, sha256: str) -> dict[str, Any] | None:
    """Everything the image page shows about one content hash, or None."""
    db = registry._db
    row = db.execute("SELECT * FROM images WHERE sha256 = ? AND state = 'done'",
                     (sha256,)).fetchone()
    if row is None:
        return None
    image = dict(row)
    detail: dict[str, Any] = {
        key: image.get(key) for key in (
            "sha256", "status", "dest_path", "size", "mode", "body_part", "body_part_prob",
            "instrument", "instrument_prob", "fracture", "fracture_prob", "scope",
            "review_reason", "warning", "error", "model_sha256", "heatmap_path")}
    detail["probabilities"] = json.loads(image["probabilities"] or "{}")
    detail["header"] = {k: image.get(k) for k in HEADER_FIELDS if image.get(k) is not None}
    detail["sources"] = [dict(r) for r in db.execute(
        "SELECT path, removed, seen FROM sources WHERE sha256 = ? ORDER BY path", (sha256,))]
    run = db.execute("SELECT id, started, finished, status, xreg_version, input_root,"
                     " model_name, model_sha256 FROM runs WHERE id = ?",
                     (image["run_id"],)).fetchone()
    detail["run"] = dict(run) if run else None
    detail["reviews"] = [dict(r) for r in db.execute(
        "SELECT * FROM reviews WHERE sha256 = ? ORDER BY id", (sha256,))]
    return detail


def parse_filter(query: Mapping[str, str]) -> GalleryFilter:
    """A GalleryFilter from query-string values; unknown or empty values mean any."""
    def flag(name: str) -> int | None:
        value = query.get(name, "")
        return {"1": 1, "0": 0, name: 1, f"no_{name}": 0}.get(value)

    reviewed = {"yes": True, "no": False}.get(query.get("reviewed", ""))
    return GalleryFilter(status=query.get("status") or None,
                         body_part=query.get("body_part") or None,
                         instrument=flag("instrument"), fracture=flag("fracture"),
                         scope=query.get("scope") or None, reviewed=reviewed)
