"""The SQLite registry: what the model said about every file and where it went.

One database per output folder (``OUT/registry.sqlite``), WAL mode, schema
version in ``PRAGMA user_version``. Rows are committed one file at a time so a
run killed at any moment leaves a registry that agrees with the disk.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import json
import socket
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xreg.errors import RegistryError
from xreg.registry._schema import _MIGRATIONS, HIP_FIELDS
from xreg.registry.pseudonym import Pseudonymiser as Pseudonymiser  # re-exported for callers

SCHEMA_VERSION = len(_MIGRATIONS)

# Columns of ``images`` a caller may set through ImageRecord.fields.
IMAGE_FIELDS: tuple[str, ...] = (
    "format", "body_part", "body_part_prob", "instrument", "instrument_prob",
    "probabilities", "error", "rows", "cols", "frames", "study_uid", "series_uid",
    "sop_uid", "accession_key", "patient_key", "modality", "body_part_examined",
    "view_position", "laterality", "study_date", "model_sha256",
    "scope", "review_reason", "fracture", "fracture_prob", "warning",
    "header_audit", "header_term", "header_class", "header_tag", "header_view_audit",
    "study_key",
)


@dataclass(frozen=True)
class ImageRecord:
    """One content hash's row: where it goes and what the model said."""

    sha256: str
    size: int
    status: str
    dest_path: str
    mode: str
    source: str
    mtime_ns: int
    fields: Mapping[str, Any]
    origin: str | None = None  # sources.origin: who sent it (xreg listen, xreg pull)


@dataclass(frozen=True)
class StoredImage:
    """The registry's view of a content hash."""

    sha256: str
    state: str
    status: str
    dest_path: str
    mode: str


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Registry:
    """A connection to one registry database. Use as a context manager.

    ``readonly`` opens an existing database without creating or migrating it
    (what ``--dry-run`` and ``registry stats`` need).
    """

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly and not self.path.exists():
            raise RegistryError(f"no registry at {self.path}")
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        target = f"file:{self.path}?mode=ro" if readonly else str(self.path)
        self._db = sqlite3.connect(target, uri=readonly, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        try:
            if not readonly:
                self._db.execute("PRAGMA journal_mode=WAL")
                # NORMAL in WAL mode survives a killed process; FULL would add
                # an fsync per commit for power-loss durability not promised.
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise RegistryError(f"{self.path} is not an SQLite database ({exc})") from None

    # -- lifecycle -----------------------------------------------------------
    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RegistryError(
                f"{self.path} has schema version {version}; this xreg knows up to "
                f"{SCHEMA_VERSION}. Upgrade xreg."
            )
        if version == SCHEMA_VERSION:
            return
        if self.readonly:
            raise RegistryError(f"{self.path} needs a schema upgrade; run xreg sort once")
        for target in range(version, SCHEMA_VERSION):
            with self._transaction():
                self._db.executescript(_MIGRATIONS[target])
            self._db.execute(f"PRAGMA user_version = {target + 1}")

    def _transaction(self) -> sqlite3.Connection:
        # isolation_level=None means autocommit; `with db:` still commits or
        # rolls back, and BEGIN IMMEDIATE takes the write lock up front.
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    # -- runs ----------------------------------------------------------------
    def start_run(
        self,
        *,
        xreg_version: str,
        input_root: str,
        output_root: str,
        model_path: str,
        model_name: str,
        model_sha256: str,
        options: Mapping[str, Any],
        runtime: str | None = None,
        header_check: str | None = None,
        group_by: str | None = None,
        intake: str | None = None,
    ) -> int:
        """Record the start of a run and return its id.

        ``runtime`` names the engine that ran the model and its version
        (``onnxruntime 1.32.0``); ``model_sha256`` is the checkpoint's either way.
        ``header_check`` is the run's ``--header-check`` mode (review | off);
        ``group_by`` its ``--group-by`` pattern, if any; ``intake`` how its films
        arrived (folder | listen | pull).
        """
        with self._transaction() as db:
            cur = db.execute(
                "INSERT INTO runs (started, status, xreg_version, user, host, input_root,"
                " output_root, model_path, model_name, model_sha256, options, runtime,"
                " header_check, group_by, intake)"
                " VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (_now(), xreg_version, _user(), socket.gethostname(), input_root,
                 output_root, model_path, model_name, model_sha256,
                 json.dumps(dict(options), sort_keys=True, default=str), runtime,
                 header_check, group_by, intake),
            )
        return int(cur.lastrowid or 0)

    def record_counts(self, run_id: int, counts: Mapping[str, int]) -> None:
        """Update a running run's counts (a listener's run spans many batches)."""
        with self._transaction() as db:
            db.execute("UPDATE runs SET counts = ? WHERE id = ?",
                       (json.dumps(dict(counts), sort_keys=True), run_id))

    def finish_run(self, run_id: int, counts: Mapping[str, int], status: str = "finished", *,
                   shift_held: int | None = None, shift_share: float | None = None,
                   new_site: bool | None = None) -> None:
        """Record the end of a run: its counts and, for a sort, how many films were held
        back as unlike the training films, their share, and whether it looks like a
        new site (NULL where not known, e.g. ``xreg hip``)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE runs SET finished = ?, status = ?, counts = ?, shift_held = ?,"
                " shift_share = ?, new_site = ? WHERE id = ?",
                (_now(), status, json.dumps(dict(counts), sort_keys=True), shift_held,
                 shift_share, None if new_site is None else int(new_site), run_id),
            )

    # -- images and sources --------------------------------------------------
    def get_image(self, sha256: str) -> StoredImage | None:
        row = self._db.execute(
            "SELECT sha256, state, status, dest_path, mode FROM images WHERE sha256 = ?",
            (sha256,),
        ).fetchone()
        return StoredImage(**dict(row)) if row else None

    def done_hashes(self) -> set[str]:
        """Content hashes already placed; their files need no decoding."""
        return {r[0] for r in self._db.execute("SELECT sha256 FROM images WHERE state = 'done'")}

    def known_source(self, path: str, size: int, mtime_ns: int) -> tuple[str, bool] | None:
        """(sha256, removed) of a source path seen before with this size and mtime."""
        row = self._db.execute(
            "SELECT s.sha256, s.removed FROM sources s JOIN images i USING (sha256)"
            " WHERE s.path = ? AND s.size = ? AND s.mtime_ns = ? AND i.state = 'done'",
            (path, size, mtime_ns),
        ).fetchone()
        return (row[0], bool(row[1])) if row else None

    def begin_images(self, run_id: int, records: list[ImageRecord]) -> None:
        """Journal planned placements (image row + source row) before any file is touched.

        A run killed after this commit leaves ``pending`` rows that the next
        run resolves with :meth:`pending_images`: kept if the destination is
        complete, discarded otherwise.
        """
        now = _now()
        with self._transaction() as db:
            for rec in records:
                unknown = set(rec.fields) - set(IMAGE_FIELDS)
                if unknown:
                    raise RegistryError(f"unknown image fields {sorted(unknown)}")
                cols = ["sha256", "size", "state", "status", "dest_path", "mode",
                        "run_id", "created", "updated", *rec.fields]
                values = [rec.sha256, rec.size, "pending", rec.status, rec.dest_path,
                          rec.mode, run_id, now, now, *rec.fields.values()]
                db.execute(
                    f"INSERT OR REPLACE INTO images ({', '.join(cols)})"
                    f" VALUES ({', '.join('?' * len(cols))})",
                    values,
                )
                self._upsert_source(db, rec.source, rec.sha256, rec.size, rec.mtime_ns, run_id,
                                    rec.origin)

    def complete_image(self, sha256: str, dest_path: str) -> None:
        """Mark a journalled image as placed at ``dest_path`` (one commit)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE images SET state = 'done', dest_path = ?, updated = ? WHERE sha256 = ?",
                (dest_path, _now(), sha256),
            )

    def add_source(self, sha256: str, source: str, size: int, mtime_ns: int, run_id: int,
                   origin: str | None = None) -> None:
        """Record another path at which already-placed content was seen."""
        with self._transaction() as db:
            self._upsert_source(db, source, sha256, size, mtime_ns, run_id, origin)

    def mark_source_removed(self, source: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE sources SET removed = 1 WHERE path = ?", (source,))

    def placed_sop_uids(self, sop_uids: list[str]) -> dict[str, str]:
        """SOP Instance UID -> sha256 of those among ``sop_uids`` already placed."""
        found: dict[str, str] = {}
        for start in range(0, len(sop_uids), 500):
            chunk = sop_uids[start:start + 500]
            found.update((r[0], r[1]) for r in self._db.execute(
                f"SELECT sop_uid, sha256 FROM images WHERE state = 'done' AND sop_uid IN"
                f" ({', '.join('?' * len(chunk))})", chunk))
        return found

    def pending_images(self) -> list[tuple[StoredImage, list[str]]]:
        """Journalled but unfinished placements, each with its source paths."""
        rows = self._db.execute(
            "SELECT sha256, state, status, dest_path, mode FROM images WHERE state = 'pending'"
        ).fetchall()
        out = []
        for r in rows:
            sources = [s[0] for s in self._db.execute(
                "SELECT path FROM sources WHERE sha256 = ?", (r["sha256"],))]
            out.append((StoredImage(**dict(r)), sources))
        return out

    def discard_pending(self, sha256: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM sources WHERE sha256 = ?", (sha256,))
            db.execute("DELETE FROM images WHERE sha256 = ? AND state = 'pending'", (sha256,))

    @staticmethod
    def _upsert_source(
        db: sqlite3.Connection, path: str, sha256: str, size: int, mtime_ns: int, run_id: int,
        origin: str | None = None,
    ) -> None:
        db.execute(
            "INSERT INTO sources (path, sha256, size, mtime_ns, run_id, seen, origin)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(path) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size,"
            " mtime_ns = excluded.mtime_ns, run_id = excluded.run_id, seen = excluded.seen,"
            " removed = 0, origin = excluded.origin",
            (path, sha256, size, mtime_ns, run_id, _now(), origin),
        )

    # -- queries ---------------------------------------------------------------
    def stats(self) -> list[dict[str, Any]]:
        """Counts of placed images per status, scope, body part, instrument and fracture."""
        rows = self._db.execute(
            "SELECT i.status, i.scope, i.body_part, i.instrument, i.fracture,"
            " COUNT(DISTINCT i.sha256) AS images, COUNT(s.path) AS sources"
            " FROM images i LEFT JOIN sources s USING (sha256) WHERE i.state = 'done'"
            " GROUP BY i.status, i.scope, i.body_part, i.instrument, i.fracture"
            " ORDER BY i.status, i.scope, i.body_part, i.instrument, i.fracture"
        ).fetchall()
        return [dict(r) for r in rows]

    def header_audit_counts(self) -> list[dict[str, Any]]:
        """Placed DICOM films per header verdict (body part, then view)."""
        return [dict(r) for r in self._db.execute(
            "SELECT header_audit AS verdict, header_view_audit AS view, COUNT(*) AS images"
            " FROM images WHERE state = 'done' AND header_audit IS NOT NULL"
            " GROUP BY 1, 2 ORDER BY 1, 2")]

    def iter_images(self) -> Iterator[dict[str, Any]]:
        """Every placed image with its source paths (a list), for export."""
        cur = self._db.execute(
            "SELECT i.*, (SELECT json_group_array(path) FROM sources s"
            " WHERE s.sha256 = i.sha256) AS source_paths"
            " FROM images i WHERE state = 'done' ORDER BY dest_path"
        )
        for row in cur:
            item = dict(row)
            item["source_paths"] = json.loads(item["source_paths"] or "[]")
            yield item

    def runs(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._db.execute("SELECT * FROM runs ORDER BY id")]

    # -- hip studies -----------------------------------------------------------
    def add_hip_study(self, run_id: int | None, row: Mapping[str, Any]) -> int:
        """Record one hip study (paired and scored, or why not); return its id."""
        unknown = set(row) - set(HIP_FIELDS)
        if unknown:
            raise RegistryError(f"unknown hip_studies column(s): {sorted(unknown)}")
        columns = ["run_id", "created", *row]
        with self._transaction() as db:
            cur = db.execute(
                f"INSERT INTO hip_studies ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' for _ in columns)})",
                [run_id, _now(), *row.values()])
        return int(cur.lastrowid or 0)

    def classified_images(self) -> list[dict[str, Any]]:
        """Placed, classified images with what ``xreg hip`` needs: headers and
        probabilities, one row per source path seen (a file name may carry the
        study and view, and the same content may have been filed under two names)."""
        return [dict(r) for r in self._db.execute(
            "SELECT i.sha256, i.dest_path, i.body_part, i.body_part_examined, i.probabilities, "
            "i.study_uid, i.accession_key, i.view_position, i.laterality, s.path AS source, "
            "i.fracture, i.fracture_prob, i.model_sha256, i.study_key "
            "FROM images i JOIN sources s ON s.sha256 = i.sha256 "
            "WHERE i.state = 'done' AND i.status IN ('sorted', 'review') "
            "ORDER BY s.path")]

    def images_to_explain(self) -> list[tuple[str, str]]:
        """(sha256, dest_path) of placed, classified images that have no heatmap yet."""
        return [(r[0], r[1]) for r in self._db.execute(
            "SELECT sha256, dest_path FROM images WHERE state = 'done' AND heatmap_path IS NULL "
            "AND status IN ('sorted', 'review') ORDER BY dest_path")]

    def set_heatmap(self, sha256: str, path: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE images SET heatmap_path = ? WHERE sha256 = ?", (path, sha256))

    def add_dicom_output(self, sha256: str, kind: str, sop_uid: str, series_uid: str,
                         path: str, model_sha256: str) -> None:
        """Record an SR or SC written for a film (again: the same row, refreshed)."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO dicom_outputs (sop_uid, sha256, kind, series_uid,"
                       " path, model_sha256, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (sop_uid, sha256, kind, series_uid, path, model_sha256, _now()))

    def mark_stowed(self, sop_uids: list[str]) -> None:
        with self._transaction() as db:
            db.executemany("UPDATE dicom_outputs SET stowed = ? WHERE sop_uid = ?",
                           [(_now(), uid) for uid in sop_uids])

    def dicom_outputs(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._db.execute(
            "SELECT * FROM dicom_outputs ORDER BY path")]

    def hip_studies(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._db.execute("SELECT * FROM hip_studies ORDER BY id")]


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""
