"""The registry by patient and study: rollups, filters, reviews, the CLI, privacy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from tests.conftest import biased_checkpoint, make_old
from xreg.cli import app
from xreg.config import SortOptions
from xreg.errors import ConfigError
from xreg.model.labels import BODY_PARTS
from xreg.registry import ImageRecord, Registry
from xreg.registry.patients import (
    RegistryFilter,
    films_without_study,
    patient_timeline,
    patients,
    studies,
    studies_per_month,
    unassigned_films,
)
from xreg.registry.reviews import NOT_MSK, Review, add_review
from xreg.sort.runner import run_sort

runner = CliRunner()
PA, PB = "a" * 32, "b" * 32  # keyed hashes, as the sorter stores them

#: (sha, patient, study, YYYYMMDD, body part, instrument, fracture, status)
FILMS = (
    ("a1", PA, "1.1", "20200110", "knee", 0, 0, "sorted"),
    ("a2", PA, "1.1", "20200110", "knee", 0, 0, "review"),
    ("a3", PA, "1.2", "20210601", "knee", 1, 0, "sorted"),  # hardware appears
    ("a4", PA, "1.2", "20210601", "hip", 0, 0, "sorted"),
    ("a5", PA, "1.3", "20220202", "knee", 1, 0, "sorted"),
    ("b1", PB, "2.1", "20210303", "hand", 0, 1, "sorted"),
    ("b2", PB, "2.1", "20210303", "hand", 0, 0, "sorted"),
    ("x1", None, None, None, "foot", 0, 0, "sorted"),  # a plain file: no patient, no study
)


def _insert(reg: Registry, films: tuple[tuple[Any, ...], ...]) -> None:
    run = reg.start_run(xreg_version="t", input_root="/in", output_root="/out",
                        model_path="m.pt", model_name="m", model_sha256="ab", options={})
    records = [ImageRecord(sha, 1, status, f"{part}/{sha}.dcm", "copy", f"/in/{sha}", 1,
                           {"patient_key": patient, "study_uid": study, "study_date": date,
                            "body_part": part, "instrument": metal, "fracture": broken,
                            "modality": "CR", "view_position": "AP"})
               for sha, patient, study, date, part, metal, broken, status in films]
    reg.begin_images(run, records)
    for rec in records:
        reg.complete_image(rec.sha256, rec.dest_path)


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    registry = Registry(tmp_path / "registry.sqlite")
    _insert(registry, FILMS)
    yield registry
    registry.close()


def _by_key(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["patient"]: r for r in rows}


def test_patients_roll_up_studies_films_and_hardware_first_seen(reg: Registry) -> None:
    rows, total = patients(reg)
    assert total == 2 and [r["patient"] for r in rows] == [PA, PB]
    a, b = _by_key(rows)[PA], _by_key(rows)[PB]
    assert (a["studies"], a["films"], a["first_study"], a["last_study"]) == (
        3, 5, "2020-01-10", "2022-02-02")
    assert a["body_parts"] == ["hip", "knee"]
    # Knee hardware first seen at the second study, not the first, not the last.
    assert a["hardware"] == [{"body_part": "knee", "first_seen": "2021-06-01"}]
    assert b["fractures"] == [{"body_part": "hand", "date": "2021-03-03"}]
    assert unassigned_films(reg) == 1 and films_without_study(reg) == 1


def test_a_later_study_with_earlier_hardware_moves_first_seen(reg: Registry) -> None:
    _insert(reg, (("a6", PA, "1.0", "20190505", "knee", 1, 0, "sorted"),))
    a = _by_key(patients(reg)[0])[PA]
    assert a["hardware"] == [{"body_part": "knee", "first_seen": "2019-05-05"}]
    assert a["studies"] == 4 and a["first_study"] == "2019-05-05"


def test_studies_carry_views_hardware_review_counts_and_hip_scores(reg: Registry) -> None:
    reg.add_hip_study(None, {"study": "1.2", "status": "paired", "ap_sha256": "a4",
                             "lateral_sha256": "a3", "fracture_prob": 0.81,
                             "decision": "fracture"})
    rows, total = studies(reg)
    assert total == 4 and [s["date"] for s in rows] == [
        "2020-01-10", "2021-03-03", "2021-06-01", "2022-02-02"]
    first, hips = rows[0], {s["study"]: s for s in rows}["1.2"]
    assert (first["films"], first["in_review"], first["patient"]) == (2, 1, PA)
    assert hips["hardware"] == ["knee"] and hips["body_parts"] == ["hip", "knee"]
    assert hips["hip_score"] == pytest.approx(0.81) and hips["fracture"] is True
    assert first["hip_score"] is None and first["fracture"] is False
    page, total = studies(reg, limit=2, offset=3)
    assert total == 4 and [s["study"] for s in page] == ["1.3"]
    assert patients(reg, RegistryFilter(fracture=True))[1] == 2  # the hip pair counts


def test_a_review_moves_the_counts(reg: Registry) -> None:
    before = studies_per_month(reg)
    assert {"month": "2021-03", "body_part": "hand", "studies": 1} in before
    add_review(reg, Review("b1", "tester", "wrist"), BODY_PARTS)
    add_review(reg, Review("b2", "tester", "wrist"), BODY_PARTS)
    after = studies_per_month(reg)
    assert {"month": "2021-03", "body_part": "wrist", "studies": 1} in after
    assert not [r for r in after if r["body_part"] == "hand"]
    assert _by_key(patients(reg)[0])[PB]["body_parts"] == ["wrist"]
    # The latest review wins; not_msk leaves the film counted but in no body part.
    add_review(reg, Review("b1", "tester", NOT_MSK), BODY_PARTS)
    add_review(reg, Review("b2", "tester", NOT_MSK), BODY_PARTS)
    b = _by_key(patients(reg)[0])[PB]
    assert (b["films"], b["body_parts"], b["fractures"]) == (2, [], [])
    # A reviewer's hardware counts from the film's date.
    add_review(reg, Review("a1", "tester", "knee", instrument=1), BODY_PARTS)
    assert _by_key(patients(reg)[0])[PA]["hardware"] == [
        {"body_part": "knee", "first_seen": "2020-01-10"}]


def test_filters_select_studies_and_patients(reg: Registry) -> None:
    knee_metal = RegistryFilter(body_part="knee", instrument=True)
    assert [p["patient"] for p in patients(reg, knee_metal)[0]] == [PA]
    assert [s["study"] for s in studies(reg, knee_metal)[0]] == ["1.2", "1.3"]
    assert [p["patient"] for p in patients(reg, RegistryFilter(fracture=True))[0]] == [PB]
    late = patients(reg, RegistryFilter(since="2021-06-01"))[0]
    assert [(p["patient"], p["studies"], p["first_study"]) for p in late] == [
        (PA, 2, "2021-06-01")]
    assert patients(reg, RegistryFilter(until="2019-12-31")) == ([], 0)
    hips = studies_per_month(reg, RegistryFilter(body_part="hip"))
    assert hips == [{"month": "2021-06", "body_part": "hip", "studies": 1}]


@pytest.mark.parametrize("flt", [
    RegistryFilter(), RegistryFilter(fracture=False), RegistryFilter(instrument=False),
    RegistryFilter(since="2021-01-01"), RegistryFilter(until="2021-06-01", fracture=False),
    RegistryFilter(body_part="knee", instrument=True), RegistryFilter(fracture=True)])
def test_every_row_in_one_pass_matches_the_pages(reg: Registry, flt: RegistryFilter) -> None:
    """A full list (one grouped pass) gives what the keyed pages give, row for row."""
    reg.add_hip_study(None, {"study": "1.2", "status": "paired", "ap_sha256": "a4",
                             "lateral_sha256": "a3", "fracture_prob": 0.4,
                             "decision": "fracture"})
    add_review(reg, Review("a1", "tester", "knee", instrument=1), BODY_PARTS)
    add_review(reg, Review("b2", "tester", NOT_MSK), BODY_PARTS)
    for query in (patients, studies):
        every, total = query(reg, flt)
        assert total == len(every)
        paged = [row for start in range(0, total, 2)
                 for row in query(reg, flt, limit=2, offset=start)[0]]
        assert paged == every
        assert query(reg, flt, offset=1) == (every[1:], total)
        assert query(reg, flt, offset=9) == ([], total)


def test_timeline_lists_studies_in_date_order_with_their_films(reg: Registry) -> None:
    timeline = patient_timeline(reg, PA)
    assert timeline is not None and timeline["patient"] == PA
    assert [s["date"] for s in timeline["studies"]] == ["2020-01-10", "2021-06-01",
                                                         "2022-02-02"]
    assert sorted(f["sha256"] for f in timeline["studies"][1]["films"]) == ["a3", "a4"]
    assert {f["status"] for f in timeline["studies"][0]["films"]} == {"sorted", "review"}
    assert patient_timeline(reg, "0" * 32) is None


@pytest.mark.parametrize("kwargs, message", [
    ({"since": "2021-02-30"}, "YYYY-MM-DD"), ({"until": "20210101"}, "YYYY-MM-DD"),
    ({"since": "2022-01-01", "until": "2021-01-01"}, "after"),
    ({"body_part": "knees"}, "unknown body part"),
])
def test_bad_filters_are_refused(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RegistryFilter(**kwargs)


# -- sorted DICOM films: keys, dates and privacy end to end ------------------------------
SECRET = "PID-SECRET-4711"


def _dicoms(root: Path) -> None:
    """Four films: patient 1 with two studies (the second a day later), patient 2
    with one; the raw PatientIDs must never come out again."""
    root.mkdir(parents=True)
    plan = [(SECRET, "1.2.3.1", "20230105"), (SECRET, "1.2.3.1", "20230105"),
            (SECRET, "1.2.3.2", "20230106"), ("PID-OTHER-0815", "1.2.3.3", "20221231")]
    for i, (pid, study, date) in enumerate(plan):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.PatientID, ds.PatientName = pid, "Doe^Jane"
        ds.StudyInstanceUID, ds.StudyDate = study, date
        ds.SOPInstanceUID = f"{study}.{i}"
        ds.save_as(root / f"film_{i}")
        make_old(root / f"film_{i}")


def test_sorted_dicoms_roll_up_by_keyed_patient_and_never_show_the_id(tmp_path: Path) -> None:
    _dicoms(tmp_path / "in")
    out = tmp_path / "out"
    weights = biased_checkpoint(tmp_path / "knee.pt", BODY_PARTS, "knee")
    run_sort(tmp_path / "in", out, SortOptions(weights=weights, min_age=0))
    with Registry(out / "registry.sqlite", readonly=True) as reg:
        rows, total = patients(reg)
        by_films = sorted((p["films"], p["studies"], p["first_study"]) for p in rows)
        assert total == 2 and by_films == [(1, 1, "2022-12-31"), (3, 2, "2023-01-05")]
        key = max(rows, key=lambda p: p["films"])["patient"]
        assert [s["date"] for s in patient_timeline(reg, key)["studies"]] == [
            "2023-01-05", "2023-01-06"]
    outputs = [runner.invoke(app, ["registry", *args]) for args in (
        ["patients", str(out), "--format", "json"], ["patients", str(out)],
        ["studies", str(out), "--format", "csv"], ["patient", str(out), key],
        ["patient", str(out), key, "--format", "json"])]
    assert all(r.exit_code == 0 for r in outputs), [r.output for r in outputs]
    shown = json.loads(outputs[0].stdout)
    assert (shown["schema"], shown["total"], shown["filter"]["body_part"]) == (1, 2, None)
    assert key in outputs[3].stdout
    for text in [r.output for r in outputs]:
        assert SECRET not in text and "PID-OTHER" not in text and "Doe" not in text
    # The placed films are the DICOMs themselves; nothing else under OUT holds the ID.
    with Registry(out / "registry.sqlite", readonly=True) as reg:
        films = {out / r["dest_path"] for r in reg.iter_images()}
    others = [p for p in out.rglob("*") if p.is_file() and p not in films]
    assert len(films) == 4 and any(p.name == "registry.sqlite" for p in others)
    for path in others:
        assert SECRET.encode() not in path.read_bytes(), path


def test_cli_exit_codes(reg: Registry, tmp_path: Path) -> None:
    out = str(tmp_path)
    unknown = runner.invoke(app, ["registry", "patient", out, "0" * 32])
    assert unknown.exit_code == 1 and "no patient" in unknown.output
    bad = runner.invoke(app, ["registry", "studies", out, "--since", "2021-13-01"])
    assert bad.exit_code == 2 and "YYYY-MM-DD" in bad.output
    listed = runner.invoke(app, ["registry", "studies", out, "--body-part", "knee",
                                 "--instrument", "--format", "json"])
    assert [s["study"] for s in json.loads(listed.stdout)["rows"]] == ["1.2", "1.3"]


# -- a NULL fracture is unknown, never "no fracture" ------------------------------------
PC = "c" * 32
UNKNOWN = (
    ("c1", PC, "3.1", "20230101", "knee", 0, None, "review"),  # held back: model abstained
    ("c2", PC, "3.1", "20230101", "femur", 0, None, "sorted"),  # a long bone
    ("c3", PC, "3.1", "20230101", "knee", 0, 0, "sorted"),  # judged: no fracture
    ("c4", PC, "3.2", "20230202", "hand", 0, None, "review"),  # a study of unknowns only
)


def test_unknown_fractures_are_counted_as_unknown(reg: Registry) -> None:
    _insert(reg, UNKNOWN)
    found = {s["study"]: s for s in studies(reg)[0]}
    assert (found["3.1"]["fracture"], found["3.1"]["fracture_unknown"]) == (False, 2)
    assert (found["3.2"]["fracture"], found["3.2"]["fracture_unknown"]) == (False, 1)
    assert all(found[s]["fracture_unknown"] == 0 for s in ("1.1", "1.2", "1.3", "2.1"))
    c = _by_key(patients(reg)[0])[PC]
    assert (c["fractures"], c["fracture_unknown"]) == ([], 3)
    assert _by_key(patients(reg)[0])[PA]["fracture_unknown"] == 0
    # --no-fracture: a study whose films are all unknown is not a study without fracture.
    no_fracture = [s["study"] for s in studies(reg, RegistryFilter(fracture=False))[0]]
    assert "3.1" in no_fracture and "3.2" not in no_fracture
    # A reviewer's fracture wins; a scored hip pair makes a film's fracture known;
    # a film that is not musculoskeletal is no unknown fracture.
    add_review(reg, Review("c4", "tester", "hand", fracture=1), BODY_PARTS)
    reg.add_hip_study(None, {"study": "3.1", "status": "paired", "ap_sha256": "c1",
                             "fracture_prob": 0.2, "decision": "no_fracture"})
    add_review(reg, Review("c2", "tester", NOT_MSK), BODY_PARTS)
    found = {s["study"]: s for s in studies(reg)[0]}
    assert (found["3.1"]["fracture"], found["3.1"]["fracture_unknown"]) == (False, 0)
    assert (found["3.2"]["fracture"], found["3.2"]["fracture_unknown"]) == (True, 0)
    c = _by_key(patients(reg)[0])[PC]
    assert (c["fractures"], c["fracture_unknown"]) == (
        [{"body_part": "hand", "date": "2023-02-02"}], 0)


def test_the_cli_shows_unknown_fractures_beside_fracture(reg: Registry, tmp_path: Path) -> None:
    _insert(reg, UNKNOWN)
    shown = runner.invoke(app, ["registry", "studies", str(tmp_path), "--format", "csv"])
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    header = lines[0].split(",")
    assert header[header.index("fracture") + 1] == "fracture_unknown"
    row = next(line.split(",") for line in lines if line.startswith("3.1,"))
    assert row[header.index("fracture_unknown")] == "2"
    listed = runner.invoke(app, ["registry", "patients", str(tmp_path), "--format", "json"])
    rows = {p["patient"]: p for p in json.loads(listed.stdout)["rows"]}
    assert rows[PC]["fracture_unknown"] == 3


def test_a_sort_of_long_bones_leaves_every_fracture_unknown(tmp_path: Path) -> None:
    from xreg.model.labels import EXTENDED_BODY_PARTS

    _dicoms(tmp_path / "in")
    out = tmp_path / "out"
    weights = biased_checkpoint(tmp_path / "femur.pt", EXTENDED_BODY_PARTS, "femur",
                                fracture=3.0)
    run_sort(tmp_path / "in", out, SortOptions(weights=weights, min_age=0))
    with Registry(out / "registry.sqlite", readonly=True) as reg:
        rows = studies(reg)[0]
        assert [(s["films"], s["fracture"], s["fracture_unknown"]) for s in rows] == [
            (1, False, 1), (2, False, 2), (1, False, 1)]
        assert sorted(p["fracture_unknown"] for p in patients(reg)[0]) == [1, 3]
        assert studies(reg, RegistryFilter(fracture=False)) == ([], 0)
