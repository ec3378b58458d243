"""The registry by patient and study: rollups derived from the image rows.

Nothing here is stored. Every figure is a query over the ``film_labels`` view
(placed images with their latest review and hip-pair scores, schema v10), so a
new review or a re-sort changes the answers at once and there is no second
truth that could disagree with ``images``. A film's *effective* label is its
latest review where there is one (a review's NULL instrument or fracture means
not judged, so the model's stands), else the model's. A review of ``not_msk``
keeps the film in its study's film count but out of every body-part list; a
label set such as ``hand|wrist`` counts for each of its parts. A NULL fracture
(the model abstains for a film it did not sort into the nine, or has no fracture
head) is unknown, never "no fracture": ``fracture_unknown`` counts such films
(those of a scored hip pair excepted) and ``--no-fracture`` does not select them.

A study is ``images.study_uid`` (DICOM StudyInstanceUID), else the keyed
``images.study_key`` of a ``--group-by`` folder; films with neither belong to
no study, films without ``patient_key`` to no patient (:func:`unassigned_films`).
Patient keys are keyed hashes: no PatientID is ever read or returned here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xreg.registry._rollup import (
    _HIP_FRACTURE,
    _UNKNOWN_FRACTURE,
    _earlier,
    _film_match,
    _pairs,
    _parts,
    _sql_limit,
    _values,
    _window,
)
from xreg.registry.core import Registry
from xreg.registry.filters import RegistryFilter
from xreg.registry.reviews import NOT_MSK

__all__ = ["RegistryFilter", "films_without_study", "patient_timeline", "patients",
           "studies", "studies_per_month", "unassigned_films"]

#: Page sizes up to this look their rows' details up by key; larger pages (or
#: no limit) select and roll up in one grouped pass (:func:`_one_pass`).
_KEYED_PAGE = 5000


def _one_pass(flt: RegistryFilter, where: str, limit: int | None) -> bool:
    """Whether to select and roll up in one grouped pass (every row, or a large
    page, of a filter that keeps many) rather than select keys, then look up.

    A body part, hardware or a fracture keeps few patients and studies: their
    keys first, then the rollups of just those, is cheaper than rolling all up.
    """
    rare = flt.body_part is not None or flt.instrument is True or flt.fracture is True
    return where == "1" and not rare and (limit is None or limit > _KEYED_PAGE)


# -- studies ----------------------------------------------------------------------
# A page: two steps, which studies (one pass over the study and date columns,
# plus the label columns a filter needs), then the rollups of just those
# studies by index. Every study (or a page too large to look up by key): one
# grouped pass that selects, rolls up and orders at once.
# Label lists are deduplicated in Python (_parts, _values): a plain group_concat
# spares SQLite a temporary index per group.
_STUDY_COLUMNS = (
    "study, MIN(patient_key) AS patient, MIN(date) AS date,"
    " group_concat(DISTINCT modality) AS modality, COUNT(*) AS films,"
    " group_concat(body_part) AS body_parts,"
    " group_concat(CASE WHEN instrument = 1 THEN body_part END) AS hardware,"
    " group_concat(view_position) AS views,"
    f" MAX(COALESCE(fracture, 0) = 1 AND COALESCE(body_part, '') != '{NOT_MSK}')"
    " AS film_fracture, SUM(status = 'review') AS in_review,"
    f" SUM({_UNKNOWN_FRACTURE}) AS fracture_unknown"
)
_STUDY_ROLLUP = f"SELECT {_STUDY_COLUMNS} FROM film_labels"
_STUDY_ORDER = "ORDER BY MIN(date) IS NULL, MIN(date), study"


def _study_keys(registry: Registry, flt: RegistryFilter, where: str, params: Sequence[Any],
                limit: int | None, offset: int) -> tuple[list[str], int]:
    """The keys of one page of studies ``flt`` selects (oldest first, undated last)."""
    match, match_params = _film_match(flt)
    window, window_params = _window(flt, "MIN(date)")
    having = f"{window} AND MAX({match}) = 1"
    rows = registry._db.execute(
        f"SELECT study, COUNT(*) OVER () FROM film_labels WHERE study IS NOT NULL AND {where}"
        f" GROUP BY study HAVING {having} {_STUDY_ORDER} LIMIT ? OFFSET ?",
        [*params, *window_params, *match_params, *_sql_limit(limit, offset)]).fetchall()
    if rows:
        return [r[0] for r in rows], int(rows[0][1])
    if not offset:
        return [], 0
    return [], len(_study_keys(registry, flt, where, params, None, 0)[0])  # past the end


def _study_rollups(registry: Registry, keys: list[str]) -> dict[str, dict[str, Any]]:
    """Study key -> its rollup, for ``keys`` (looked up by index on a small page)."""
    if not keys:
        return {}
    db = registry._db
    if len(keys) <= _KEYED_PAGE:
        marks = ", ".join("?" * len(keys))
        rows = db.execute(
            f"{_STUDY_ROLLUP} WHERE sha256 IN (SELECT sha256 FROM images WHERE study_uid"
            f" IN ({marks}) UNION ALL SELECT sha256 FROM images WHERE study_key IN ({marks}))"
            " GROUP BY study", [*keys, *keys]).fetchall()
    else:
        rows = db.execute(f"{_STUDY_ROLLUP} WHERE study IS NOT NULL GROUP BY study").fetchall()
    wanted = set(keys)
    found = {r["study"]: _study_dict(r) for r in rows if r["study"] in wanted}
    _add_hip_scores(registry, found)
    return found


def _add_hip_scores(registry: Registry, found: dict[str, dict[str, Any]]) -> None:
    for study, score, fracture in _hip_scores(registry, list(found)):
        if study in found:
            found[study]["hip_score"] = score
            found[study]["fracture"] = found[study]["fracture"] or bool(fracture)


def _hip_scores(registry: Registry, keys: list[str]) -> list[tuple[str, float, int]]:
    """(study, highest fracture probability, any fracture decision) of scored hip pairs.

    Read from the hip_studies side: far fewer rows than films, each joined to
    its two films by primary key.
    """
    wanted = set(keys)
    rows = registry._db.execute(
        "SELECT COALESCE(i.study_uid, i.study_key), MAX(h.fracture_prob),"
        " MAX(h.decision = 'fracture') FROM hip_studies h JOIN images i"
        " ON i.sha256 IN (h.ap_sha256, h.lateral_sha256) WHERE i.state = 'done'"
        " GROUP BY 1").fetchall()
    return [(r[0], r[1], r[2]) for r in rows if r[0] in wanted]


def _study_query(registry: Registry, flt: RegistryFilter, where: str = "1",
                 params: Sequence[Any] = (), limit: int | None = None,
                 offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    if _one_pass(flt, where, limit):
        return _all_studies(registry, flt, limit, offset)
    keys, total = _study_keys(registry, flt, where, params, limit, offset)
    rollups = _study_rollups(registry, keys)
    return [rollups[k] for k in keys if k in rollups], total


def _all_studies(registry: Registry, flt: RegistryFilter, limit: int | None,
                 offset: int) -> tuple[list[dict[str, Any]], int]:
    """The studies ``flt`` selects, rolled up and ordered in one pass (the index
    ``images_film_study`` hands the films over study by study), then sliced.

    A study's rollup covers all its films (the filter only selects studies), as
    on the keyed path.
    """
    match, match_params = _film_match(flt)
    window, window_params = _window(flt, "MIN(date)")
    _sql_limit(limit, offset)
    rows = registry._db.execute(
        f"SELECT {_STUDY_COLUMNS} FROM film_labels WHERE study IS NOT NULL GROUP BY study"
        f" HAVING {window} AND MAX({match}) = 1 {_STUDY_ORDER}",
        [*window_params, *match_params]).fetchall()
    page = rows[offset:] if limit is None else rows[offset:offset + limit]
    found = {r["study"]: _study_dict(r) for r in page}
    _add_hip_scores(registry, found)
    return list(found.values()), len(rows)


def _study_dict(r: Any) -> dict[str, Any]:
    return {
        "study": r["study"], "patient": r["patient"], "date": r["date"],
        "modality": r["modality"], "films": int(r["films"]),
        "body_parts": _parts(r["body_parts"]), "views": _values(r["views"]),
        "hardware": _parts(r["hardware"]), "fracture": bool(r["film_fracture"]),
        "hip_score": None, "in_review": int(r["in_review"] or 0),
        "fracture_unknown": int(r["fracture_unknown"] or 0),
    }


def studies(registry: Registry, flt: RegistryFilter = RegistryFilter(), *,
            limit: int | None = None, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """One page of studies (oldest first, undated last) and how many match ``flt``."""
    return _study_query(registry, flt, limit=limit, offset=offset)


def studies_per_month(registry: Registry,
                      flt: RegistryFilter = RegistryFilter()) -> list[dict[str, Any]]:
    """Dated studies per month and body part (a study counts once for each body
    part among its films; with ``flt.body_part``, for that body part only)."""
    match, match_params = _film_match(flt)
    window, window_params = _window(flt, "MIN(date)")
    counts: dict[tuple[str, str], int] = {}
    for date, labels in registry._db.execute(
            "SELECT MIN(date), group_concat(body_part) FROM film_labels"
            " WHERE study IS NOT NULL AND date IS NOT NULL GROUP BY study"
            f" HAVING {window} AND MAX({match}) = 1", [*window_params, *match_params]):
        for part in _parts(labels):
            if flt.body_part is None or part == flt.body_part:
                counts[(date[:7], part)] = counts.get((date[:7], part), 0) + 1
    return [{"month": month, "body_part": part, "studies": n}
            for (month, part), n in sorted(counts.items())]


# -- patients ---------------------------------------------------------------------
def _patient_keys(registry: Registry, flt: RegistryFilter, where: str, params: Sequence[Any],
                  limit: int | None, offset: int) -> tuple[list[str], int]:
    """The keys of one page of patients ``flt`` selects, in key order."""
    match, match_params = _film_match(flt)
    window, window_params = _window(flt, "date")
    rows = registry._db.execute(
        "SELECT patient_key, COUNT(*) OVER () FROM film_labels"
        f" WHERE patient_key IS NOT NULL AND {window} AND {where}"
        f" GROUP BY patient_key HAVING MAX({match}) = 1 ORDER BY patient_key LIMIT ? OFFSET ?",
        [*window_params, *params, *match_params, *_sql_limit(limit, offset)]).fetchall()
    if rows:
        return [r[0] for r in rows], int(rows[0][1])
    if not offset:
        return [], 0
    return [], len(_patient_keys(registry, flt, where, params, None, 0)[0])


# A patient's rollup, with the films behind ``hardware`` and ``fractures`` in
# the same pass: each film's (label, date) as ``label US date RS`` (an undated
# film's date reads ''), so a comma in a label cannot split a pair; duplicates
# are dropped in Python, as for the body parts.
_PATIENT_COLUMNS = (
    "patient_key AS patient, MIN(date) AS first_study, MAX(date) AS last_study,"
    " COUNT(DISTINCT study) AS studies, COUNT(*) AS films,"
    " group_concat(body_part) AS body_parts,"
    " group_concat(CASE WHEN instrument = 1 THEN"
    " body_part || char(31) || COALESCE(date, '') || char(30) END) AS hardware,"
    f" group_concat(CASE WHEN fracture = 1 OR {_HIP_FRACTURE} THEN"
    " body_part || char(31) || COALESCE(date, '') || char(30) END) AS fractures,"
    f" SUM({_UNKNOWN_FRACTURE}) AS fracture_unknown"
)


def _patient_query(registry: Registry, flt: RegistryFilter, where: str = "1",
                   params: Sequence[Any] = (), limit: int | None = None,
                   offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    window, window_params = _window(flt, "date")
    if _one_pass(flt, where, limit):
        # Every patient (or a large page): selected, rolled up and ordered in one pass.
        match, match_params = _film_match(flt)
        _sql_limit(limit, offset)
        rows = registry._db.execute(
            f"SELECT {_PATIENT_COLUMNS} FROM film_labels WHERE patient_key IS NOT NULL"
            f" AND {window} GROUP BY patient_key HAVING MAX({match}) = 1"
            " ORDER BY patient_key", [*window_params, *match_params]).fetchall()
        page = rows[offset:] if limit is None else rows[offset:offset + limit]
        return [_patient_dict(r) for r in page], len(rows)
    keys, total = _patient_keys(registry, flt, where, params, limit, offset)
    if not keys:
        return [], total
    among, among_params = _among(keys)
    found = {r["patient"]: _patient_dict(r) for r in registry._db.execute(
        f"SELECT {_PATIENT_COLUMNS} FROM film_labels WHERE {among} AND {window}"
        " GROUP BY patient_key", [*among_params, *window_params])}
    return [found[k] for k in keys if k in found], total


def _among(keys: list[str]) -> tuple[str, list[Any]]:
    """An SQL condition selecting ``keys``' films: by index for a page, else all."""
    if len(keys) <= _KEYED_PAGE:
        return f"patient_key IN ({', '.join('?' * len(keys))})", list(keys)
    return "patient_key IS NOT NULL", []


def _patient_dict(r: Any) -> dict[str, Any]:
    """A patient row, with ``hardware`` (body part, first seen) and ``fractures``."""
    hardware: dict[str, str | None] = {}
    for label, first in _pairs(r["hardware"]):
        for part in _parts(label):
            if part not in hardware or _earlier(first, hardware[part]):
                hardware[part] = first
    fractures = {(part, date) for label, date in _pairs(r["fractures"])
                 for part in _parts(label)}
    return {
        "patient": r["patient"], "first_study": r["first_study"],
        "last_study": r["last_study"], "studies": int(r["studies"]), "films": int(r["films"]),
        "body_parts": _parts(r["body_parts"]),
        "hardware": [{"body_part": part, "first_seen": first}
                     for part, first in sorted(hardware.items())],
        "fractures": [{"body_part": part, "date": date} for part, date in
                      sorted(fractures, key=lambda f: (f[1] is None, f[1] or "", f[0]))],
        "fracture_unknown": int(r["fracture_unknown"] or 0),
    }

def patients(registry: Registry, flt: RegistryFilter = RegistryFilter(), *,
             limit: int | None = None, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """One page of patients (by key) having a study ``flt`` selects, and how many.

    A patient's figures cover all their films within the filter's dates: with
    ``body_part='knee', instrument=True`` a patient is in for knee hardware and
    their row still says what else they had, and since when.
    """
    return _patient_query(registry, flt, limit=limit, offset=offset)


def patient_timeline(registry: Registry, key: str) -> dict[str, Any] | None:
    """The patient's rollup plus ``studies`` in date order, each with its films;
    None for a key the registry does not know."""
    found, _ = _patient_query(registry, RegistryFilter(), "patient_key = ?", [key])
    if not found:
        return None
    timeline = found[0]
    studies_, _ = _study_query(registry, RegistryFilter(), "patient_key = ?", [key])
    by_study = {s["study"]: s | {"films": []} for s in studies_}
    loose: list[dict[str, Any]] = []
    for film in registry._db.execute(
            "SELECT study, sha256, dest_path, body_part, instrument, fracture, view_position,"
            " status, label_source FROM film_labels WHERE patient_key = ?"
            " ORDER BY dest_path", (key,)):
        item = dict(film)
        study = item.pop("study")
        (by_study[study]["films"] if study in by_study else loose).append(item)
    for study in by_study.values():
        study["film_count"] = len(study["films"])
    timeline["studies"] = list(by_study.values())
    timeline["films_without_study"] = loose
    return timeline


def unassigned_films(registry: Registry) -> int:
    """Placed films without a patient key (no DICOM PatientID, no ``--group-by``)."""
    return int(registry._db.execute(
        "SELECT COUNT(*) FROM film_labels WHERE patient_key IS NULL").fetchone()[0])


def films_without_study(registry: Registry) -> int:
    """Placed films with neither a StudyInstanceUID nor a ``--group-by`` study key."""
    return int(registry._db.execute(
        "SELECT COUNT(*) FROM film_labels WHERE study IS NULL").fetchone()[0])
