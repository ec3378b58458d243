"""Registry export: every row as CSV or JSON (stable column order), or a training manifest."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from xreg.registry.core import Registry

COLUMNS = (
    "sha256", "status", "dest_path", "source_paths", "body_part", "body_part_prob",
    "instrument", "instrument_prob", "probabilities", "error", "format", "rows", "cols",
    "frames", "size", "mode", "study_uid", "series_uid", "sop_uid", "accession_key",
    "patient_key", "modality", "body_part_examined", "view_position", "laterality",
    "study_date", "model_sha256", "run_id", "created", "updated",
    # Added later, at the end, so older readers of the CSV keep their columns.
    "scope", "review_reason", "fracture", "fracture_prob", "warning", "header_audit",
    "header_term", "header_class", "header_tag", "header_view_audit",
)


def write_export(rows: Iterable[dict[str, Any]], fmt: str, stream: TextIO) -> int:
    """Write registry rows to ``stream``; returns the number written."""
    n = 0
    if fmt == "json":
        items = []
        for row in rows:
            item = {k: row.get(k) for k in COLUMNS}
            if item["probabilities"]:
                item["probabilities"] = json.loads(item["probabilities"])
            items.append(item)
        json.dump(items, stream, indent=2)
        stream.write("\n")
        return len(items)
    writer = csv.writer(stream)
    writer.writerow(COLUMNS)
    for row in rows:
        values = dict(row)
        values["source_paths"] = ";".join(values.get("source_paths") or [])
        writer.writerow(["" if values.get(k) is None else values.get(k) for k in COLUMNS])
        n += 1
    return n


#: Columns of ``--format manifest``: what ``xreg train --data`` reads, plus provenance.
MANIFEST_COLUMNS = ("path", "body_part", "instrument", "fracture", "patient_id",
                    "label_source", "reviewer", "sha256", "model_sha256")


def _flag(value: int | None) -> str:
    return "" if value is None else str(int(value))


def manifest_rows(registry: Registry, out_root: Path, *, reviewed_only: bool = False,
                  other: str | None = "other") -> Iterator[dict[str, str]]:
    """Training rows for the placed films: the latest review's labels where there is one.

    A film nobody reviewed is labelled by the model only if it was sorted (a
    ``_review`` film's model label is exactly what was in doubt). A film
    reviewed as not musculoskeletal is labelled ``other`` (``other=None``:
    left out, for a nine-class head). Labels a reviewer did not judge keep
    the model's. A set review (``hand|wrist``) is written as the set, which
    :func:`xreg.datasets.load_labels` reads as "one of these". ``patient_id``
    is the registry's keyed hash, never the ID.
    """
    from xreg.registry.reviews import NOT_MSK, latest_reviews

    reviews = latest_reviews(registry)
    for row in registry.iter_images():
        review = reviews.get(row["sha256"])
        if review is None and (reviewed_only or row["status"] != "sorted"):
            continue
        if row["body_part"] is None and review is None:
            continue
        body_part = review["body_part"] if review else row["body_part"]
        if body_part == NOT_MSK:
            if other is None:
                continue
            body_part = other
        instrument = row["instrument"]
        fracture = row["fracture"]
        if review is not None:
            instrument = review["instrument"] if review["instrument"] is not None \
                else instrument
            fracture = review["fracture"] if review["fracture"] is not None else fracture
        yield {
            "path": str(out_root.absolute() / row["dest_path"]),
            "body_part": body_part, "instrument": _flag(instrument),
            "fracture": _flag(fracture),
            "patient_id": row["patient_key"] or row["study_uid"] or "",
            "label_source": "review" if review else "model",
            "reviewer": review["reviewer"] if review else "",
            "sha256": row["sha256"], "model_sha256": row["model_sha256"] or "",
        }


def write_manifest(rows: Iterable[dict[str, str]], stream: TextIO) -> int:
    """Write training-manifest rows as CSV; returns how many."""
    writer = csv.DictWriter(stream, fieldnames=MANIFEST_COLUMNS)
    writer.writeheader()
    n = 0
    for row in rows:
        writer.writerow(row)
        n += 1
    return n
