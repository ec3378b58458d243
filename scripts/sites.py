"""The real sources in a data folder as xreg training manifests, one per site.

    python scripts/sites.py ../shared/data WORK

writes ``WORK/<site>.csv`` for each site folder found (``fracatlas``,
``spine_cadma``, ``chest_nih``, ``shoulder_implants``); the films stay where
they are (absolute paths). Each folder's ``labels.csv`` has the FracAtlas
manifest columns; the mapping to xreg's labels:

- ``fracatlas``: :func:`fracatlas.manifest_rows` (the nine, long bones, ``other``;
  hesitant labels as sets);
- ``spine_cadma``: ``spine``; hardware unknown (some scoliosis films show rods,
  so an empty ``instrument`` is left unknown, never read as 0);
- ``chest_nih``: ``chest`` -> ``other`` (not a musculoskeletal film); hardware unknown;
- ``shoulder_implants``: ``shoulder`` with hardware (every film is an arthroplasty).

``patient_id`` and ``dup_of`` are kept, so a split never puts one patient or
one picture on both sides. Every row carries its ``source``.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from fracatlas import manifest_rows

from xreg.model.labels import EXTENDED_BODY_PARTS, OTHER

SITES = ("fracatlas", "spine_cadma", "chest_nih", "shoulder_implants")
COLUMNS = ("path", "body_part", "instrument", "fracture", "view", "patient_id", "dup_of",
           "source")


def _label(value: str) -> str:
    value = value.strip()
    return value if value in EXTENDED_BODY_PARTS else OTHER


def site_rows(folder: Path, site: str) -> list[dict[str, str]]:
    """Manifest rows for one site folder (``folder/labels.csv``)."""
    if site == "fracatlas":
        return [{**row, "source": site} for row in manifest_rows(folder)]
    with (folder / "labels.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [{
        "path": os.fspath((folder / row["path"]).resolve()),
        "body_part": _label(row["body_part"]),
        "instrument": (row.get("instrument") or "").strip(),
        "fracture": (row.get("fracture") or "").strip(),
        "view": "",
        "patient_id": (row.get("patient_id") or "").strip(),
        "dup_of": (row.get("dup_of") or "").strip(),
        "source": site,
    } for row in rows]


def write_site_manifests(data: Path, work: Path) -> dict[str, Path]:
    """``work/<site>.csv`` for every site folder under ``data``; returns site -> path."""
    work.mkdir(parents=True, exist_ok=True)
    written = {}
    for site in SITES:
        folder = data / site
        if not (folder / "labels.csv").is_file():
            continue
        out = work / f"{site}.csv"
        with out.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(site_rows(folder, site))
        written[site] = out
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the folder holding the site folders")
    parser.add_argument("work", type=Path, help="where the manifests go")
    args = parser.parse_args()
    written = write_site_manifests(args.data, args.work)
    if not written:
        print(f"no site folders with labels.csv under {args.data}", file=sys.stderr)
        return 1
    for site, path in written.items():
        print(f"{site}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
