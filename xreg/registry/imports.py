"""Import the labels a hospital already has (a CSV) as reviews.

Plan, then act. :func:`read_review_csv` reads the file into rows and
:func:`parse_labels` turns one row's label text into a body part (or a set)
and two flags: both pure, no registry. :func:`plan_import` matches each row
to a placed film (by content hash or by the source path the sort saw) and
sorts the rows into reviews to add, rows already imported, and bad rows with
the reason. :func:`import_reviews` writes the plan's reviews in one
transaction, and nothing at all if any row is bad: a half-imported file
would leave a person guessing which rows to fix and resend.

A review never overwrites the model's labels in ``images``; the import
adds review rows only, each noting the file it came from. Importing the
same file again adds nothing: a row whose film already has, as its latest
review by the same reviewer, the same labels is counted as already imported.
Error reasons name the row and never echo a path (paths may name patients).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xreg.errors import ConfigError
from xreg.model.labels import BODY_PARTS
from xreg.registry.core import Registry
from xreg.registry.reviews import NOT_MSK, Review, add_reviews, body_part_members
from xreg.sort.audit import Vocabulary, normalise

__all__ = ["BadRow", "ImportReport", "ReviewRow", "import_reviews", "known_body_parts",
           "parse_flag", "parse_labels", "plan_import", "read_review_csv"]

#: Columns a review CSV may have; ``body_part`` and one of ``sha256``/``path`` are required.
CSV_COLUMNS = ("sha256", "path", "body_part", "instrument", "fracture")
_FLAGS = {"": None, "1": 1, "0": 0, "true": 1, "false": 0, "yes": 1, "no": 0}
_SHA = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ReviewRow:
    """One CSV row as written (stripped); ``number`` counts the header as row 1."""

    number: int
    sha256: str = ""
    path: str = ""
    body_part: str = ""
    instrument: str = ""
    fracture: str = ""
    problem: str = ""  # why the row cannot be read at all (e.g. too many fields)


@dataclass(frozen=True)
class Labels:
    """One row's labels, parsed: a body part or set ``a|b``; flags 1, 0 or None."""

    body_part: str
    instrument: int | None
    fracture: int | None
    region: str | None = None  # the region word the set came from, e.g. UPPER EXTREMITY


@dataclass(frozen=True)
class BadRow:
    """A row that cannot be imported, and why (never the row's path)."""

    number: int
    reason: str


@dataclass
class ImportReport:
    """What an import found and did; ``added`` stays 0 when any row is bad or on a dry run."""

    file: str
    reviewer: str
    rows: int = 0
    reviews: list[Review] = field(default_factory=list)
    already: int = 0
    duplicates: int = 0
    bad: list[BadRow] = field(default_factory=list)
    disagree: int = 0  # reviews whose body part (set) excludes the model's
    added: int = 0
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.bad

    def labels(self) -> dict[str, int]:
        """How many reviews (to add) name each body part or set, most first."""
        return dict(Counter(r.body_part for r in self.reviews).most_common())

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` form (stable keys)."""
        return {"file": self.file, "reviewer": self.reviewer, "rows": self.rows,
                "valid": len(self.reviews), "added": self.added, "already_imported":
                self.already, "duplicates": self.duplicates, "bad": len(self.bad),
                "disagree_with_model": self.disagree, "dry_run": self.dry_run,
                "labels": self.labels(),
                "bad_rows": [{"row": b.number, "reason": b.reason} for b in self.bad]}


# -- pure: reading and parsing ------------------------------------------------

def read_review_csv(path: Path) -> list[ReviewRow]:
    """Read a review CSV (comma, semicolon or tab separated; header names any case).

    A missing ``body_part`` column, or neither ``sha256`` nor ``path``, is a
    ``ConfigError`` for the whole file. A row with more fields than the
    header comes back with its ``problem`` said, to be reported with the
    other bad rows; blank lines are skipped.
    """
    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    try:
        dialect: Any = csv.Sniffer().sniff(text.split("\n", 1)[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise ConfigError(f"{path} is empty") from None
    except csv.Error as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if "body_part" not in header or not {"sha256", "path"} & set(header):
        raise ConfigError(f"{path} needs a body_part column and a sha256 or path column "
                          f"(columns: {', '.join(CSV_COLUMNS)}; found: {', '.join(header)})")
    rows = []
    try:
        for number, values in enumerate(reader, start=2):
            if not any(v.strip() for v in values):
                continue  # a blank line, as spreadsheets leave at the end
            if len(values) > len(header):
                rows.append(ReviewRow(number, problem="more fields than the header has "
                                                      "columns"))
                continue
            cells = dict(zip(header, (v.strip() for v in values), strict=False))
            rows.append(ReviewRow(number, **{k: cells.get(k, "") for k in CSV_COLUMNS}))
    except csv.Error as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    return rows


def parse_flag(value: str, name: str) -> int | None:
    """``1/0/true/false/yes/no`` (any case) -> 1 or 0; empty -> None (not judged)."""
    key = value.strip().lower()
    if key not in _FLAGS:
        raise ValueError(f"{name} {value!r} is not 1, 0, true, false, yes, no or empty")
    return _FLAGS[key]


def parse_body_part(value: str, body_parts: Sequence[str],
                    vocabulary: Vocabulary | None = None) -> tuple[str, str | None]:
    """A body part as written -> the review's body part and the region word, if any.

    ``Hand`` -> ``hand``; ``hand|wrist`` -> a set (each member a known body
    part); ``not msk`` -> ``not_msk``; a region word of the header
    vocabulary's ``coarse`` section (``UPPER EXTREMITY``) -> the set of its
    classes the model knows, in the model's order. ``ValueError`` says why not.
    """
    def name(text: str) -> str:
        return "_".join(text.strip().lower().replace("-", " ").split())

    if not value.strip():
        raise ValueError(f"body_part is empty (a review needs one; {NOT_MSK} for a film "
                         "that is not musculoskeletal)")
    if "|" in value:
        members = tuple(dict.fromkeys(name(m) for m in value.split("|") if m.strip()))
        if NOT_MSK in members and len(members) > 1:
            raise ValueError(f"{NOT_MSK} stands alone, never in a body-part set")
        unknown = [m for m in members if m not in body_parts]
        if unknown:
            raise ValueError(f"body_part set {value!r}: {unknown[0]!r} is not a body part "
                             f"the model knows ({', '.join(body_parts)})")
        return "|".join(members), None
    single = name(value)
    if single == NOT_MSK or single in body_parts:
        return single, None
    region = normalise(value)
    covered = vocabulary.coarse.get(region) if vocabulary is not None else None
    if covered is None:
        regions = f", or a region ({', '.join(vocabulary.coarse)})" if vocabulary else ""
        raise ValueError(f"unknown body part {value!r}: give one of {', '.join(body_parts)}, "
                         f"a set such as hand|wrist, {NOT_MSK}{regions}")
    members = tuple(b for b in body_parts if b in covered)
    if not members:
        raise ValueError(f"region {value!r} covers none of the body parts the model knows")
    return "|".join(members), region


def parse_labels(row: ReviewRow, body_parts: Sequence[str],
                 vocabulary: Vocabulary | None = None) -> Labels:
    """One row's label text -> :class:`Labels`; ``ValueError`` names every bad column."""
    reasons = []
    body_part, region, flags = "", None, {}
    try:
        body_part, region = parse_body_part(row.body_part, body_parts, vocabulary)
    except ValueError as exc:
        reasons.append(str(exc))
    for name in ("instrument", "fracture"):
        try:
            flags[name] = parse_flag(getattr(row, name), name)
        except ValueError as exc:
            reasons.append(str(exc))
    if reasons:
        raise ValueError("; ".join(reasons))
    return Labels(body_part, flags["instrument"], flags["fracture"], region)


# -- the registry: matching and writing ---------------------------------------

def known_body_parts(registry: Registry) -> tuple[str, ...]:
    """The body parts the models that placed this folder's films know.

    Read from the body-part probabilities each model stored (so no model is
    loaded); the nine when no film has any.
    """
    rows = registry._db.execute(
        "SELECT probabilities FROM images WHERE rowid IN (SELECT MAX(rowid) FROM images"
        " WHERE state = 'done' AND probabilities IS NOT NULL GROUP BY model_sha256)")
    parts: dict[str, None] = {}
    for (text,) in rows:
        try:
            parts.update(dict.fromkeys(json.loads(text).get("body_part") or {}))
        except (TypeError, ValueError, AttributeError):
            continue
    return tuple(parts) or BODY_PARTS


class _Matcher:
    """Row -> the content hash of a placed film, or why there is none."""

    def __init__(self, registry: Registry) -> None:
        self._db = registry._db
        self._roots = [r[0] for r in self._db.execute(
            "SELECT DISTINCT input_root FROM runs WHERE input_root IS NOT NULL")]

    def _placed(self, sha256: str) -> tuple[str, str | None, str] | None:
        row = self._db.execute("SELECT sha256, body_part, status FROM images WHERE sha256 = ?"
                               " AND state = 'done'", (sha256,)).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def _by_path(self, path: str) -> set[str]:
        found: set[str] = set()
        for candidate in dict.fromkeys((path, os.path.normpath(path))):
            found.update(r[0] for r in self._db.execute(
                "SELECT s.sha256 FROM sources s JOIN images i USING (sha256)"
                " WHERE s.path = ? AND i.state = 'done'", (candidate,)))
        return found

    def match(self, row: ReviewRow) -> tuple[str, str | None]:
        """The film's sha256 and the model's body part; ``ValueError`` says why not."""
        if not row.sha256 and not row.path:
            raise ValueError("both sha256 and path are empty")
        sha = self._match_path(row.path) if row.path else None
        if row.sha256:
            given = row.sha256.lower()
            if not _SHA.match(given):
                raise ValueError("sha256 is not 64 hexadecimal characters")
            if sha is not None and sha != given:
                raise ValueError("sha256 and path name different films")
            sha = given
        placed = self._placed(str(sha))
        if placed is None:
            raise ValueError(f"no placed image has sha256 {str(sha)[:12]}…")
        if placed[2] == "unreadable":
            raise ValueError("that film could not be read when it was sorted: nothing to "
                             "review")
        return placed[0], placed[1]

    def _match_path(self, path: str) -> str:
        if os.path.isabs(path):
            shas = self._by_path(path)
        else:
            shas = set()
            for root in self._roots:
                shas.update(self._by_path(os.path.join(root, path)))
        if not shas:
            raise ValueError("no placed image was sorted from that path")
        if len(shas) > 1:
            raise ValueError("the relative path names different films under different runs' "
                             "input folders; give the absolute path or sha256")
        return shas.pop()


def plan_import(registry: Registry, rows: Sequence[ReviewRow], reviewer: str, *,
                file_name: str, body_parts: Sequence[str] | None = None,
                vocabulary: Vocabulary | None = None) -> ImportReport:
    """Match and check every row; nothing is written.

    ``body_parts`` default to the ones the folder's models know
    (:func:`known_body_parts`). A film named twice with the same labels is
    counted once (``duplicates``); with other labels, the later row is bad.
    """
    reviewer = " ".join(reviewer.split())
    parts = tuple(body_parts or known_body_parts(registry))
    Review("0" * 64, reviewer, NOT_MSK).check(parts)  # a bad reviewer name fails the file
    report = ImportReport(file_name, reviewer, rows=len(rows))
    matcher = _Matcher(registry)
    seen: dict[str, tuple[int, Labels]] = {}
    for row in rows:
        if row.problem:
            report.bad.append(BadRow(row.number, row.problem))
            continue
        reasons = []
        try:
            labels = parse_labels(row, parts, vocabulary)
        except ValueError as exc:
            reasons.append(str(exc))
        try:
            sha, model_part = matcher.match(row)
        except ValueError as exc:
            reasons.append(str(exc))
        if reasons:
            report.bad.append(BadRow(row.number, "; ".join(reasons)))
            continue
        key = (labels.body_part, labels.instrument, labels.fracture)
        if sha in seen:
            first, earlier = seen[sha]
            if (earlier.body_part, earlier.instrument, earlier.fracture) == key:
                report.duplicates += 1
            else:
                report.bad.append(BadRow(row.number, f"names the same film as row {first} "
                                                     "with other labels"))
            continue
        seen[sha] = (row.number, labels)
        if _latest_by(registry, sha, reviewer) == key:
            report.already += 1
            continue
        region = f" ({labels.region})" if labels.region else ""
        review = Review(sha, reviewer, labels.body_part, labels.instrument, labels.fracture,
                        f"imported from {file_name}, row {row.number}{region}")
        try:
            review.check(parts)
        except ConfigError as exc:
            report.bad.append(BadRow(row.number, str(exc)))
            continue
        report.reviews.append(review)
        if model_part not in body_part_members(labels.body_part):
            report.disagree += 1
    return report


def _latest_by(registry: Registry, sha256: str,
               reviewer: str) -> tuple[str, int | None, int | None] | None:
    row = registry._db.execute(
        "SELECT body_part, instrument, fracture FROM reviews WHERE sha256 = ? AND reviewer = ?"
        " ORDER BY id DESC LIMIT 1", (sha256, reviewer)).fetchone()
    return (row[0], row[1], row[2]) if row else None


def import_reviews(registry: Registry, path: Path, reviewer: str, *, dry_run: bool = False,
                   body_parts: Sequence[str] | None = None,
                   vocabulary: Vocabulary | None = None) -> ImportReport:
    """Read, check and (unless ``dry_run`` or a row is bad) add the CSV's reviews at once.

    One transaction: every valid row becomes a review, or, if any row is
    bad, none does. The report says which rows are bad and why.
    """
    path = Path(path)
    rows = read_review_csv(path)
    parts = tuple(body_parts or known_body_parts(registry))
    report = plan_import(registry, rows, reviewer, file_name=path.name, body_parts=parts,
                         vocabulary=vocabulary)
    report.dry_run = dry_run
    if report.ok and not dry_run and report.reviews:
        report.added = len(add_reviews(registry, report.reviews, parts))
    return report
