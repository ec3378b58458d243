"""`xreg sort` end to end through Typer's runner: folders, bytes, registry rows."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import hostile_dicom, make_old, sha256_of
from xreg.cli import app
from xreg.registry import SCHEMA_VERSION

runner = CliRunner()
BODY_PARTS = {"ankle", "elbow", "foot", "hand", "hip", "knee", "shoulder", "spine", "wrist"}


def sort(in_dir: Path, out_dir: Path, weights: Path, *extra: str) -> tuple[int, str]:
    args = ["sort", str(in_dir), str(out_dir), "--weights", str(weights),
            "--min-age", "0", "--min-confidence", "0", *extra]
    result = runner.invoke(app, args)
    return result.exit_code, result.output


def files_under(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every non-registry file under root."""
    return {
        str(p.relative_to(root)): sha256_of(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith((".xreg", "registry.sqlite"))
    }


def rows(out_dir: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(out_dir / "registry.sqlite") as db:
        return db.execute(sql).fetchall()


READABLE = ("png16_0.png", "png16_1.png", "png16_2.png", "photo_0.jpg", "photo_1.jpg",
            "photo_2.jpg", "b/photo_0.jpg", "CT_small.dcm", "MR_small_RLE.dcm", "RG1_J2KR.dcm",
            "JPGLosslessP14SV1_1s_1f_8b.dcm", "SC_rgb.dcm")
# pydicom's chest CR: BodyPartExamined CHEST, so the header check holds it back whatever
# body part the model names (the tiny model knows the nine only).
CHEST = "RG1_J2KR.dcm"
SORTED = tuple(k for k in READABLE if k != CHEST)


def test_copy_sorts_every_file_and_records_it(inputs, tmp_path, tiny_weights):
    in_dir, files = inputs
    before = files_under(in_dir)
    out_dir = tmp_path / "out"
    code, output = sort(in_dir, out_dir, tiny_weights, "--json")
    assert code == 0, output
    summary = json.loads(output)
    assert summary["counts"]["sorted"] == len(SORTED)
    assert summary["counts"]["review"] == 1
    assert summary["counts"]["unreadable"] == 2
    assert summary["counts"]["duplicate"] == 1
    assert files_under(in_dir) == before  # copy leaves IN alone

    placed = files_under(out_dir)
    source_hashes = {sha256_of(files[k]) for k in SORTED}
    sorted_hashes = {h for rel, h in placed.items() if not rel.startswith("_")}
    assert sorted_hashes == source_hashes  # every readable file, byte for byte, once
    assert placed[f"_review/{CHEST}"] == sha256_of(files[CHEST])
    for rel in placed:
        parts = Path(rel).parts
        if parts[0] not in ("_unreadable", "_review"):
            assert parts[0] in BODY_PARTS and parts[1] in ("instrument", "no_instrument")
    # Extension-less DICOM gets .dcm at the destination.
    assert any(rel.endswith("CT_small.dcm") for rel in placed)
    unreadable = sorted(Path(r).name for r in placed if r.startswith("_unreadable"))
    assert unreadable == ["broken.jpg", "empty.dcm"]

    images = rows(out_dir, "SELECT sha256, status, dest_path, body_part, body_part_prob,"
                           " error, review_reason FROM images WHERE state = 'done'")
    assert len(images) == len(READABLE) + 2
    for sha, status, dest, body_part, prob, error, reason in images:
        assert sha256_of(out_dir / dest) == sha
        if status == "sorted":
            assert body_part in BODY_PARTS and 0 < prob <= 1 and error is None
        elif status == "review":
            assert dest == f"_review/{CHEST}"
            assert reason == f"header says CHEST, model says {body_part}"
        else:
            assert status == "unreadable" and error
    errors = dict(rows(out_dir, "SELECT dest_path, error FROM images WHERE status='unreadable'"))
    assert errors["_unreadable/empty.dcm"] == "empty file"
    assert "truncated" in errors["_unreadable/broken.jpg"]
    # The duplicate is stored once with both of its source paths.
    dup_sha = sha256_of(files["duplicate"])
    sources = rows(out_dir, f"SELECT path FROM sources WHERE sha256 = '{dup_sha}'")
    assert {Path(p).name for (p,) in sources} == {"png16_0.png", "copy_of_png16_0.png"}


def test_name_clash_gets_suffix_and_never_overwrites(inputs, tmp_path, tiny_weights):
    in_dir, files = inputs
    out_dir = tmp_path / "out"
    assert sort(in_dir, out_dir, tiny_weights)[0] == 0
    placed = files_under(out_dir)
    jpg_names = sorted(Path(r).name for r in placed if "photo_0" in r)
    assert len(jpg_names) == 2
    assert "photo_0.jpg" in jpg_names
    suffix = sha256_of(files["b/photo_0.jpg"])[:8]
    other = sha256_of(files["photo_0.jpg"])[:8]
    assert f"photo_0__{suffix}.jpg" in jpg_names or f"photo_0__{other}.jpg" in jpg_names


def test_existing_file_at_destination_is_not_overwritten(tmp_path, tiny_weights):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    import numpy as np
    from PIL import Image
    Image.fromarray(np.full((64, 64), 200, np.uint8)).save(in_dir / "x.png")
    make_old(in_dir / "x.png")
    plan = runner.invoke(app, ["sort", str(in_dir), str(out_dir), "--weights", str(tiny_weights),
                               "--min-age", "0", "--min-confidence", "0", "--dry-run", "--json"])
    dest = json.loads(plan.output)["files"][0]["dest"]
    squatter = out_dir / dest
    squatter.parent.mkdir(parents=True)
    squatter.write_bytes(b"someone else's file")
    assert sort(in_dir, out_dir, tiny_weights)[0] == 0
    assert squatter.read_bytes() == b"someone else's file"
    placed = [p for p in squatter.parent.iterdir() if p != squatter]
    assert len(placed) == 1 and placed[0].name.startswith("x__")
    assert sha256_of(placed[0]) == sha256_of(in_dir / "x.png")


def test_rerun_does_nothing(inputs, tmp_path, tiny_weights):
    in_dir, _ = inputs
    out_dir = tmp_path / "out"
    assert sort(in_dir, out_dir, tiny_weights)[0] == 0
    first = files_under(out_dir)
    n_images = rows(out_dir, "SELECT COUNT(*) FROM images")[0][0]
    code, output = sort(in_dir, out_dir, tiny_weights, "--json")
    assert code == 0
    counts = json.loads(output)["counts"]
    assert counts["already_done"] == len(READABLE) + 2 + 1
    assert sum(v for k, v in counts.items() if k != "already_done") == 0
    assert files_under(out_dir) == first
    assert rows(out_dir, "SELECT COUNT(*) FROM images")[0][0] == n_images
    assert rows(out_dir, "SELECT COUNT(*) FROM runs")[0][0] == 2


def test_move_removes_sources_only_after_placing(inputs, tmp_path, tiny_weights):
    in_dir, files = inputs
    hashes = {k: sha256_of(p) for k, p in files.items()}
    out_dir = tmp_path / "out"
    code, output = sort(in_dir, out_dir, tiny_weights, "--mode", "move")
    assert code == 0, output
    for key, path in files.items():
        assert not path.exists(), key
    placed = set(files_under(out_dir).values())
    assert set(hashes.values()) <= placed
    assert (in_dir / "notes.txt").exists()  # not an image: never touched
    assert rows(out_dir, "SELECT COUNT(*) FROM sources WHERE removed = 0")[0][0] == 0


def test_link_and_hardlink(inputs, tmp_path, tiny_weights):
    in_dir, files = inputs
    out_link, out_hard = tmp_path / "out_link", tmp_path / "out_hard"
    assert sort(in_dir, out_link, tiny_weights, "--mode", "link")[0] == 0
    links = [p for p in out_link.rglob("*") if p.is_symlink()]
    assert len(links) == len(READABLE) + 2
    for link in links:
        assert Path(os.readlink(link)).is_absolute()
        assert sha256_of(link) == sha256_of(Path(os.readlink(link)))
    assert sort(in_dir, out_hard, tiny_weights, "--mode", "hardlink")[0] == 0
    src_inodes = {p.stat().st_ino for p in files.values()}
    hard = [p for p in out_hard.rglob("*") if p.is_file() and p.name != "registry.sqlite"
            and not p.name.startswith((".xreg", "registry"))]
    assert len(hard) == len(READABLE) + 2
    assert all(p.stat().st_ino in src_inodes for p in hard)


def test_dry_run_changes_nothing(inputs, tmp_path, tiny_weights):
    in_dir, _ = inputs
    before = files_under(in_dir)
    out_dir = tmp_path / "out"
    code, output = sort(in_dir, out_dir, tiny_weights, "--dry-run", "--json")
    assert code == 0
    assert not out_dir.exists()
    assert files_under(in_dir) == before
    plan = json.loads(output)
    assert plan["dry_run"] is True
    dests = [f["dest"] for f in plan["files"] if f["status"] == "sorted"]
    assert len(dests) == len(SORTED)
    assert [f["dest"] for f in plan["files"] if f["status"] == "review"] == [
        f"_review/{CHEST}"]
    assert all(Path(d).parts[0] in BODY_PARTS for d in dests)


def test_unreadable_files_keep_their_reason(tmp_path, tiny_weights):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    (in_dir / "zero.dcm").write_bytes(b"")
    (in_dir / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    for p in in_dir.iterdir():
        make_old(p)
    code, output = sort(in_dir, out_dir, tiny_weights, "--strict")
    assert code == 1  # --strict: unreadable files need attention
    reasons = dict(rows(out_dir, "SELECT dest_path, error FROM images"))
    assert set(reasons) == {"_unreadable/zero.dcm", "_unreadable/garbage.png"}
    assert all(reasons.values())


def test_hostile_layout_values_cannot_escape_out(tmp_path, tiny_weights):
    in_dir, out_dir = tmp_path / "in", tmp_path / "sub" / "out"
    in_dir.mkdir()
    hostile_dicom(in_dir / "evil.dcm")
    code, output = sort(in_dir, out_dir, tiny_weights,
                        "--layout", "{view}/{study_date}/{modality}/{name}")
    assert code == 0, output
    placed = [p for p in (tmp_path).rglob("evil*")]
    assert len(placed) == 2  # the source and exactly one copy
    dest = next(p for p in placed if p.parent != in_dir)
    assert dest.resolve().is_relative_to(out_dir.resolve())
    assert all(".." not in part for part in dest.relative_to(out_dir).parts)


@pytest.mark.parametrize("layout", ["../{name}", "/abs/{name}", "{body_part}/../../{name}",
                                    "{body_part}", "{patient_name}/{name}", "_review/{name}"])
def test_bad_layout_is_a_usage_error(inputs, tmp_path, tiny_weights, layout):
    in_dir, _ = inputs
    code, output = sort(in_dir, tmp_path / "out", tiny_weights, "--layout", layout)
    assert code == 2
    assert "layout" in output
    assert not (tmp_path / "out").exists()


def test_concurrent_run_is_refused(inputs, tmp_path, tiny_weights):
    in_dir, _ = inputs
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    fd = os.open(out_dir / ".xreg.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another run holds the lock
    try:
        code, output = sort(in_dir, out_dir, tiny_weights)
    finally:
        os.close(fd)
    assert code == 3
    assert "another xreg run" in output
    assert not (out_dir / "registry.sqlite").exists()
    assert sort(in_dir, out_dir, tiny_weights)[0] == 0  # lock released: works


def test_out_inside_in_is_not_rescanned(inputs, tiny_weights):
    in_dir, _ = inputs
    out_dir = in_dir / "sorted"
    assert sort(in_dir, out_dir, tiny_weights)[0] == 0
    code, output = sort(in_dir, out_dir, tiny_weights, "--json")
    counts = json.loads(output)["counts"]
    assert counts["sorted"] == 0 and counts["duplicate"] == 0
    assert not (out_dir / "sorted").exists()


def test_min_age_skips_files_being_written(tmp_path, tiny_weights):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    import numpy as np
    from PIL import Image
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(in_dir / "fresh.png")
    result = runner.invoke(app, ["sort", str(in_dir), str(out_dir), "--weights",
                                 str(tiny_weights), "--min-age", "3600", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output)["counts"]["too_new"] == 1
    assert not any(out_dir.rglob("fresh*"))


def test_missing_weights_and_input_are_usage_errors(tmp_path, tiny_weights):
    (tmp_path / "in").mkdir()
    result = runner.invoke(app, ["sort", str(tmp_path / "nope"), str(tmp_path / "out"),
                                 "--weights", str(tiny_weights)])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(app, ["sort", str(tmp_path / "in"), str(tmp_path / "out"),
                                 "--weights", str(tmp_path / "missing.pt")])
    assert result.exit_code == 2


def test_low_confidence_goes_to_review(inputs, tmp_path, tiny_weights):
    in_dir, _ = inputs
    out_dir = tmp_path / "out"
    code, output = sort(in_dir, out_dir, tiny_weights, "--min-confidence", "1.0", "--json")
    counts = json.loads(output)["counts"]
    assert counts["review"] == len(READABLE) and counts["sorted"] == 0
    assert len(list((out_dir / "_review").iterdir())) == len(READABLE)


def test_registry_stats_and_export(inputs, tmp_path, tiny_weights):
    in_dir, files = inputs
    out_dir = tmp_path / "out"
    assert sort(in_dir, out_dir, tiny_weights)[0] == 0
    stats = runner.invoke(app, ["registry", "stats", str(out_dir)])
    assert stats.exit_code == 0 and "unreadable" in stats.output and "total" in stats.output
    runs = runner.invoke(app, ["registry", "runs", str(out_dir)], env={"COLUMNS": "200"})
    assert runs.exit_code == 0 and "finished" in runs.output and "sorted 11" in runs.output
    exported = runner.invoke(app, ["registry", "export", str(out_dir), "--format", "json"])
    items = json.loads(exported.output)
    assert len(items) == len(READABLE) + 2
    ct = next(i for i in items if i["dest_path"].endswith("CT_small.dcm"))
    assert ct["modality"] == "CT" and ct["study_uid"] and ct["patient_key"]
    csv_out = runner.invoke(app, ["registry", "export", str(out_dir), "--format", "csv"])
    assert len(csv_out.output.strip().splitlines()) == len(READABLE) + 3
    # No patient identifiers in the database, only keyed hashes.
    import pydicom
    ds = pydicom.dcmread(files["CT_small.dcm"])
    raw = (out_dir / "registry.sqlite").read_bytes()
    for wal in out_dir.glob("registry.sqlite-*"):
        raw += wal.read_bytes()
    assert str(ds.PatientID).encode() not in raw
    assert str(ds.PatientName).encode() not in raw
    with sqlite3.connect(out_dir / "registry.sqlite") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_help_explains_every_option():
    result = runner.invoke(app, ["sort", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--weights", "--mode", "--dry-run", "--batch-size", "--workers", "--device",
                   "--min-confidence", "--min-age", "--layout", "--registry", "--json",
                   "--quiet", "--strict", "--header-check", "Exit codes"):
        assert option in result.output


def test_a_decoder_crash_is_an_unreadable_file_not_a_dead_run(inputs, tmp_path, tiny_weights,
                                                              monkeypatch):
    import xreg.io.load

    real = xreg.io.load.load_image

    def flaky(data, target_size=None):
        image = real(data, target_size)
        if image.meta.format == "png":
            raise ZeroDivisionError("a bug in some decoder")
        return image

    monkeypatch.setattr(xreg.io.load, "load_image", flaky)
    in_dir, _ = inputs
    out_dir = tmp_path / "out"
    code, output = sort(in_dir, out_dir, tiny_weights, "--json")
    assert code == 0
    counts = json.loads(output)["counts"]
    assert counts["unreadable"] == 2 + 3 and counts["sorted"] == len(SORTED) - 3
    reasons = {e for (e,) in rows(out_dir, "SELECT error FROM images WHERE format IS NULL")}
    assert "decoder failed (ZeroDivisionError)" in reasons


def test_files_left_for_min_age_are_explained_in_one_line(tmp_path: Path,
                                                          tiny_weights: Path) -> None:
    from PIL import Image

    (tmp_path / "in").mkdir()
    for i in range(3):  # just written: younger than the default --min-age
        Image.new("L", (64, 64), 40 * i).save(tmp_path / "in" / f"new_{i}.png")
    result = runner.invoke(app, ["sort", str(tmp_path / "in"), str(tmp_path / "out"),
                                 "--weights", str(tiny_weights)])
    assert result.exit_code == 0, result.output
    assert "3 file(s) changed less than --min-age 10 s ago" in result.output
    assert "--min-age 0 takes them now" in result.output


def test_tables_to_a_log_keep_their_natural_width(tmp_path: Path, tiny_weights: Path,
                                                 inputs: tuple[Path, dict[str, Path]]) -> None:
    # Not a terminal (as under cron or `make demo > log`): no wrapping at 80 columns.
    root, _ = inputs
    result = runner.invoke(app, ["sort", str(root), str(tmp_path / "out"), "--weights",
                                 str(tiny_weights), "--min-age", "0", "--dry-run"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "photo_0.jpg" in line]
    assert rows and all(str(root) in line for line in rows)  # each source path whole
    assert max(len(line) for line in result.output.splitlines()) > 80
