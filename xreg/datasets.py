"""Labelled image sets for training and evaluation: a CSV manifest or a sorted folder.

A manifest has columns ``path``, ``body_part``, ``instrument`` (``0``/``1``,
empty when unknown) and optionally ``patient_id``, ``split``, ``view``
(``AP``/``LAT``, empty when unknown), ``fracture`` (``0``/``1``/empty),
``dup_of`` (the first file of a near-duplicate cluster: kept on one side of a
split) and ``source`` (the site a film comes from, e.g. ``fracatlas``; empty
when unknown: evaluation reports each site's figures). ``body_part`` may be a
set, ``hand|wrist``: the truth is one of its members (a hesitant reviewer, or
a coarse region); the first member is the primary label that single-label
metrics use. Relative paths resolve against the manifest's folder (``xreg
synth`` writes one). A folder in xreg's sort layout,
``<body_part>/<instrument|no_instrument>/...``, is labelled by where each
file lies; ``_review`` and ``_unreadable`` are skipped because nobody has
labelled what is in them (nor ``_thumbs`` and the other ``_`` folders, which
hold no films). A sorted folder with its
``registry.sqlite`` is labelled from the registry instead, where a person's
review (``xreg serve``) wins over the model's label.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from xreg.errors import ConfigError
from xreg.io import find_images
from xreg.model.labels import BODY_PARTS, INSTRUMENT_LABELS, OTHER, VIEW_LABELS

__all__ = ["PAIR_COLUMNS", "REQUIRED_COLUMNS", "HipPair", "LabelledImage", "load_labels",
           "load_pairs", "parse_body_parts"]

REQUIRED_COLUMNS = ("path", "body_part", "instrument")
PAIR_COLUMNS = ("study", "ap_path", "lateral_path")
REGISTRY_FILE = "registry.sqlite"
_INSTRUMENT_VALUES = {"0": 0, "1": 1, "": None}


@dataclass(frozen=True)
class LabelledImage:
    """One image and its ground truth; ``instrument``/``fracture`` are 1, 0 or None.

    ``body_parts`` is the set the truth lies in, primary label first (just
    ``(body_part,)`` for a sure label); ``source`` names the site (dataset) a
    film comes from, from a manifest's ``source`` column or a multi-source
    training run; empty when unknown.
    """

    path: Path
    body_part: str
    instrument: int | None
    patient_id: str | None
    split: str | None
    view: str | None = None  # AP, LAT or None (unknown)
    fracture: int | None = None
    body_parts: tuple[str, ...] = ()
    dup_of: str | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if not self.body_parts:
            object.__setattr__(self, "body_parts", (self.body_part,))


def source_body_part(row: dict[str, str], known: Sequence[str]) -> str:
    """A public source's ``labels.csv`` row's body part as a manifest value: a label
    not in ``known`` is ``other`` (when known), and a hesitant one (``label_sure`` 0)
    is the set ``body_part|label_alt`` (``hand|wrist``; ``unclear`` adds nothing)."""
    def mapped(label: str) -> str:
        label = label.strip()
        return label if label in known or OTHER not in known else OTHER

    members = [mapped(m) for m in (row.get("body_part") or "").split("|") if m.strip()]
    alt = (row.get("label_alt") or "").strip()
    if (row.get("label_sure") or "1").strip() == "0" and alt and alt != "unclear":
        members.append(mapped(alt))
    return "|".join(dict.fromkeys(members))


def parse_body_parts(value: str, known: Sequence[str]) -> tuple[str, ...]:
    """``"hand|wrist"`` -> ``("hand", "wrist")``; ``ValueError`` names an unknown member."""
    members = tuple(dict.fromkeys(v.strip() for v in value.split("|") if v.strip()))
    if not members:
        raise ValueError("empty")
    unknown = [m for m in members if m not in known]
    if unknown:
        raise ValueError(f"unknown body part {unknown[0]!r}; known: {', '.join(known)}")
    return members


def load_labels(data: Path, body_parts: Sequence[str] = BODY_PARTS, *,
                reviewed_only: bool = False, lenient: bool = False) -> list[LabelledImage]:
    """Read the labelled images of a manifest CSV or a sort-layout folder, sorted by path.

    ``body_parts`` are the labels a body part may take (a model card's head).
    A sorted folder with a registry is labelled from the registry: a
    person's review wins over the model, and ``reviewed_only`` keeps only
    reviewed films. An unreadable manifest, a missing column, an unknown
    body part or a bad instrument value raises ``ConfigError`` naming the
    row and column.

    ``lenient`` reads a source's own ``labels.csv`` as it comes (``xreg adapt
    --replay-data``): a view other than AP or LAT (``oblique``) is unknown, and
    a body part the model does not know (``chest``) is ``other`` when the model
    has that class, and a hesitant label (``label_sure`` 0 with a ``label_alt``)
    is the set of both (:func:`source_body_part`), as the source's README asks.
    """
    data = Path(data)
    registry = _registry_rows(data, body_parts, reviewed_only)
    if registry is not None:
        images = registry
    elif reviewed_only:
        raise ConfigError(f"--reviewed-only needs a sorted folder with a registry; {data} "
                          f"has no {REGISTRY_FILE}")
    elif data.is_dir():
        images = _from_folder(data, body_parts)
    elif data.is_file():
        images = _from_manifest(data, body_parts, lenient)
    else:
        raise ConfigError(f"no labelled data at {data} (expected a CSV file or a folder)")
    if not images:
        raise ConfigError(f"{data} holds no labelled images")
    return sorted(images, key=lambda im: str(im.path))


def _from_manifest(path: Path, body_parts: Sequence[str], lenient: bool = False
                   ) -> list[LabelledImage]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            header = rows[0].keys() if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"cannot read manifest {path}: {exc}") from None
    if not rows:
        raise ConfigError(f"manifest {path} has no rows")
    for column in REQUIRED_COLUMNS:
        if column not in header:
            raise ConfigError(f"manifest {path} has no column {column!r} "
                              f"(required: {', '.join(REQUIRED_COLUMNS)})")
    root = path.parent
    images = []
    # Row numbers count the header as row 1, as a spreadsheet shows them.
    for number, row in enumerate(rows, start=2):
        def bad(column: str, why: str, row_number: int = number) -> ConfigError:
            return ConfigError(f"manifest {path}, row {row_number}, column {column!r}: {why}")

        if None in row:
            raise bad("path", "more fields than the header has columns")
        rel = (row["path"] or "").strip()
        if not rel:
            raise bad("path", "empty")
        raw_part = source_body_part(row, body_parts) if lenient else row["body_part"] or ""
        try:
            members = parse_body_parts(raw_part, body_parts)
        except ValueError as exc:
            raise bad("body_part", str(exc)) from None
        raw = (row["instrument"] or "").strip()
        if raw not in _INSTRUMENT_VALUES:
            raise bad("instrument", f"{raw!r} is not 0, 1 or empty")
        fracture = (row.get("fracture") or "").strip()
        if fracture not in _INSTRUMENT_VALUES:
            raise bad("fracture", f"{fracture!r} is not 0, 1 or empty")
        view = (row.get("view") or "").strip().upper() or None
        if view is not None and view not in VIEW_LABELS and lenient:
            view = None
        if view is not None and view not in VIEW_LABELS:
            raise bad("view", f"{view!r} is not {', '.join(VIEW_LABELS)} or empty")
        images.append(LabelledImage(
            path=root / rel, body_part=members[0], instrument=_INSTRUMENT_VALUES[raw],
            patient_id=(row.get("patient_id") or "").strip() or None,
            split=(row.get("split") or "").strip() or None, view=view,
            fracture=_INSTRUMENT_VALUES[fracture], body_parts=members,
            dup_of=(row.get("dup_of") or "").strip() or None,
            source=(row.get("source") or "").strip(),
        ))
    return images


def _registry_rows(root: Path, body_parts: Sequence[str],
                   reviewed_only: bool) -> list[LabelledImage] | None:
    """A sorted folder's films labelled by its registry (reviews first, then the model).

    None when ``root`` has no registry xreg can read: then its folders label it.
    """
    from xreg.errors import RegistryError
    from xreg.registry import Registry
    from xreg.registry.export import manifest_rows

    if not (root.is_dir() and (root / REGISTRY_FILE).is_file()):
        return None
    images = []
    try:
        with Registry(root / REGISTRY_FILE, readonly=True) as registry:
            rows = list(manifest_rows(registry, root, reviewed_only=reviewed_only,
                                      other=OTHER if OTHER in body_parts else None))
    except RegistryError:
        return None
    for row in rows:
        # A set review (hand|wrist) trains as a set, as a manifest's does.
        try:
            members = parse_body_parts(row["body_part"], body_parts)
        except ValueError:
            raise ConfigError(f"{row['path']}: body part {row['body_part']!r} is not one of "
                              f"{', '.join(body_parts)}") from None
        path = Path(row["path"])
        if not path.exists():
            continue  # removed from OUT by hand since it was placed
        images.append(LabelledImage(
            path, members[0], _INSTRUMENT_VALUES[row["instrument"]],
            row["patient_id"] or None, None, fracture=_INSTRUMENT_VALUES[row["fracture"]],
            body_parts=members))
    return images


def _from_folder(root: Path, body_parts: Sequence[str]) -> list[LabelledImage]:
    images = []
    for path in find_images(root):
        parts = path.relative_to(root).parts
        # _review, _unreadable: nobody labelled them; _thumbs, _heatmaps: not films.
        if parts[0].startswith("_"):
            continue
        if len(parts) < 3:
            raise ConfigError(f"{path} is not under <body_part>/<instrument|no_instrument>/ "
                              f"in {root}")
        body_part, instrument = parts[0], parts[1]
        if body_part not in body_parts:
            raise ConfigError(f"{path}: folder {body_part!r} is not a body part; "
                              f"known: {', '.join(body_parts)}")
        if instrument not in INSTRUMENT_LABELS:
            raise ConfigError(f"{path}: folder {instrument!r} is not one of "
                              f"{', '.join(INSTRUMENT_LABELS)}")
        images.append(LabelledImage(path, body_part, INSTRUMENT_LABELS.index(instrument),
                                    None, None))
    return images


@dataclass(frozen=True)
class HipPair:
    """One hip study's AP and lateral film; ``fracture`` is 1, 0 or None (unknown)."""

    study: str
    ap: Path
    lateral: Path
    fracture: int | None
    patient_id: str | None = None
    split: str | None = None


def load_pairs(path: Path, *, need_fracture: bool = False) -> list[HipPair]:
    """Read a pairs CSV: study, ap_path, lateral_path, optional fracture, patient_id, split.

    ``xreg synth --hip-pairs`` writes one (``hip_pairs.csv``); ``xreg hip
    --pairs`` reads the same columns. Relative paths resolve against the CSV's
    folder. ``need_fracture`` refuses a file without fracture labels.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            header = list(rows[0].keys()) if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"cannot read pairs file {path}: {exc}") from None
    if not rows:
        raise ConfigError(f"pairs file {path} has no rows")
    for column in PAIR_COLUMNS + (("fracture",) if need_fracture else ()):
        if column not in header:
            raise ConfigError(f"pairs file {path} has no column {column!r} "
                              f"(required: {', '.join(PAIR_COLUMNS)}, fracture to train)")
    pairs, seen = [], set()
    for number, row in enumerate(rows, start=2):
        def bad(column: str, why: str, row_number: int = number) -> ConfigError:
            return ConfigError(f"pairs file {path}, row {row_number}, column {column!r}: {why}")

        values = {k: (row.get(k) or "").strip() for k in (*PAIR_COLUMNS, "fracture")}
        for column in PAIR_COLUMNS:
            if not values[column]:
                raise bad(column, "empty")
        if values["study"] in seen:
            raise bad("study", f"study {values['study']!r} appears twice")
        seen.add(values["study"])
        if values["fracture"] not in _INSTRUMENT_VALUES:
            raise bad("fracture", f"{values['fracture']!r} is not 0, 1 or empty")
        pairs.append(HipPair(
            study=values["study"], ap=path.parent / values["ap_path"],
            lateral=path.parent / values["lateral_path"],
            fracture=_INSTRUMENT_VALUES[values["fracture"]],
            patient_id=(row.get("patient_id") or "").strip() or None,
            split=(row.get("split") or "").strip() or None,
        ))
    if need_fracture and all(p.fracture is None for p in pairs):
        raise ConfigError(f"pairs file {path} labels no study's fracture")
    return pairs
