"""``xreg sort --dicom-out``: SR and SC objects that read back, validate, and reach a PACS."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from tests.conftest import make_old
from tests.orthanc import DICOMWEB_PLUGIN, orthanc_binary, running_orthanc
from xreg.cli import app
from xreg.sort.dicom_out import SNOMED_BODY_PARTS, stow_files

pytest.importorskip("highdicom", reason='--dicom-out needs highdicom: pip install "xreg[train]"')

runner = CliRunner()
REAL = ("RG3_J2KR.dcm", "RG1_J2KR.dcm", "CT_small.dcm", "MR_small.dcm")


def _codes(ds: pydicom.Dataset) -> set[tuple[str, str]]:
    """Every (scheme, code) anywhere in an SR's content tree."""
    found = set()
    for item in ds.iterall():
        if item.keyword in ("ConceptCodeSequence", "ConceptNameCodeSequence"):
            for code in item.value:
                found.add((str(code.CodingSchemeDesignator), str(code.CodeValue)))
    return found


@pytest.fixture(scope="module")
def sorted_dicom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dicomout")
    (root / "in").mkdir()
    for name in REAL:
        shutil.copyfile(get_testdata_file(name), root / "in" / name)
    named = pydicom.dcmread(get_testdata_file("RG3_J2KR.dcm"))
    named.PatientName, named.PatientID = "Roe^Richard", "PID-11"
    del named.PatientBirthDate  # absent in the source: must stay absent in the output
    named.SOPInstanceUID = pydicom.uid.generate_uid()
    named.save_as(root / "in" / "named.dcm")
    for p in (root / "in").iterdir():
        make_old(p)
    result = runner.invoke(app, ["sort", str(root / "in"), str(root / "out"), "--dicom-out",
                                 "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["dicom_out"]
    assert summary["films"] == 5 and summary["written"] == 10
    return root / "out"


def _outputs(out: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(out / "registry.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT d.*, i.dest_path, i.body_part, i.model_sha256 AS model"
                          " FROM dicom_outputs d JOIN images i USING (sha256)").fetchall()
    finally:
        db.close()


def test_each_film_gets_an_sr_and_an_sc_in_new_series_of_its_study(sorted_dicom: Path) -> None:
    rows = _outputs(sorted_dicom)
    assert sorted(r["kind"] for r in rows) == ["sc"] * 5 + ["sr"] * 5
    for r in rows:
        source = pydicom.dcmread(sorted_dicom / r["dest_path"], stop_before_pixels=True)
        ds = pydicom.dcmread(sorted_dicom / r["path"])
        assert r["path"].startswith("_dicom/")
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.SeriesInstanceUID not in (source.SeriesInstanceUID, "")
        assert ds.SOPInstanceUID == r["sop_uid"] != source.SOPInstanceUID
        assert str(ds.get("PatientName", "")) == str(source.get("PatientName", ""))
        for keyword in ("PatientBirthDate", "PatientID", "PatientSex"):  # never invented
            assert str(ds.get(keyword) or "") == str(source.get(keyword) or ""), keyword
        if r["kind"] == "sr":
            assert ds.SOPClassUID.name == "Comprehensive 3D SR Storage"
            evidence = ds.CurrentRequestedProcedureEvidenceSequence[0]
            refs = [i.ReferencedSOPInstanceUID for s in
                    evidence.ReferencedSeriesSequence for i in s.ReferencedSOPSequence]
            assert refs == [source.SOPInstanceUID]
            codes = _codes(ds)
            if r["body_part"] in SNOMED_BODY_PARTS:
                assert ("SCT", SNOMED_BODY_PARTS[r["body_part"]][0]) in codes
            texts = {str(e.value) for e in ds.iterall() if e.keyword == "TextValue"}
            assert {r["model"], "bodypart_sites"} <= texts  # the algorithm: name, sha256
        else:
            assert ds.SOPClassUID.name == "Secondary Capture Image Storage"
            assert ds.PhotometricInterpretation == "RGB" and ds.pixel_array.ndim == 3
    named = [r for r in rows if r["dest_path"].endswith("named.dcm")]
    assert {str(pydicom.dcmread(sorted_dicom / r["path"]).PatientName) for r in named} == \
        {"Roe^Richard"}


def test_writing_again_gives_the_same_uids(sorted_dicom: Path, tmp_path: Path) -> None:
    from xreg.sort.dicom_out import write_sort_dicom

    before = {r["sop_uid"] for r in _outputs(sorted_dicom)}
    copy = tmp_path / "out"
    shutil.copytree(sorted_dicom, copy)
    model = _outputs(copy)[0]["model"]
    skipped = write_sort_dicom(copy, copy / "registry.sqlite", "bodypart_sites", model)
    assert skipped.written == 0  # a cron rerun writes (and sends) only what is new
    again = write_sort_dicom(copy, copy / "registry.sqlite", "bodypart_sites", model,
                             again=True)
    assert again.written == 10 and {r["sop_uid"] for r in _outputs(copy)} == before


def test_the_objects_pass_dciodvfy(sorted_dicom: Path) -> None:
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("no DICOM validator: install Debian's dicom3tools (dciodvfy)")
    for r in _outputs(sorted_dicom):
        done = subprocess.run([tool, str(sorted_dicom / r["path"])], capture_output=True,
                              text=True, timeout=60)
        errors = [line for line in (done.stdout + done.stderr).splitlines()
                  if line.startswith("Error")]
        assert errors == [], (r["path"], errors)


def test_stow_sends_them_to_a_real_orthanc(sorted_dicom: Path, tmp_path: Path) -> None:
    binary = orthanc_binary()
    plugin = DICOMWEB_PLUGIN
    if binary is None or not plugin.exists():
        pytest.skip("no Orthanc with DICOMweb: install Debian's orthanc orthanc-dicomweb")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        http_port = s.getsockname()[1]
    config = {"Name": "xreg-test", "StorageDirectory": str(tmp_path / "db"),
              "IndexDirectory": str(tmp_path / "db"), "HttpPort": http_port,
              "DicomPort": 0, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
              "Plugins": [str(plugin)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    with running_orthanc(binary, config, tmp_path) as base:
        rows = _outputs(sorted_dicom)
        stow_files(f"{base}/dicom-web", [sorted_dicom / r["path"] for r in rows])
        with urllib.request.urlopen(f"{base}/instances?expand", timeout=10) as response:
            stored = json.load(response)
        assert {i["MainDicomTags"]["SOPInstanceUID"] for i in stored} == \
            {r["sop_uid"] for r in rows}


def test_a_scored_hip_study_puts_its_two_view_decision_in_the_sr(tmp_path: Path) -> None:
    from xreg.synth.generate import generate_dataset

    generate_dataset(tmp_path / "in", 0, seed=5, size=256, hip_pairs=2, formats=("dicom",),
                     workers=1)
    for p in (tmp_path / "in").rglob("*"):
        if p.is_file():
            make_old(p)
    out = tmp_path / "out"
    result = runner.invoke(app, ["sort", str(tmp_path / "in"), str(out), "--dicom-out",
                                 "--hip", "--quiet"])
    assert result.exit_code == 0, result.output
    with sqlite3.connect(out / "registry.sqlite") as db:
        studies = db.execute("SELECT ap_sha256, lateral_sha256, decision, fracture_prob"
                             " FROM hip_studies WHERE decision IS NOT NULL").fetchall()
        srs = dict(db.execute("SELECT sha256, path FROM dicom_outputs WHERE kind = 'sr'"))
    assert len(studies) == 2
    for ap, lateral, decision, prob in studies:
        for film in (ap, lateral):
            ds = pydicom.dcmread(out / srs[film])
            meanings = {str(e.value) for e in ds.iterall() if e.keyword == "CodeMeaning"}
            assert "Hip fracture two views" in meanings
            assert ("Present" if decision == "fracture" else "Absent") in meanings
            values = {round(float(e.value), 6) for e in ds.iterall()
                      if e.keyword == "NumericValue"}
            assert round(prob, 6) in values


def test_explain_on_a_dicom_film_writes_its_sr_and_sc(tmp_path: Path) -> None:
    film = Path(get_testdata_file("RG3_J2KR.dcm"))
    result = runner.invoke(app, ["explain", str(film), "--out", str(tmp_path), "--dicom-out",
                                 "--json", "--method", "saliency"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["results"]
    kinds = sorted(pydicom.dcmread(p).SOPClassUID.name for p in row["dicom"])
    assert kinds == ["Comprehensive 3D SR Storage", "Secondary Capture Image Storage"]
    assert all(Path(p).is_relative_to(tmp_path / "_dicom") for p in row["dicom"])
