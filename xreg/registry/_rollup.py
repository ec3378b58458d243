"""SQL pieces and label parsing shared by the registry's patient and study rollups.

Private to :mod:`xreg.registry.patients`: expressions over the ``film_labels``
view and parsers of the ``group_concat`` strings the rollups return.
"""

from __future__ import annotations

import functools
from typing import Any

from xreg.errors import ConfigError
from xreg.registry.filters import RegistryFilter
from xreg.registry.reviews import NOT_MSK

#: SQL over ``film_labels``: the film belongs to a hip pair decided fracture
#: (``hip_fracture = 1``), from the few such pairs instead of a look-up per film.
_HIP_FRACTURE = (
    "sha256 IN (SELECT ap_sha256 FROM hip_studies WHERE decision = 'fracture'"
    " AND ap_sha256 IS NOT NULL UNION ALL SELECT lateral_sha256 FROM hip_studies"
    " WHERE decision = 'fracture' AND lateral_sha256 IS NOT NULL)")

#: SQL over ``film_labels``: the film belongs to a hip pair that was scored at all.
_HIP_SCORED = (
    "sha256 IN (SELECT ap_sha256 FROM hip_studies WHERE decision IS NOT NULL"
    " AND ap_sha256 IS NOT NULL UNION ALL SELECT lateral_sha256 FROM hip_studies"
    " WHERE decision IS NOT NULL AND lateral_sha256 IS NOT NULL)")

#: SQL over ``film_labels``: 1 for a musculoskeletal film whose fracture is unknown:
#: no effective fracture label (the model abstained or has no fracture head, and no
#: review judged it) and no scored hip pair. Such a film is never "no fracture".
_UNKNOWN_FRACTURE = (
    f"(fracture IS NULL AND COALESCE(body_part, '') != '{NOT_MSK}' AND NOT {_HIP_SCORED})")


# -- SQL pieces ------------------------------------------------------------------
def _film_match(flt: RegistryFilter) -> tuple[str, list[Any]]:
    """An SQL expression over ``film_labels``: 1 for a film the filter selects."""
    if not flt.selects_films:
        return "1", []
    clauses, params = [f"COALESCE(body_part, '') != '{NOT_MSK}'"], []
    if flt.body_part is not None:
        # A label set (hand|wrist) matches each of its parts.
        clauses.append("instr('|' || body_part || '|', ?) > 0")
        params.append(f"|{flt.body_part}|")
    if flt.instrument is not None:
        clauses.append("instrument = ?")
        params.append(int(flt.instrument))
    if flt.fracture is True:
        clauses.append(f"(fracture = 1 OR {_HIP_FRACTURE})")
    elif flt.fracture is False:
        clauses.append(f"(fracture = 0 AND NOT {_HIP_FRACTURE})")
    return "(" + " AND ".join(clauses) + ")", params


def _window(flt: RegistryFilter, column: str) -> tuple[str, list[Any]]:
    clauses, params = [], []
    if flt.since is not None:
        clauses.append(f"{column} >= ?")
        params.append(flt.since)
    if flt.until is not None:
        clauses.append(f"{column} <= ?")
        params.append(flt.until)
    return (" AND ".join(clauses) or "1"), params


def _sql_limit(limit: int | None, offset: int) -> list[int]:
    if limit is not None and limit < 0 or offset < 0:
        raise ConfigError("limit and offset must not be negative")
    return [-1 if limit is None else limit, offset]



def _parts(text: str | None) -> list[str]:
    """Body parts named in a ``group_concat`` of labels: sets split, ``not_msk`` dropped."""
    return list(_parts_of(text))


@functools.lru_cache(maxsize=4096)
def _parts_of(text: str | None) -> tuple[str, ...]:
    # Cached: a full list repeats the same few label strings thousands of times.
    found = {part for label in (text or "").split(",") for part in label.split("|")}
    return tuple(sorted(found - {"", NOT_MSK}))


def _values(text: str | None) -> list[str]:
    return list(_values_of(text))


@functools.lru_cache(maxsize=4096)
def _values_of(text: str | None) -> tuple[str, ...]:
    return tuple(sorted({v for v in (text or "").split(",") if v}))



def _pairs(text: str | None) -> list[tuple[str, str | None]]:
    """(label, date or None) pairs of a ``group_concat`` of ``label US date RS``."""
    found = []
    for item in text[:-1].split("\x1e,") if text else []:
        label, _, date = item.rpartition("\x1f")
        found.append((label, date or None))
    return found


def _earlier(date: str | None, than: str | None) -> bool:
    """Dated beats undated; otherwise the earlier ISO date."""
    return date is not None and (than is None or date < than)

