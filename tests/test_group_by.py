"""--group-by: patients and studies from folder levels, never a raw folder name kept."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from xreg.cli import app
from xreg.config import SortOptions, load_sort_options
from xreg.errors import ConfigError
from xreg.model.checkpoint import make_random_checkpoint
from xreg.registry import Pseudonymiser
from xreg.sort.grouping import GroupBy, Grouper, locate, mask_file_name, parse_group_by

from .conftest import biased_checkpoint, make_old

# Raw patient folder names: distinctive, so a grep for them cannot match by chance.
PATIENTS = ("SMITHJOHNQX", "DOEJANEQX")


def _jpeg(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((72, 64)) * 255).astype(np.uint8)).save(path, quality=90)
    make_old(path)
    return path


def _tree(root: Path) -> dict[str, Path]:
    """Two patients with two studies each (one file named after its patient), plus a
    file directly under IN (too shallow for {patient}/{study})."""
    files: dict[str, Path] = {}
    seed = 0
    for patient in PATIENTS:
        for study in ("study_a", "study_b"):
            for name in ("film1.jpg", f"{patient.lower()}_film2.jpg"):
                seed += 1
                files[f"{patient}/{study}/{name}"] = _jpeg(root / patient / study / name, seed)
    files["loose.jpg"] = _jpeg(root / "loose.jpg", 99)
    return files


def _rows(out: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(out / "registry.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT s.path, i.patient_key, i.study_key FROM sources s "
                          "JOIN images i USING (sha256) ORDER BY s.path").fetchall()
    finally:
        db.close()


def _grep_tree(root: Path, needles: tuple[str, ...]) -> list[str]:
    """Every file (and file name) under ``root`` that holds one of ``needles``."""
    found = []
    for path in root.rglob("*"):
        text = str(path.relative_to(root)).lower()
        data = path.read_bytes().lower() if path.is_file() and not path.is_symlink() else b""
        for needle in needles:
            if needle.lower() in text or needle.lower().encode() in data:
                found.append(f"{path}: {needle}")
    return found


# -- the pattern (pure) -------------------------------------------------------------------

def test_parse_names_the_levels() -> None:
    assert parse_group_by("{patient}/{study}") == GroupBy("{patient}/{study}", 2, 0, 1)
    assert parse_group_by("*/{patient}/{study}") == GroupBy("*/{patient}/{study}", 3, 1, 2)
    assert parse_group_by("{patient}") == GroupBy("{patient}", 1, 0, None)
    assert parse_group_by("*/{study}") == GroupBy("*/{study}", 2, None, 1)


@pytest.mark.parametrize(("pattern", "message"), [
    ("{patient}/{visit}", r"placeholder \{visit\} is unknown"),
    ("{patient}/{patient}", r"\{patient\} appears twice"),
    ("{patient}//{study}", "empty level"),
    ("/{patient}", "empty level"),
    ("{patient}/", "empty level"),
    ("pat_{patient}", "must be '\\*'"),
    ("*/*", "names no level"),
    ("", "must be a pattern"),
])
def test_parse_rejects_bad_patterns(pattern: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_group_by(pattern)


def test_locate_skips_levels_and_takes_deeper_files() -> None:
    g = parse_group_by("*/{patient}/{study}")
    found = locate(g, PurePosixPath("site1/P1/S1/extra/deeper/f.jpg"))
    assert found is not None and found.patient == "P1"
    assert found.study == ("site1", "P1", "S1")
    assert locate(g, PurePosixPath("site1/P1/f.jpg")) is None  # too shallow
    assert locate(g, PurePosixPath("site1/P1/S1/f.jpg")) is not None


def test_masking_replaces_the_patient_level_and_its_name_in_files(tmp_path: Path) -> None:
    key = Pseudonymiser(b"k")
    grouper = Grouper(parse_group_by("{patient}/{study}"), tmp_path, key)
    film = tmp_path / "Smith" / "smith_2020" / "SMITH_ap.jpg"
    pk = key("Smith")
    assert pk is not None
    assert grouper.label(film) == str(tmp_path / pk / f"{pk}_2020" / f"{pk}_ap.jpg")
    assert grouper.file_name(film) == f"{pk}_ap.jpg"
    assert mask_file_name("x.jpg", "j", "K") == "x.jpg"  # the extension is kept
    patient, study = grouper.keys(film)
    assert patient == pk and study is not None and study != pk
    other = grouper.keys(tmp_path / "Jones" / "smith_2020" / "f.jpg")[1]
    assert other != study  # the same study folder name under another patient
    message = f"[Errno 2] No such file or directory: '{film}'"
    assert "Smith" not in (grouper.scrub(message, film) or "")
    loose = tmp_path / "loose.jpg"
    assert grouper.keys(loose) == (None, None) and grouper.label(loose) == str(loose)


def test_config_file_key_and_mode_link(tmp_path: Path) -> None:
    config = tmp_path / "sort.yaml"
    config.write_text("sort:\n  group_by: '*/{patient}/{study}'\n")
    assert load_sort_options(config, {}).group_by == "*/{patient}/{study}"
    config.write_text("sort:\n  group_by: '{patient}/{visit}'\n")
    with pytest.raises(ConfigError, match="unknown"):
        load_sort_options(config, {})
    with pytest.raises(ConfigError, match="mode link"):
        SortOptions(group_by="{patient}", mode="link")


# -- xreg sort ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("w") / "tiny.pt"
    make_random_checkpoint(path, arch="mobilenet_v3_small", input_size=64, seed=0)
    return path


def _sort(in_dir: Path, out: Path, weights: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["sort", str(in_dir), str(out), "--weights", str(weights),
                                      "--min-age", "0", "--workers", "1", *extra])
    return result.exit_code, result.output


def test_sort_group_by_keys_patients_and_studies(tmp_path: Path, weights: Path) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    files = _tree(in_dir)
    code, output = _sort(in_dir, out, weights, "--group-by", "{patient}/{study}", "--json")
    assert code == 0, output
    report = json.loads(output)
    assert report["group_by"] == {"pattern": "{patient}/{study}", "outside": 1}
    rows = _rows(out)
    assert len(rows) == len(files)
    key = Pseudonymiser.for_registry(out / "registry.sqlite")
    loose = [r for r in rows if r["path"].endswith("loose.jpg")]
    assert len(loose) == 1 and loose[0]["patient_key"] is None and loose[0]["study_key"] is None
    grouped = [r for r in rows if r not in loose]
    assert {r["patient_key"] for r in grouped} == {key(p) for p in PATIENTS}
    assert len({r["study_key"] for r in grouped}) == 4
    assert all(r["study_key"] is not None for r in grouped)
    # Stored source paths: the patient level is its key.
    for r in grouped:
        assert Path(r["path"]).relative_to(in_dir.absolute()).parts[0] == r["patient_key"]
    db = sqlite3.connect(out / "registry.sqlite")
    assert db.execute("SELECT group_by FROM runs").fetchall() == [("{patient}/{study}",)]
    db.close()
    # The raw patient folder names appear nowhere: not in OUT, not in the output.
    assert _grep_tree(out, PATIENTS) == []
    assert not any(p.lower() in output.lower() for p in PATIENTS)

    # A second run: everything skipped, nothing re-sorted, the table says it.
    code, output = _sort(in_dir, out, weights, "--group-by", "{patient}/{study}")
    assert code == 0, output
    assert "already_done" in output and "outside --group-by" in output
    assert not any(p.lower() in output.lower() for p in PATIENTS)
    code, output = _sort(in_dir, out, weights, "--group-by", "{patient}/{study}", "--json")
    second = json.loads(output)
    assert second["counts"]["already_done"] == len(files)
    assert sum(second["counts"].values()) == len(files)
    assert _grep_tree(out, PATIENTS) == []


def test_sort_group_by_dry_run_and_move_keep_names_out(tmp_path: Path, weights: Path) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    files = _tree(in_dir)
    code, output = _sort(in_dir, out, weights, "--group-by", "{patient}/{study}", "--dry-run")
    assert code == 0, output
    assert "Plan" in output and not any(p.lower() in output.lower() for p in PATIENTS)
    code, output = _sort(in_dir, out, weights, "--group-by", "{patient}/{study}",
                         "--mode", "move", "--json")
    assert code == 0, output
    assert not any(p.exists() for p in files.values())  # moved: sources removed
    db = sqlite3.connect(out / "registry.sqlite")
    assert db.execute("SELECT COUNT(*), SUM(removed) FROM sources").fetchone() == (
        len(files), len(files))
    db.close()
    assert _grep_tree(out, PATIENTS) == []


def test_sort_group_by_skips_a_level(tmp_path: Path, weights: Path) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    _jpeg(in_dir / "site1" / "PATONEQX" / "s1" / "a.jpg", 1)
    _jpeg(in_dir / "site2" / "PATONEQX" / "s9" / "deeper" / "b.jpg", 2)
    _jpeg(in_dir / "site1" / "c.jpg", 3)
    code, output = _sort(in_dir, out, weights, "--group-by", "*/{patient}/{study}", "--json")
    assert code == 0, output
    assert json.loads(output)["group_by"]["outside"] == 1
    key = Pseudonymiser.for_registry(out / "registry.sqlite")
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert rows["a.jpg"]["patient_key"] == rows["b.jpg"]["patient_key"] == key("PATONEQX")
    assert rows["a.jpg"]["study_key"] != rows["b.jpg"]["study_key"]
    assert rows["c.jpg"]["patient_key"] is None
    assert _grep_tree(out, ("PATONEQX",)) == []


def test_sort_group_by_bad_pattern_exits_2(tmp_path: Path, weights: Path) -> None:
    _jpeg(tmp_path / "in" / "a.jpg", 1)
    code, output = _sort(tmp_path / "in", tmp_path / "out", weights, "--group-by",
                         "{patient}/{visit}")
    assert code == 2 and "unknown" in output
    assert not (tmp_path / "out" / "registry.sqlite").exists()


def test_layout_with_the_name_shows_the_key(tmp_path: Path, weights: Path) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    _jpeg(in_dir / "PATTWOQX" / "s1" / "pattwoqx_hip.jpg", 5)
    code, output = _sort(in_dir, out, weights, "--group-by", "{patient}/{study}",
                         "--layout", "{body_part}/{stem}_{sha8}.{ext}", "--min-confidence", "0")
    assert code == 0, output
    key = Pseudonymiser.for_registry(out / "registry.sqlite")("PATTWOQX")
    placed = [p for p in out.rglob("*.jpg")]
    assert len(placed) == 1 and placed[0].name.startswith(f"{key}_hip_")
    assert _grep_tree(out, ("PATTWOQX",)) == []


# -- xreg hip -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hip_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("hipw")
    make_random_checkpoint(root / "hip.pt", arch="mobilenet_v3_small", input_size=64, hip=True)
    parts = ("ankle", "elbow", "foot", "hand", "hip", "knee", "shoulder", "spine", "wrist")
    return root / "hip.pt", biased_checkpoint(root / "allhip.pt", parts, "hip")


def _hip_tree(root: Path) -> None:
    """Each patient's study folder holds film_ap.png and film_lat.png: by file name
    alone the four films are one study "film" with two candidates per view."""
    seed = 10
    for patient in PATIENTS:
        for view in ("ap", "lat"):
            seed += 1
            path = root / patient / "visit1" / f"film_{view}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(seed)
            Image.fromarray((rng.random((80, 64)) * 255).astype(np.uint8)).save(path)
            make_old(path)
    _jpeg(root / "lone.jpg", 3)


def _hip(in_dir: Path, out: Path, models: tuple[Path, Path], *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["hip", str(in_dir), str(out), "--weights", str(models[0]),
                                      "--classifier", str(models[1]), "--min-age", "0",
                                      *extra])
    return result.exit_code, result.output


def test_hip_group_by_pairs_within_each_study_folder(tmp_path: Path,
                                                     hip_models: tuple[Path, Path]) -> None:
    in_dir = tmp_path / "in"
    _hip_tree(in_dir)
    code, output = _hip(in_dir, tmp_path / "plain", hip_models, "--json")
    assert code == 0, output
    plain = json.loads(output)["studies"]
    assert [s["status"] for s in plain if s["study"] == "film"] == ["ambiguous"]

    out = tmp_path / "out"
    code, output = _hip(in_dir, out, hip_models, "--group-by", "{patient}/{study}", "--json")
    assert code == 0, output
    studies = json.loads(output)["studies"]
    paired = [s for s in studies if s["status"] == "paired"]
    assert len(paired) == 2 and len({s["study"] for s in paired}) == 2
    for s in paired:  # the AP and the lateral of one study folder
        assert Path(s["ap"]).parent == Path(s["lateral"]).parent
        assert Path(s["ap"]).name == "film_ap.png" and Path(s["lateral"]).name == "film_lat.png"
    assert not any(p.lower() in output.lower() for p in PATIENTS)
    db = sqlite3.connect(out / "registry.sqlite")
    assert db.execute("SELECT COUNT(*) FROM hip_studies WHERE status = 'paired'"
                      ).fetchone() == (2,)
    assert db.execute("SELECT group_by FROM runs").fetchall() == [("{patient}/{study}",)]
    db.close()
    assert _grep_tree(out, PATIENTS) == []


def test_hip_table_sums_up_films_with_no_study(tmp_path: Path,
                                               hip_models: tuple[Path, Path]) -> None:
    in_dir = tmp_path / "in"
    for i in range(3):
        _jpeg(in_dir / f"nostudy{i}.jpg", i)
    code, output = _hip(in_dir, tmp_path / "out", hip_models)
    assert code == 0, output
    assert "3 film(s) with no study" in output
    assert "nostudy0" not in output  # one line, not a row per film
    db = sqlite3.connect(tmp_path / "out" / "registry.sqlite")
    assert db.execute("SELECT COUNT(*) FROM hip_studies WHERE status = 'unknown'"
                      ).fetchone() == (3,)
    db.close()


def test_sort_hip_passes_the_grouping_through(tmp_path: Path,
                                              hip_models: tuple[Path, Path]) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    _hip_tree(in_dir)
    result = CliRunner().invoke(app, [
        "sort", str(in_dir), str(out), "--weights", str(hip_models[1]), "--min-age", "0",
        "--group-by", "{patient}/{study}", "--hip", "--hip-weights", str(hip_models[0]),
        "--json"])
    assert result.exit_code == 0, result.output
    studies = json.loads(result.stdout)["hip"]["studies"]
    assert sum(s["status"] == "paired" for s in studies) == 2
    assert not any(p.lower() in result.output.lower() for p in PATIENTS)
    assert _grep_tree(out, PATIENTS) == []
