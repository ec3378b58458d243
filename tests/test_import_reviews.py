"""``xreg registry import-reviews``: labels a hospital already has, as reviews."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import biased_checkpoint, make_old
from tests.test_crash_safety import make_pngs
from xreg.cli import app
from xreg.config import SortOptions
from xreg.datasets import load_labels
from xreg.errors import ConfigError
from xreg.model.labels import EXTENDED_BODY_PARTS
from xreg.model.models import BODY_PARTS
from xreg.registry import Registry
from xreg.registry.imports import ReviewRow, import_reviews, parse_body_part, parse_labels
from xreg.registry.reviews import Review, add_review
from xreg.sort import relocate
from xreg.sort.audit import load_vocabulary
from xreg.sort.folders import output_lock
from xreg.sort.runner import run_sort

runner = CliRunner()
COLUMNS = ("sha256", "path", "body_part", "instrument", "fracture")


@pytest.fixture(scope="module")
def knee_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return biased_checkpoint(tmp_path_factory.mktemp("w") / "knee.pt", BODY_PARTS, "knee")


@pytest.fixture
def sorted_out(tmp_path: Path, knee_model: Path) -> tuple[Path, dict[Path, str]]:
    """Six films the model calls knee (sorted); their source paths -> content hashes."""
    films = make_pngs(tmp_path / "in", 6, size=64)
    run_sort(tmp_path / "in", tmp_path / "out", SortOptions(weights=knee_model, min_age=0))
    return tmp_path / "out", films


def write_csv(path: Path, rows: list[dict[str, str]], delimiter: str = ",") -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, delimiter=delimiter)
        writer.writeheader()
        writer.writerows([{k: r.get(k, "") for k in COLUMNS} for r in rows])
    return path


def query(out: Path, sql: str, *args: object) -> list[sqlite3.Row]:
    db = sqlite3.connect(out / "registry.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def model_labels(out: Path) -> list[tuple[object, ...]]:
    return [tuple(r) for r in query(out, "SELECT sha256, status, dest_path, body_part,"
                                         " body_part_prob, instrument, fracture, probabilities"
                                         " FROM images ORDER BY sha256")]


def run_import(out: Path, labels: Path, *extra: str) -> tuple[int, dict[str, object]]:
    result = runner.invoke(app, ["registry", "import-reviews", str(out), str(labels),
                                 "--reviewer", "PACS reports", "--json", *extra])
    return result.exit_code, json.loads(result.stdout)


def test_rows_by_hash_absolute_and_relative_path_become_reviews(
        sorted_out: tuple[Path, dict[Path, str]], tmp_path: Path) -> None:
    out, films = sorted_out
    (a, sa), (b, sb), (c, sc), (d, sd) = list(films.items())[:4]
    before = model_labels(out)
    labels = write_csv(tmp_path / "labels.csv", [
        {"sha256": sa.upper(), "body_part": "Hip", "instrument": "yes", "fracture": "false"},
        {"path": str(b), "body_part": "wrist", "instrument": "1"},
        {"path": c.name, "body_part": "knee", "fracture": "TRUE"},  # relative to the input
        {"sha256": sd, "path": str(d), "body_part": "not msk"},
    ], delimiter=";")
    code, report = run_import(out, labels)
    assert code == 0, report
    assert (report["added"], report["bad"], report["rows"]) == (4, 0, 4)
    assert report["disagree_with_model"] == 3  # knee agrees with the model
    got = {r["sha256"]: (r["reviewer"], r["body_part"], r["instrument"], r["fracture"],
                         r["model_body_part"], r["note"])
           for r in query(out, "SELECT * FROM reviews")}
    note = "imported from labels.csv, row {}"
    assert got == {
        sa: ("PACS reports", "hip", 1, 0, "knee", note.format(2)),
        sb: ("PACS reports", "wrist", 1, None, "knee", note.format(3)),
        sc: ("PACS reports", "knee", None, 1, "knee", note.format(4)),
        sd: ("PACS reports", "not_msk", None, None, "knee", note.format(5)),
    }
    assert model_labels(out) == before  # the model's labels and places are untouched


def test_a_bad_row_imports_nothing_and_every_bad_row_says_why(
        sorted_out: tuple[Path, dict[Path, str]], tmp_path: Path) -> None:
    out, films = sorted_out
    (a, sa), (b, sb), (c, sc) = list(films.items())[:3]
    labels = write_csv(tmp_path / "mixed.csv", [
        {"sha256": sa, "body_part": "hip"},                       # 2: fine
        {"sha256": sb, "body_part": "thumbnail"},                 # 3: unknown body part
        {"sha256": sc, "body_part": "hand", "fracture": "maybe"},  # 4: bad flag
        {"sha256": "ab" * 32, "body_part": "hand"},               # 5: no such film
        {"path": str(a.parent / "gone.png"), "body_part": "hand"},  # 6: no such path
        {"body_part": "hand"},                                    # 7: neither column
        {"sha256": sa, "path": str(b), "body_part": "hip"},       # 8: they disagree
        {"sha256": sa, "body_part": "elbow"},                     # 9: row 2's film, relabelled
        {"sha256": "xyz", "body_part": "hand|not_msk"},           # 10: two reasons
    ])
    code, report = run_import(out, labels)
    assert code == 1
    assert report["added"] == 0 and report["valid"] == 1
    reasons = {r["row"]: r["reason"] for r in report["bad_rows"]}  # type: ignore[union-attr]
    assert sorted(reasons) == [3, 4, 5, 6, 7, 8, 9, 10] and report["bad"] == 8
    assert "unknown body part 'thumbnail'" in reasons[3]
    assert "fracture 'maybe'" in reasons[4]
    assert "no placed image has sha256" in reasons[5]
    assert "no placed image was sorted from that path" in reasons[6]
    assert "gone.png" not in reasons[6]  # paths may name patients: never echoed
    assert "both sha256 and path are empty" in reasons[7]
    assert "different films" in reasons[8]
    assert "same film as row 2" in reasons[9]
    assert "not_msk stands alone" in reasons[10] and "64 hexadecimal" in reasons[10]
    assert query(out, "SELECT COUNT(*) FROM reviews")[0][0] == 0  # not even row 2
    human = runner.invoke(app, ["registry", "import-reviews", str(out), str(labels),
                                "--reviewer", "PACS reports"])
    assert human.exit_code == 1 and "nothing imported" in human.output
    assert "8 bad row(s)" in human.output


def test_a_second_import_adds_nothing_and_dry_run_writes_nothing(
        sorted_out: tuple[Path, dict[Path, str]], tmp_path: Path) -> None:
    out, films = sorted_out
    rows = [{"sha256": sha, "body_part": "hip", "instrument": "0"} for sha in films.values()]
    labels = write_csv(tmp_path / "hip.csv", rows)
    code, dry = run_import(out, labels, "--dry-run")
    assert code == 0 and (dry["valid"], dry["added"], dry["dry_run"]) == (6, 0, True)
    assert query(out, "SELECT COUNT(*) FROM reviews")[0][0] == 0
    assert run_import(out, labels)[1]["added"] == 6
    code, again = run_import(out, labels)
    assert code == 0 and (again["added"], again["already_imported"]) == (0, 6)
    assert query(out, "SELECT COUNT(*) FROM reviews")[0][0] == 6
    # One label changed: only that film gets a new review.
    rows[0] = {**rows[0], "instrument": "1"}
    changed = run_import(out, write_csv(tmp_path / "hip.csv", rows))[1]
    assert (changed["added"], changed["already_imported"]) == (1, 5)
    # Another reviewer's identical labels are their own reviews.
    other = runner.invoke(app, ["registry", "import-reviews", str(out), str(labels),
                                "--reviewer", "Dr Second", "--json"])
    assert json.loads(other.stdout)["added"] == 6


def test_a_set_label_is_stored_exported_and_trained_as_a_set(
        sorted_out: tuple[Path, dict[Path, str]], tmp_path: Path) -> None:
    out, films = sorted_out
    (sa, sb) = list(films.values())[:2]
    labels = write_csv(tmp_path / "sets.csv", [
        {"sha256": sa, "body_part": "hand | Wrist"},
        {"sha256": sb, "body_part": "UPPER EXTREMITY", "instrument": "no"},
    ])
    code, report = run_import(out, labels)
    assert code == 0, report
    stored = {r["sha256"]: (r["body_part"], r["note"]) for r in query(out, "SELECT * FROM reviews")}
    assert stored[sa][0] == "hand|wrist"
    # The shipped vocabulary's UPPER EXTREMITY, less the long bones a nine-class model lacks.
    assert stored[sb] == ("elbow|hand|shoulder|wrist",
                          "imported from sets.csv, row 3 (UPPER EXTREMITY)")
    manifest = tmp_path / "reviewed.csv"
    exported = runner.invoke(app, ["registry", "export", str(out), "--reviewed", "--format",
                                   "manifest", "-o", str(manifest)])
    assert exported.exit_code == 0, exported.output
    with manifest.open(newline="") as fh:
        by_sha = {r["sha256"]: r["body_part"] for r in csv.DictReader(fh)}
    assert by_sha == {sa: "hand|wrist", sb: "elbow|hand|shoulder|wrist"}
    from_manifest = {im.path.name: im.body_parts for im in load_labels(manifest)}
    from_folder = {im.path.name: im.body_parts
                   for im in load_labels(out, reviewed_only=True)}
    expected = {("hand", "wrist"), ("elbow", "hand", "shoulder", "wrist")}
    assert set(from_manifest.values()) == expected
    assert from_folder == from_manifest


def test_review_check_takes_sets_of_known_body_parts_only() -> None:
    Review("a" * 64, "r", "hand|wrist").check(BODY_PARTS)
    for bad in ("hand|hand", "hand|not_msk", "hand|femur", "hand|", "|"):
        with pytest.raises(ConfigError):
            Review("a" * 64, "r", bad).check(BODY_PARTS)


def test_parsing_labels_is_pure_and_names_each_bad_column() -> None:
    vocabulary = load_vocabulary()
    assert parse_body_part("Lower Leg", EXTENDED_BODY_PARTS) == ("lower_leg", None)
    assert parse_body_part("lower-limb", EXTENDED_BODY_PARTS, vocabulary) == (
        "ankle|foot|hip|knee|lower_leg|femur", "LOWER LIMB")
    assert parse_body_part("LEG", BODY_PARTS, vocabulary)[0] == "ankle|foot|knee"
    with pytest.raises(ValueError, match="region"):
        parse_body_part("EXTREMITY", ("spine", "other"), vocabulary)
    with pytest.raises(ValueError, match="unknown body part 'arm'"):
        parse_body_part("arm", BODY_PARTS)  # no vocabulary given: no region words
    labels = parse_labels(ReviewRow(2, body_part="knee", instrument="Yes", fracture="0"),
                          BODY_PARTS)
    assert (labels.body_part, labels.instrument, labels.fracture) == ("knee", 1, 0)
    with pytest.raises(ValueError, match="instrument '2'.*fracture 'x'"):
        parse_labels(ReviewRow(2, body_part="knee", instrument="2", fracture="x"), BODY_PARTS)


def test_a_relative_path_two_input_folders_share_is_ambiguous(
        tmp_path: Path, knee_model: Path) -> None:
    out = tmp_path / "out"
    rng = np.random.default_rng(7)
    for site in ("site_a", "site_b"):
        folder = tmp_path / site
        folder.mkdir()
        picture = (rng.random((64, 64)) * 255).astype(np.uint8)  # other content per site
        Image.fromarray(picture).save(folder / "film.png")
        make_old(folder / "film.png")
        run_sort(folder, out, SortOptions(weights=knee_model, min_age=0))
    labels = write_csv(tmp_path / "l.csv", [{"path": "film.png", "body_part": "hip"}])
    code, report = run_import(out, labels)
    assert code == 1
    assert "different films" in report["bad_rows"][0]["reason"]  # type: ignore[index]
    absolute = write_csv(tmp_path / "l.csv", [
        {"path": str(tmp_path / "site_b" / "film.png"), "body_part": "hip"}])
    assert run_import(out, absolute)[1]["added"] == 1


def test_applying_a_set_review_keeps_a_member_folder_else_sends_to_review(
        sorted_out: tuple[Path, dict[Path, str]]) -> None:
    out, films = sorted_out
    keep, away = list(films.values())[:2]
    with Registry(out / "registry.sqlite") as reg:
        before = {sha: reg.get_image(sha) for sha in (keep, away)}
        add_review(reg, Review(keep, "r", "hip|knee"), BODY_PARTS)
        add_review(reg, Review(away, "r", "hand|wrist"), BODY_PARTS)
    with output_lock(out), Registry(out / "registry.sqlite") as reg:
        applied = {a.sha256: a for a in relocate.apply_reviews(reg, out)}
        after = {sha: reg.get_image(sha) for sha in (keep, away)}
    assert after[keep].dest_path == before[keep].dest_path  # type: ignore[union-attr]
    assert after[keep].status == "sorted"  # type: ignore[union-attr]
    assert "kept under knee" in str(applied[keep].note)
    assert after[away].dest_path.startswith("_review/")  # type: ignore[union-attr]
    assert after[away].status == "review"  # type: ignore[union-attr]
    assert (out / after[away].dest_path).is_file()  # type: ignore[union-attr]
    assert "_review" in str(applied[away].note) and applied[away].error is None
    assert [r[0] for r in query(out, "SELECT apply_state FROM reviews")] == ["done", "done"]


def test_the_web_review_pages_show_and_apply_an_imported_set(
        sorted_out: tuple[Path, dict[Path, str]], knee_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("fastapi", reason='xreg serve needs pip install "xreg[serve]"')
    from fastapi.testclient import TestClient

    from xreg.serve.app import create_app
    from xreg.serve.config import ServeConfig

    out, films = sorted_out
    sha = next(iter(films.values()))
    assert run_import(out, write_csv(tmp_path / "s.csv", [
        {"sha256": sha, "body_part": "hand|wrist"}]))[1]["added"] == 1
    config = ServeConfig(out_root=out, weights=knee_model, reviewer="Dr Web")
    with TestClient(create_app(config, heatmaps=False), base_url="http://127.0.0.1") as web:
        web.get("/")
        page = web.get("/reviews")
        assert page.status_code == 200 and "hand|wrist" in page.text
        applied = web.post("/apply", data={"csrf": web.cookies.get("xreg_csrf")})
        assert applied.status_code == 200
        assert "a set names no single folder" in applied.text
    image = query(out, "SELECT status, dest_path FROM images WHERE sha256 = ?", sha)[0]
    assert image["status"] == "review" and image["dest_path"].startswith("_review/")


def test_the_library_refuses_a_bad_reviewer_and_a_file_without_columns(
        sorted_out: tuple[Path, dict[Path, str]], tmp_path: Path) -> None:
    out, films = sorted_out
    good = write_csv(tmp_path / "g.csv", [{"sha256": next(iter(films.values())),
                                           "body_part": "hip"}])
    columns = tmp_path / "c.csv"
    columns.write_text("film,label\nx,hip\n")
    with Registry(out / "registry.sqlite") as reg:
        with pytest.raises(ConfigError, match="reviewer"):
            import_reviews(reg, good, "  ")
        with pytest.raises(ConfigError, match="body_part column and a sha256 or path"):
            import_reviews(reg, columns, "r")
    result = runner.invoke(app, ["registry", "import-reviews", str(out), str(columns),
                                 "--reviewer", "r"])
    assert result.exit_code == 2
    assert query(out, "SELECT COUNT(*) FROM reviews")[0][0] == 0
