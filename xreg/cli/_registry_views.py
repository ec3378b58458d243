"""Rendering of ``xreg registry patients|studies|patient``: table, CSV and JSON.

The JSON shapes are a contract (docs/registry.md): a top-level object whose
``schema`` says which shape it is; fields are added, never renamed or
removed, without raising it. Only keyed hashes name patients here.
"""

from __future__ import annotations

import csv
import json
import sys
from typing import Any

from rich.table import Table

from xreg.cli._common import out

#: Version of the JSON shapes below; raise it when a field changes meaning or goes.
JSON_SCHEMA = 1

PATIENT_COLUMNS = ("patient", "first_study", "last_study", "studies", "films", "body_parts",
                   "hardware", "fractures")
STUDY_COLUMNS = ("study", "patient", "date", "modality", "films", "body_parts", "views",
                 "hardware", "fracture", "hip_score", "in_review")
MONTH_COLUMNS = ("month", "body_part", "studies")
FILM_COLUMNS = ("sha256", "dest_path", "body_part", "instrument", "fracture", "view_position",
                "status", "label_source")


def flat(value: Any) -> str:
    """One cell: lists joined with ';', hardware and fractures as part@date."""
    if isinstance(value, list):
        return ";".join(flat(v) for v in value)
    if isinstance(value, dict):
        part = value.get("body_part", "")
        date = value.get("first_seen", value.get("date"))
        return f"{part}@{date or 'undated'}"
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def write_json(kind: str, payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps({"schema": JSON_SCHEMA, "kind": kind, **payload}, indent=2)
                     + "\n")


def write_csv(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    writer = csv.writer(sys.stdout)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([flat(row.get(c)) for c in columns])


def print_table(title: str, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    table = Table(title=title)
    for col in columns:
        table.add_column(col.replace("_", " "))
    for row in rows:
        table.add_row(*(flat(row.get(c)) for c in columns))
    out.print(table)


def print_timeline(timeline: dict[str, Any]) -> None:
    """A patient's rollup, then one table per study with its films."""
    summary = ", ".join(f"{c.replace('_', ' ')} {flat(timeline[c]) or '-'}"
                        for c in PATIENT_COLUMNS)
    out.print(summary, highlight=False)
    for study in timeline["studies"]:
        table = Table(title=f"{study['date'] or 'undated'}  study {study['study']}  "
                            f"{flat(study['body_parts'])}  hardware "
                            f"{flat(study['hardware']) or '-'}  fracture "
                            f"{flat(study['fracture'])}", title_justify="left")
        for col in FILM_COLUMNS:
            table.add_column(col.replace("_", " "))
        for film in study["films"]:
            table.add_row(*(flat(film.get(c)) if c != "sha256" else film[c][:12]
                            for c in FILM_COLUMNS))
        out.print(table)
    if timeline["films_without_study"]:
        out.print(f"{len(timeline['films_without_study'])} film(s) without a study",
                  highlight=False)
