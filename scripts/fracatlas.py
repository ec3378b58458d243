"""FracAtlas's labels as an xreg training manifest (the films stay where they are).

    python scripts/fracatlas.py ../shared/data/fracatlas fracatlas.csv

FracAtlas (Abedeen et al., Scientific Data 10, 521, 2023; CC BY 4.0) labels
hardware, fractures, views and coarse regions; the body part of each film
comes from a visual review shipped with the data (``labels.csv``). Mapping:

- the thesis's nine and ``forearm, humerus, lower_leg, femur`` are kept;
  ``chest``, ``multi`` and ``unclear`` become ``other``;
- a hesitant label (``label_sure=0``) becomes the set ``{body_part, label_alt}``
  (``hand|wrist``), which the training loss treats as "one of these";
- ``view``: frontal -> AP, lateral -> LAT, oblique or several views -> unknown;
- ``patient_id`` (a study block) and ``dup_of`` (near-duplicate cluster) are
  kept so the split never puts one study or one picture on both sides.

Paths in the manifest are absolute; nothing from the data folder is copied.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

from xreg.datasets import source_body_part
from xreg.model.models import EXTENDED_BODY_PARTS

COLUMNS = ("path", "body_part", "instrument", "fracture", "view", "patient_id", "dup_of",
           "truncated")
_VIEWS = {"frontal": "AP", "lateral": "LAT"}


def body_part_set(row: dict[str, str]) -> str:
    """The manifest's body_part value: one label, or ``a|b`` for a hesitant one."""
    return source_body_part(row, EXTENDED_BODY_PARTS)


def manifest_rows(data: Path) -> list[dict[str, str]]:
    """One manifest row per film of ``data/labels.csv``."""
    with (data / "labels.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [{
        "path": os.fspath((data / row["path"]).resolve()),
        "body_part": body_part_set(row),
        "instrument": row["instrument"].strip(),
        "fracture": row["fracture"].strip(),
        "view": _VIEWS.get(row["view"].strip(), ""),
        "patient_id": row["patient_id"].strip(),
        "dup_of": row["dup_of"].strip(),
        "truncated": row.get("truncated", "0").strip(),
    } for row in rows]


def write_manifest(data: Path, out: Path) -> int:
    """Write the manifest for the FracAtlas folder ``data`` to ``out``; return its rows."""
    rows = manifest_rows(Path(data))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out)
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the FracAtlas folder (with labels.csv)")
    parser.add_argument("out", type=Path, help="manifest CSV to write")
    args = parser.parse_args()
    print(f"wrote {write_manifest(args.data, args.out)} rows to {args.out}")


if __name__ == "__main__":
    main()
