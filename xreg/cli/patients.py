"""``xreg registry patients|studies|patient``: the registry by patient and study."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from xreg.cli._common import (
    EXIT_ATTENTION,
    EXIT_USAGE,
    err,
    handle_errors,
    registry_app,
)


# -- the registry by patient and study (xreg.registry.patients) ------------------------
class ViewFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


_RegistryOpt = Annotated[Path | None, typer.Option(help="Registry file if not in OUT.")]
_BodyPartOpt = Annotated[str | None, typer.Option(
    "--body-part", help="Only studies (patients) with a film of this body part.")]
_InstrumentOpt = Annotated[bool | None, typer.Option(
    "--instrument/--no-instrument", help="Only studies (patients) with a film with / "
                                         "without hardware.", show_default=False)]
_FractureOpt = Annotated[bool | None, typer.Option(
    "--fracture/--no-fracture", help="Only studies (patients) with a film with / without "
                                     "a fracture (a hip pair's decision counts; a film "
                                     "whose fracture is unknown is neither).",
    show_default=False)]
_SinceOpt = Annotated[str | None, typer.Option(help="Studies on or after this date "
                                                     "(YYYY-MM-DD).")]
_UntilOpt = Annotated[str | None, typer.Option(help="Studies on or before this date "
                                                     "(YYYY-MM-DD).")]
_FormatOpt = Annotated[ViewFormat, typer.Option("--format", help="table, csv or json "
                                                "(shape: docs/registry.md).")]
_LimitOpt = Annotated[int | None, typer.Option(min=0, help="At most this many rows.")]
_OffsetOpt = Annotated[int, typer.Option(min=0, help="Skip this many rows first.")]


def _with_unknown(columns: tuple[str, ...]) -> tuple[str, ...]:
    """``columns`` with ``fracture_unknown`` (films whose fracture nobody knows) after
    the fracture column, so a NULL never reads as "no fracture"."""
    at = next((i + 1 for i, c in enumerate(columns) if c in ("fracture", "fractures")),
              len(columns))
    return (*columns[:at], "fracture_unknown", *columns[at:])


@registry_app.command("patients")
def registry_patients(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="A sorted folder.")],
    body_part: _BodyPartOpt = None, instrument: _InstrumentOpt = None,
    fracture: _FractureOpt = None, since: _SinceOpt = None, until: _UntilOpt = None,
    fmt: _FormatOpt = ViewFormat.table, limit: _LimitOpt = None, offset: _OffsetOpt = 0,
    registry: _RegistryOpt = None,
) -> None:
    """Patients (keyed hashes, never PatientIDs) with their studies, body parts, the
    date hardware was first seen in each body part, and fractures. Labels are the
    latest review's where there is one, else the model's."""
    from xreg.cli import _registry_views as views
    from xreg.registry import Registry
    from xreg.registry.patients import RegistryFilter, patients, unassigned_films

    with handle_errors(), Registry(registry or out_dir / "registry.sqlite", readonly=True) as reg:
        flt = RegistryFilter(body_part, instrument, fracture, since, until)
        rows, total = patients(reg, flt, limit=limit, offset=offset)
        loose = unassigned_films(reg)
    if fmt is ViewFormat.json:
        views.write_json("patients", {"filter": flt.to_dict(), "total": total, "limit": limit,
                                      "offset": offset, "unassigned_films": loose,
                                      "rows": rows})
    elif fmt is ViewFormat.csv:
        views.write_csv(rows, _with_unknown(views.PATIENT_COLUMNS))
    else:
        views.print_table(f"{len(rows)} of {total} patient(s)", rows,
                          _with_unknown(views.PATIENT_COLUMNS))
        err.print(f"{loose} film(s) without a patient key", highlight=False)


@registry_app.command("studies")
def registry_studies(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="A sorted folder.")],
    body_part: _BodyPartOpt = None, instrument: _InstrumentOpt = None,
    fracture: _FractureOpt = None, since: _SinceOpt = None, until: _UntilOpt = None,
    fmt: _FormatOpt = ViewFormat.table, limit: _LimitOpt = None, offset: _OffsetOpt = 0,
    per_month: Annotated[bool, typer.Option(
        "--per-month", help="Count dated studies per month and body part instead.")] = False,
    registry: _RegistryOpt = None,
) -> None:
    """Studies (StudyInstanceUID, else the keyed --group-by study), oldest first: films,
    body parts, views, hardware, fracture, hip pair score, films waiting in _review."""
    from xreg.cli import _registry_views as views
    from xreg.registry import Registry
    from xreg.registry.patients import (
        RegistryFilter,
        films_without_study,
        studies,
        studies_per_month,
    )

    with handle_errors(), Registry(registry or out_dir / "registry.sqlite", readonly=True) as reg:
        flt = RegistryFilter(body_part, instrument, fracture, since, until)
        if per_month:
            rows, total = studies_per_month(reg, flt), None
        else:
            rows, total = studies(reg, flt, limit=limit, offset=offset)
        loose = films_without_study(reg)
    kind, columns = (("studies_per_month", views.MONTH_COLUMNS) if per_month
                     else ("studies", _with_unknown(views.STUDY_COLUMNS)))
    if fmt is ViewFormat.json:
        payload: dict[str, Any] = {"filter": flt.to_dict(), "total": total}
        if not per_month:
            payload |= {"limit": limit, "offset": offset, "films_without_study": loose}
        views.write_json(kind, payload | {"rows": rows})
    elif fmt is ViewFormat.csv:
        views.write_csv(rows, columns)
    else:
        title = (f"studies per month ({sum(r['studies'] for r in rows)})" if per_month
                 else f"{len(rows)} of {total} studies")
        views.print_table(title, rows, columns)


@registry_app.command("patient")
def registry_patient(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="A sorted folder.")],
    key: Annotated[str, typer.Argument(help="The patient key (as `registry patients` "
                                            "lists it).")],
    fmt: Annotated[ViewFormat, typer.Option("--format", help="table or json.")] = (
        ViewFormat.table),
    registry: _RegistryOpt = None,
) -> None:
    """One patient's timeline: every study in date order with its films."""
    from xreg.cli import _registry_views as views
    from xreg.registry import Registry
    from xreg.registry.patients import patient_timeline

    if fmt is ViewFormat.csv:
        err.print("[bold red]error:[/] a timeline prints as table or json")
        raise typer.Exit(EXIT_USAGE)
    with handle_errors(), Registry(registry or out_dir / "registry.sqlite", readonly=True) as reg:
        timeline = patient_timeline(reg, key)
    if timeline is None:
        err.print("[bold red]error:[/] no patient with that key in this registry")
        raise typer.Exit(EXIT_ATTENTION)
    if fmt is ViewFormat.json:
        views.write_json("patient", {"patient": timeline})
    else:
        views.print_timeline(timeline)
