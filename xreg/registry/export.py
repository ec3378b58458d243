"""Registry export as CSV or JSON (stable column order)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from typing import Any, TextIO

COLUMNS = (
    "sha256", "status", "dest_path", "source_paths", "body_part", "body_part_prob",
    "instrument", "instrument_prob", "probabilities", "error", "format", "rows", "cols",
    "frames", "size", "mode", "study_uid", "series_uid", "sop_uid", "accession_key",
    "patient_key", "modality", "body_part_examined", "view_position", "laterality",
    "study_date", "model_sha256", "run_id", "created", "updated",
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
