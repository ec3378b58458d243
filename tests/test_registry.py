"""Registry schema, journalling and pseudonymisation."""

from __future__ import annotations

import sqlite3

import pytest

from xreg.errors import RegistryError
from xreg.registry import SCHEMA_VERSION, ImageRecord, Pseudonymiser, Registry


def new_run(reg: Registry) -> int:
    return reg.start_run(xreg_version="t", input_root="/in", output_root="/out",
                         model_path="m.pt", model_name="m", model_sha256="ab", options={"x": 1})


def test_schema_version_and_wal(tmp_path):
    with Registry(tmp_path / "r.sqlite") as reg:
        new_run(reg)
    db = sqlite3.connect(tmp_path / "r.sqlite")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "r.sqlite"
    sqlite3.connect(path).execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RegistryError, match="Upgrade xreg"):
        Registry(path)


def test_not_a_database_is_refused(tmp_path):
    path = tmp_path / "r.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(RegistryError, match="not an SQLite database"):
        Registry(path)


def test_readonly_missing_registry(tmp_path):
    with pytest.raises(RegistryError, match="no registry"):
        Registry(tmp_path / "none.sqlite", readonly=True)


def test_pending_then_done_then_known_source(tmp_path):
    with Registry(tmp_path / "r.sqlite") as reg:
        run = new_run(reg)
        rec = ImageRecord("a" * 64, 10, "sorted", "hand/no_instrument/x.png", "copy",
                          "/in/x.png", 123, {"body_part": "hand", "body_part_prob": 0.9})
        reg.begin_images(run, [rec])
        assert [img.sha256 for img, _ in reg.pending_images()] == ["a" * 64]
        assert reg.known_source("/in/x.png", 10, 123) is None  # not done yet
        assert "a" * 64 not in reg.done_hashes()
        reg.complete_image("a" * 64, "hand/no_instrument/x.png")
        assert reg.known_source("/in/x.png", 10, 123) == ("a" * 64, False)
        assert reg.known_source("/in/x.png", 10, 999) is None  # modified since
        reg.add_source("a" * 64, "/in/copy.png", 10, 5, run)
        stats = reg.stats()
        assert stats == [{"status": "sorted", "scope": None, "body_part": "hand",
                          "instrument": None, "fracture": None, "images": 1, "sources": 2}]
        exported = list(reg.iter_images())
        assert sorted(exported[0]["source_paths"]) == ["/in/copy.png", "/in/x.png"]


def test_discard_pending_removes_sources(tmp_path):
    with Registry(tmp_path / "r.sqlite") as reg:
        run = new_run(reg)
        reg.begin_images(run, [ImageRecord("b" * 64, 1, "sorted", "d", "copy", "/in/b", 1, {})])
        reg.discard_pending("b" * 64)
        assert reg.pending_images() == []
        assert reg.get_image("b" * 64) is None


def test_unknown_field_is_refused(tmp_path):
    with Registry(tmp_path / "r.sqlite") as reg:
        run = new_run(reg)
        with pytest.raises(RegistryError, match="unknown image fields"):
            reg.begin_images(run, [ImageRecord("c" * 64, 1, "sorted", "d", "copy", "/c", 1,
                                               {"patient_name": "x"})])


def test_pseudonymiser_is_keyed_and_stable(tmp_path, monkeypatch):
    monkeypatch.delenv("XREG_PATIENT_KEY", raising=False)
    reg_path = tmp_path / "r.sqlite"
    p1 = Pseudonymiser.for_registry(reg_path)
    p2 = Pseudonymiser.for_registry(reg_path)
    assert p1("12345") == p2("12345") != p1("12346")
    assert (tmp_path / "r.sqlite.key").stat().st_mode & 0o077 == 0
    other = Pseudonymiser.for_registry(tmp_path / "other" / "r.sqlite")
    assert other("12345") != p1("12345")
    assert "12345" not in p1("12345")
    assert p1(None) is None and p1("") is None


def _old_registry(path, version: int, xreg_version: str) -> sqlite3.Connection:
    """A registry file at schema ``version`` holding one finished run (to migrate)."""
    from xreg.registry._schema import _MIGRATIONS

    db = sqlite3.connect(path)
    for script in _MIGRATIONS[:version]:
        db.executescript(script)
    db.execute(f"PRAGMA user_version = {version}")
    db.execute("INSERT INTO runs (started, status, xreg_version, options) VALUES"
               " ('2024-01-01', 'finished', ?, '{}')", (xreg_version,))
    return db


def test_v8_registry_migrates_in_place_keeping_every_row(tmp_path):
    path = tmp_path / "r.sqlite"
    db = _old_registry(path, 8, "0.8")
    db.execute("INSERT INTO images (sha256, size, state, status, dest_path, mode, created,"
               " updated, review_reason, header_audit, run_id) VALUES ('b', 1, 'done',"
               " 'review', '_review/x.dcm', 'copy', 't', 't', 'low confidence', 'disagrees', 1)")
    db.commit()
    db.close()
    with Registry(path) as reg:
        old = reg.runs()[0]
        assert (old["xreg_version"], old["header_check"]) == ("0.8", "off")  # none before v9
        run = reg.start_run(xreg_version="t", input_root="/in", output_root="/out",
                            model_path="m.pt", model_name="m", model_sha256="ab",
                            options={}, header_check="review")
        assert reg.runs()[run - 1]["header_check"] == "review"
        image = reg._db.execute("SELECT * FROM images").fetchall()
        assert [tuple(r)[:5] for r in image] == [("b", 1, "done", "review", "_review/x.dcm")]
        assert reg.get_image("b").state == "done"
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 12
    assert db.execute("SELECT review_reason, header_audit FROM images").fetchall() == [
        ("low confidence", "disagrees")]


def test_v10_registry_migrates_and_forgets_fracture_calls_outside_the_nine(tmp_path):
    path = tmp_path / "r.sqlite"
    db = _old_registry(path, 10, "0.9")
    # (sha, status, scope, review_reason, fracture, fracture_prob)
    for row in (("nine", "sorted", "nine", None, 1, 0.9),
                ("held", "review", "nine", "low confidence: knee 0.40 < 0.50", 0, 0.1),
                ("moved", "sorted", "nine", "unfamiliar film (energy -1 > -3)", 0, 0.2),
                ("bone", "sorted", "long_bone", None, 1, 0.8),
                ("other", "review", "other", "not one of the known body parts (other)", 0, 0.3)):
        db.execute("INSERT INTO images (sha256, size, state, status, dest_path, mode, created,"
                   " updated, scope, review_reason, fracture, fracture_prob, probabilities)"
                   " VALUES (?, 1, 'done', ?, ?, 'copy', 't', 't', ?, ?, ?, ?, '{}')",
                   (row[0], row[1], f"d/{row[0]}", *row[2:]))
    db.commit()
    db.close()
    with Registry(path) as reg:
        fractures = dict(reg._db.execute(
            "SELECT sha256, fracture IS NULL AND fracture_prob IS NULL FROM images"))
        assert fractures == {"nine": 0, "held": 1, "moved": 1, "bone": 1, "other": 1}
        assert tuple(reg._db.execute("SELECT fracture, fracture_prob FROM images"
                                     " WHERE sha256 = 'nine'").fetchone()) == (1, 0.9)
        old = reg.runs()[0]
        assert (old["shift_held"], old["shift_share"], old["new_site"]) == (None, None, None)
        run = new_run(reg)
        reg.finish_run(run, {"review": 30, "sorted": 10}, shift_held=28, shift_share=0.7,
                       new_site=True)
        new = reg.runs()[-1]
        assert (new["shift_held"], new["shift_share"], new["new_site"]) == (28, 0.7, 1)
