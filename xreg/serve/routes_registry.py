"""The registry by patient and study: paged tables, one patient's timeline, a chart.

A thin skin over :mod:`xreg.registry.patients`: the query string becomes a
:class:`RegistryFilter` (its own checks answer 422), the page asks for one
page of rows and renders them. Patients appear only as keyed hashes (the
registry holds no PatientID), so a URL names a patient by that key and
nothing else.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response

from xreg.errors import ConfigError
from xreg.model.labels import EXTENDED_BODY_PARTS
from xreg.registry.patients import (
    RegistryFilter,
    patient_timeline,
    patients,
    studies,
    studies_per_month,
)
from xreg.serve.charts import month_bars
from xreg.serve.deps import Label, Page, render, state

router = APIRouter()

PER_PAGE = 50

#: A patient key as :class:`xreg.registry.pseudonym.Pseudonymiser` makes it:
#: 32 lower-case hex digits of an HMAC. Anything else names no patient.
_PATIENT_KEY = re.compile(r"[0-9a-f]{32}")

_FLAGS: dict[str, bool | None] = {"": None, "1": True, "0": False}
_Flag = Literal["", "1", "0"]
_Date = Annotated[str, Query(max_length=10, pattern=r"^(\d{4}-\d{2}-\d{2})?$")]


def registry_filter(body_part: Label = "", instrument: _Flag = "", fracture: _Flag = "",
                    since: _Date = "", until: _Date = "") -> RegistryFilter:
    """The filter form's values as a :class:`RegistryFilter`; a value it refuses is a 422."""
    try:
        return RegistryFilter(body_part or None, _FLAGS[instrument], _FLAGS[fracture],
                              since or None, until or None)
    except ConfigError as exc:
        raise HTTPException(422, str(exc)) from None


Filter = Annotated[RegistryFilter, Depends(registry_filter)]


def _form(flt: RegistryFilter) -> dict[str, str]:
    """The filter as the form's (and the pager links') query-string values."""
    def flag(value: bool | None) -> str:
        return "" if value is None else str(int(value))

    return {"body_part": flt.body_part or "", "instrument": flag(flt.instrument),
            "fracture": flag(flt.fracture), "since": flt.since or "", "until": flt.until or ""}


def _listing(flt: RegistryFilter, rows: list[dict[str, Any]], total: int,
             page: int) -> dict[str, Any]:
    """What every paged table shows: the page's rows, the pager and the filter form."""
    form = _form(flt)
    return {"rows": rows, "total": total, "page": page, "per_page": PER_PAGE,
            "pages": max(1, -(-total // PER_PAGE)), "filters": flt.to_dict(),
            "form": form, "query": urlencode({k: v for k, v in form.items() if v}),
            "body_parts": list(EXTENDED_BODY_PARTS)}


@router.get("/patients")
def patients_page(request: Request, flt: Filter, page: Page = 1) -> Response:
    with state(request).registry() as reg:
        rows, total = patients(reg, flt, limit=PER_PAGE, offset=(page - 1) * PER_PAGE)
    return render(request, "patients.html", _listing(flt, rows, total, page))


@router.get("/studies")
def studies_page(request: Request, flt: Filter, page: Page = 1) -> Response:
    """One page of studies, and the chart of studies per month for the whole filter."""
    with state(request).registry() as reg:
        rows, total = studies(reg, flt, limit=PER_PAGE, offset=(page - 1) * PER_PAGE)
        per_month = studies_per_month(reg, flt)
    context = _listing(flt, rows, total, page)
    context["per_month"] = per_month
    if request.query_params.get("format") != "json":  # geometry is the page's business
        context["chart"] = month_bars(per_month, EXTENDED_BODY_PARTS)
    return render(request, "studies.html", context)


@router.get("/patient/{key}")
def patient_page(request: Request, key: str) -> Response:
    """One patient's studies in date order, each with its films' thumbnails."""
    if _PATIENT_KEY.fullmatch(key) is None:
        raise HTTPException(404, "no such patient")
    with state(request).registry() as reg:
        timeline = patient_timeline(reg, key)
    if timeline is None:
        raise HTTPException(404, "no such patient")
    return render(request, "patient.html", {"patient": timeline})
