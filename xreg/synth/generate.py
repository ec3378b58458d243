"""Render a planned phantom dataset and write it: images plus ``labels.csv``.

``plan_dataset`` (pure, in :mod:`xreg.synth.plan`) decides every file;
:func:`generate_dataset` renders each item, writes it with the format's
writer and records the labels. Every file depends only on its item, so the
output is byte-identical for the same arguments whatever the worker count.

OUT must be empty, missing, or hold a previous ``xreg synth`` output (its
``.xreg-synth`` marker or ``labels.csv``). A previous output is replaced:
its ``images/img_NNNNNN*`` files and ``labels.csv`` are deleted first, any
other file is left alone. Anything else is refused with a ConfigError.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from xreg.errors import ConfigError
from xreg.synth.plan import FORMATS, IMAGE_DIR, Item, plan_dataset
from xreg.synth.spec import Phantom, PhantomSpec
from xreg.synth.writers import write_dicom, write_jpeg, write_png16

__all__ = ["LABEL_COLUMNS", "OUT_OF_SCOPE_DIR", "Item", "SynthSummary", "generate_dataset",
           "label_row", "plan_dataset", "render_phantom", "write_out_of_scope"]

LABELS_NAME = "labels.csv"
PAIRS_NAME = "hip_pairs.csv"  # one row per --hip-pairs study
OUT_OF_SCOPE_DIR = "out_of_scope"  # OUT/out_of_scope/ and OUT/out_of_scope.csv
MARKER_NAME = ".xreg-synth"
LABEL_COLUMNS = ("path", "body_part", "instrument", "instrument_kind", "distractors", "view",
                 "laterality", "patient_id", "study_id", "pair_role", "fracture", "format",
                 "seed", "body_part_examined")
_OUR_FILE = re.compile(
    r"(\.)?((img|oos)_\d{6}|ST\d+_(AP|LAT))(\.png|\.jpg|\.dcm)?(\.tmp)?")
#: Below this many items a process pool costs more than it saves.
_MIN_PARALLEL = 16


class Reporter(Protocol):
    """How generation tells its caller about progress (the CLI draws a bar)."""

    def start(self, total: int) -> None: ...
    def advance(self, outcome: Any) -> None: ...


@dataclass(frozen=True)
class SynthSummary:
    """What ``generate_dataset`` wrote."""

    out: Path
    labels: Path
    images: int
    hip_pairs: int
    instrument: int
    fractures: int
    by_body_part: dict[str, int] = field(default_factory=dict)
    by_format: dict[str, int] = field(default_factory=dict)
    contact_sheet: Path | None = None
    seconds: float = 0.0
    out_of_scope: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "labels": str(self.labels), "images": self.images,
                "hip_pairs": self.hip_pairs, "instrument": self.instrument,
                "fractures": self.fractures, "out_of_scope": self.out_of_scope,
                "by_body_part": self.by_body_part,
                "by_format": self.by_format, "seconds": round(self.seconds, 3),
                "contact_sheet": str(self.contact_sheet) if self.contact_sheet else None}


def render_phantom(spec: PhantomSpec) -> Phantom:
    """Render one phantom with :func:`xreg.synth.render.render_phantom` (imported lazily)."""
    from xreg.synth.render import render_phantom as render

    phantom: Phantom = render(spec)
    return phantom


def label_row(item: Item) -> dict[str, str]:
    """The ``labels.csv`` row of one item (all values as strings)."""
    spec = item.spec
    return {
        "path": item.path, "body_part": spec.body_part,
        "instrument": "1" if spec.instrument else "0", "instrument_kind": spec.instrument or "",
        "distractors": ";".join(spec.distractors), "view": spec.view,
        "laterality": item.laterality_label, "patient_id": item.patient_id,
        "study_id": item.study_id, "pair_role": item.pair_role,
        "fracture": ("1" if spec.fracture else "0") if item.pair_role else "",
        "format": item.format, "seed": str(spec.seed),
        # What the DICOM header says (empty or wrong on purpose for some, as in archives).
        "body_part_examined": item.dicom_header.body_part_examined
        if item.dicom_header is not None else "",
    }


def _write_item(job: tuple[Item, str]) -> str:
    """Render and write one item under ``root``; runs in a worker process."""
    item, root = job
    image = render_phantom(item.spec).image
    path = os.path.join(root, *item.path.split("/"))
    if item.format == "png16":
        write_png16(image, path)
    elif item.format == "jpeg":
        write_jpeg(image, path, item.jpeg_quality)
    else:
        assert item.dicom_header is not None and item.dicom_variant is not None
        write_dicom(image, path, item.dicom_header, item.dicom_variant)
    return item.path


def _is_previous_output(out: Path) -> bool:
    if (out / MARKER_NAME).is_file():
        return True
    labels = out / LABELS_NAME
    if not labels.is_file():
        return False
    with open(labels, encoding="utf-8", newline="") as fh:
        return tuple(next(csv.reader(fh), ())) == LABEL_COLUMNS


def _prepare_out(out: Path, params: dict[str, Any]) -> None:
    """Check OUT is ours to write, clear a previous output's images, drop the marker."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"OUT {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not _is_previous_output(out):
            raise ConfigError(f"OUT {out} is not empty and holds no previous 'xreg synth' "
                              f"output ({LABELS_NAME}); choose an empty or new folder")
        for folder in (out / IMAGE_DIR, out / OUT_OF_SCOPE_DIR):
            if folder.is_dir():
                for entry in folder.iterdir():
                    if entry.is_file() and _OUR_FILE.fullmatch(entry.name):
                        entry.unlink()
        (out / LABELS_NAME).unlink(missing_ok=True)
        (out / f"{OUT_OF_SCOPE_DIR}.csv").unlink(missing_ok=True)
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    (out / MARKER_NAME).write_text(json.dumps(params, sort_keys=True) + "\n", encoding="utf-8")


def _run(items: list[Item], root: str, workers: int) -> Iterator[str]:
    jobs = [(item, root) for item in items]
    if workers <= 1 or len(items) < _MIN_PARALLEL:
        yield from map(_write_item, jobs)
        return
    # fork: workers inherit the imported renderer (and any test stand-in) at no cost.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    chunk = max(1, min(32, len(items) // (workers * 8)))
    with ctx.Pool(workers) as pool:
        yield from pool.imap_unordered(_write_item, jobs, chunksize=chunk)


def _write_labels(out: Path, items: Iterable[Item]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LABEL_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(label_row(item) for item in items)
    path = out / LABELS_NAME
    tmp = out / f".{LABELS_NAME}.tmp"
    tmp.write_text(buf.getvalue(), encoding="utf-8", newline="")
    os.replace(tmp, path)
    return path


def _write_pairs(out: Path, items: Iterable[Item]) -> Path | None:
    """``hip_pairs.csv``: study, ap_path, lateral_path, fracture, patient_id, side."""
    studies: dict[str, dict[str, Item]] = {}
    for item in items:
        if item.pair_role:
            studies.setdefault(item.study_id, {})[item.pair_role] = item
    path = out / PAIRS_NAME
    path.unlink(missing_ok=True)
    if not studies:
        return None
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["study", "ap_path", "lateral_path", "fracture", "fracture_kind",
                     "patient_id", "side"])
    for study, views in studies.items():
        ap, lat = views["AP"], views["LAT"]
        writer.writerow([study, ap.path, lat.path, int(bool(ap.spec.fracture)),
                         ap.spec.fracture or "", ap.patient_id, ap.spec.laterality])
    tmp = out / f".{PAIRS_NAME}.tmp"
    tmp.write_text(buf.getvalue(), encoding="utf-8", newline="")
    os.replace(tmp, path)
    return path


def generate_dataset(
    out: str | os.PathLike[str],
    count: int,
    seed: int,
    *,
    size: int = 1024,
    formats: tuple[str, ...] = FORMATS,
    instrument_rate: float = 0.15,
    hip_pairs: int = 0,
    fracture_rate: float = 0.45,
    workers: int | None = None,
    contact_sheet: str | os.PathLike[str] | None = None,
    reporter: Reporter | None = None,
    out_of_scope: int = 0,
) -> SynthSummary:
    """Render ``count`` phantoms plus ``hip_pairs`` AP+LAT hip studies into ``out``.

    Writes ``out/images/...`` and ``out/labels.csv`` (columns
    :data:`LABEL_COLUMNS`, in plan order), and a contact sheet PNG when
    ``contact_sheet`` is given, and ``out_of_scope`` images that are none of
    the body parts (see :func:`write_out_of_scope`). ``workers`` processes render in parallel
    (default: the CPU count). Raises ConfigError for bad arguments or an
    OUT that holds something other than a previous synth output.
    """
    started = time.monotonic()
    root = Path(out)
    if out_of_scope < 0:
        raise ConfigError(f"out_of_scope must be >= 0, not {out_of_scope}")
    # Only out-of-scope images is a valid request (a calibration set).
    items = [] if count == hip_pairs == 0 and out_of_scope else plan_dataset(
        count, seed, size=size, formats=tuple(formats), instrument_rate=instrument_rate,
        hip_pairs=hip_pairs, fracture_rate=fracture_rate)
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be >= 1, not {workers}")
    params = {"count": count, "seed": seed, "size": size, "formats": list(formats),
              "instrument_rate": instrument_rate, "hip_pairs": hip_pairs,
              "fracture_rate": fracture_rate, "out_of_scope": out_of_scope}
    _prepare_out(root, params)
    if reporter is not None:
        reporter.start(len(items))
    for path in _run(items, str(root), workers or os.cpu_count() or 1):
        if reporter is not None:
            reporter.advance(path)
    labels = _write_labels(root, items)
    _write_pairs(root, items)
    write_out_of_scope(root, out_of_scope, seed, size)
    sheet = None
    if contact_sheet is not None:
        from xreg.synth.sheet import write_contact_sheet

        sheet = Path(contact_sheet)
        write_contact_sheet(sheet, seed=seed, renderer=render_phantom)
    return SynthSummary(
        out=root, labels=labels, images=len(items), hip_pairs=hip_pairs,
        instrument=sum(1 for i in items if i.spec.instrument),
        fractures=sum(1 for i in items if i.spec.fracture and i.pair_role == "AP"),
        by_body_part=dict(sorted(Counter(i.spec.body_part for i in items).items())),
        by_format=dict(sorted(Counter(i.format for i in items).items())),
        contact_sheet=sheet, seconds=time.monotonic() - started, out_of_scope=out_of_scope,
    )


def write_out_of_scope(out: Path, count: int, seed: int, size: int) -> Path | None:
    """Write ``count`` images that are none of the body parts, and their manifest.

    Chest, skull, abdomen and blank radiographs (16-bit PNG and JPEG in turn)
    and colour photographs, cycled, into ``out/out_of_scope/``; the manifest
    ``out/out_of_scope.csv`` has columns path, kind, format, seed. They are
    kept out of ``labels.csv`` because no body part label is right for them.
    """
    from PIL import Image

    from xreg.synth.out_of_scope import OUT_OF_SCOPE_FILES, render_out_of_scope, render_photo

    if count <= 0:
        return None
    folder = out / OUT_OF_SCOPE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        kind = OUT_OF_SCOPE_FILES[i % len(OUT_OF_SCOPE_FILES)]
        item_seed = seed * 1_000_003 + i
        if kind == "photo":
            name, fmt = f"oos_{i:06d}.jpg", "jpeg"
            tmp = folder / f".{name}.tmp"
            Image.fromarray(render_photo(item_seed, size), "RGB").save(tmp, "JPEG", quality=90)
            os.replace(tmp, folder / name)
        elif i % 2:
            name, fmt = f"oos_{i:06d}.jpg", "jpeg"
            write_jpeg(render_out_of_scope(kind, item_seed, size), folder / name)
        else:
            name, fmt = f"oos_{i:06d}.png", "png16"
            write_png16(render_out_of_scope(kind, item_seed, size), folder / name)
        rows.append(f"{OUT_OF_SCOPE_DIR}/{name},{kind},{fmt},{item_seed}\n")
    path = out / f"{OUT_OF_SCOPE_DIR}.csv"
    tmp = out / f".{OUT_OF_SCOPE_DIR}.csv.tmp"
    tmp.write_text("path,kind,format,seed\n" + "".join(rows), encoding="utf-8")
    os.replace(tmp, path)
    return path
