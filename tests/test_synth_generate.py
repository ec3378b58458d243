"""xreg.synth planning, writers, dataset generation and the ``synth`` command.

The renderer is replaced by a tiny deterministic stand-in (``fake_render``),
so these tests check planning and writing, not the phantoms themselves
(tests/test_synth_render.py does that).
"""

from __future__ import annotations

import csv
import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from xreg.cli import app
from xreg.errors import ConfigError
from xreg.io import load_image
from xreg.synth import generate
from xreg.synth.generate import LABEL_COLUMNS, generate_dataset
from xreg.synth.hardware import compatible_instruments
from xreg.synth.plan import plan_dataset
from xreg.synth.sheet import sheet_specs, write_contact_sheet
from xreg.synth.spec import BODY_PARTS, INSTRUMENTS, VIEWS, Phantom, PhantomSpec
from xreg.synth.writers import (
    DicomHeader,
    DicomVariant,
    write_dicom,
    write_jpeg,
    write_png16,
)


def fake_render(spec: PhantomSpec) -> Phantom:
    """Gradient + seeded noise; a bright square (masked as hardware) for instruments."""
    n = spec.size
    rng = np.random.default_rng(spec.seed)
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) / max(n - 1, 1)
    image = (0.15 + 0.5 * x * (0.5 + y) / 1.5 + 0.05 * rng.random((n, n))).astype(np.float32)
    hardware = np.zeros((n, n), dtype=bool)
    if spec.instrument:
        hardware[n // 4: n // 2, n // 4: n // 2] = True
        image[hardware] = 0.98
    return Phantom(image=np.clip(image, 0, 1), spec=spec, masks={"hardware": hardware})


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generate, "render_phantom", fake_render)


def read_labels(out: Path) -> list[dict[str, str]]:
    with open(out / "labels.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == LABEL_COLUMNS
        return list(reader)


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


# --- planning ---------------------------------------------------------------

def test_plan_is_balanced_and_deterministic() -> None:
    items = plan_dataset(180, 7, size=64, instrument_rate=0.3)
    assert items == plan_dataset(180, 7, size=64, instrument_rate=0.3)
    assert items != plan_dataset(180, 8, size=64, instrument_rate=0.3)
    cells = Counter((i.spec.body_part, i.spec.view) for i in items)
    assert set(cells) == set(itertools.product(BODY_PARTS, VIEWS))
    assert set(cells.values()) == {10}
    assert Counter(i.format for i in items) == {"png16": 60, "jpeg": 60, "dicom": 60}
    assert len({i.path for i in items}) == 180
    assert len({i.patient_id for i in items}) == 180
    rate = sum(1 for i in items if i.spec.instrument) / len(items)
    assert 0.18 < rate < 0.42
    for item in items:
        if item.spec.instrument:
            assert item.spec.instrument in compatible_instruments(item.spec.body_part)
            assert item.spec.instrument in INSTRUMENTS
    with_distractors = sum(1 for i in items if i.spec.distractors) / len(items)
    assert 0.12 < with_distractors < 0.40


def test_uneven_count_differs_by_at_most_one() -> None:
    cells = Counter((i.spec.body_part, i.spec.view) for i in plan_dataset(40, 1, size=64))
    assert sum(cells.values()) == 40
    assert max(cells.values()) - min(cells.values()) <= 1


def test_hip_pairs_share_patient_study_and_fracture() -> None:
    items = plan_dataset(0, 3, size=64, hip_pairs=20, fracture_rate=0.45,
                         formats=("dicom",))
    assert len(items) == 40
    by_study: dict[str, list] = {}
    for item in items:
        by_study.setdefault(item.study_id, []).append(item)
    assert len(by_study) == 20
    fractured = 0
    for ap, lat in by_study.values():
        assert (ap.pair_role, lat.pair_role) == ("AP", "LAT")
        assert (ap.spec.view, lat.spec.view) == ("AP", "LAT")
        assert ap.spec.body_part == lat.spec.body_part == "hip"
        assert ap.patient_id == lat.patient_id
        assert ap.spec.patient_seed == lat.spec.patient_seed is not None
        assert ap.spec.laterality == lat.spec.laterality
        assert ap.spec.instrument == lat.spec.instrument
        assert ap.spec.fracture == lat.spec.fracture
        assert ap.spec.seed != lat.spec.seed
        assert ap.dicom_header.study_uid == lat.dicom_header.study_uid
        assert ap.dicom_header.accession == lat.dicom_header.accession
        assert ap.dicom_header.series_uid != lat.dicom_header.series_uid
        fractured += ap.spec.fracture is not None
    assert fractured == 9


@pytest.mark.parametrize("kwargs, message", [
    ({"formats": ("png16", "gif")}, "formats"),
    ({"instrument_rate": 1.5}, "instrument_rate"),
    ({"size": 8}, "size"),
])
def test_plan_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_dataset(10, 0, **kwargs)


# --- writers ----------------------------------------------------------------

def _phantom_image() -> np.ndarray:
    return fake_render(PhantomSpec("hip", "AP", "L", seed=5, size=96, instrument="plate")).image


def _header() -> DicomHeader:
    return DicomHeader(
        patient_id="PH0000000042", patient_name="PHANTOM^000042", study_uid="2.25.11",
        series_uid="2.25.12", sop_uid="2.25.13", accession="A000000000042",
        study_date="20190305", study_time="101500", view_position="AP", laterality="L",
        body_part_examined="HIP")


def _assert_same_picture(read: np.ndarray, image: np.ndarray, min_r: float = 0.999) -> None:
    assert read.shape == image.shape
    assert np.corrcoef(read.ravel(), image.ravel())[0, 1] > min_r
    # Bone bright: the instrument square is the brightest region after reading.
    assert read[30:40, 30:40].mean() > read[70:90, 0:10].mean()


def test_png16_and_jpeg_read_back(tmp_path: Path) -> None:
    image = _phantom_image()
    write_png16(image, tmp_path / "a.png")
    png = load_image(tmp_path / "a.png")
    assert png.meta.bits_stored == 16
    assert np.abs(png.pixels - image).max() <= 1 / 65535 + 1e-6
    write_jpeg(image, tmp_path / "a.jpg", quality=90)
    jpg = load_image(tmp_path / "a.jpg")
    assert jpg.meta.format == "jpeg"
    assert np.abs(jpg.pixels - image).mean() < 0.01
    _assert_same_picture(jpg.pixels, image, min_r=0.99)  # lossy


VARIANTS = [
    DicomVariant(modality, photometric, rescale, voi, bits, compression)
    for modality, photometric, rescale, voi, bits, compression in itertools.product(
        ("CR", "DX"), ("MONOCHROME2", "MONOCHROME1"), (False, True), (False, True), (12, 16),
        ("none", "rle", "j2k"))
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, vars(v).values())))
def test_dicom_variant_reads_back_bone_bright(tmp_path: Path, variant: DicomVariant) -> None:
    image = _phantom_image()
    path = tmp_path / "IM000001"  # no extension, as PACS exports
    write_dicom(image, path, _header(), variant)
    read = load_image(path)
    assert read.meta.format == "dicom"
    assert read.meta.photometric == variant.photometric
    assert read.meta.bits_stored == variant.bits_stored
    # Window (when written) spans the stored range, so values come back
    # exactly; without one the loader stretches min..max, so compare shapes.
    if variant.voi:
        assert np.abs(read.pixels - image).max() < 2 / (2**variant.bits_stored - 1) + 1e-5
    _assert_same_picture(read.pixels, image)
    ds = pydicom.dcmread(path)
    expected = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1"}
    assert ds.SOPClassUID == expected[variant.modality]
    assert ("RescaleSlope" in ds) == variant.rescale
    assert ("WindowCenter" in ds) == variant.voi
    assert ds.file_meta.TransferSyntaxUID.is_compressed == (variant.compression != "none")


def test_dicom_header_fields(tmp_path: Path) -> None:
    write_dicom(_phantom_image(), tmp_path / "x.dcm", _header(), DicomVariant("DX"))
    ds = pydicom.dcmread(tmp_path / "x.dcm")
    assert ds.PatientID == "PH0000000042"
    assert str(ds.PatientName) == "PHANTOM^000042"
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == (
        "2.25.11", "2.25.12", "2.25.13")
    assert ds.file_meta.MediaStorageSOPInstanceUID == "2.25.13"
    assert (ds.Modality, ds.ViewPosition, ds.ImageLaterality) == ("DX", "AP", "L")
    assert ds.BodyPartExamined == "HIP"
    assert ds.StudyDate == "20190305"
    meta = load_image(tmp_path / "x.dcm").meta.dicom
    assert meta.get("StudyInstanceUID") == "2.25.11"


def test_dicom_rejects_unknown_variant() -> None:
    with pytest.raises(ConfigError, match="compression"):
        DicomVariant(compression="jpeg-lossy")


# --- generate_dataset ---------------------------------------------------------

def test_same_seed_gives_byte_identical_output(tmp_path: Path, fake: None) -> None:
    kwargs = dict(size=64, hip_pairs=3, instrument_rate=0.3)
    generate_dataset(tmp_path / "a", 30, 11, workers=1, **kwargs)
    generate_dataset(tmp_path / "b", 30, 11, workers=2, **kwargs)  # pool: same bytes
    a, b = all_files(tmp_path / "a"), all_files(tmp_path / "b")
    assert len(a) == 30 + 6 + 3  # images, labels.csv, hip_pairs.csv, marker
    assert a == b
    generate_dataset(tmp_path / "c", 30, 12, workers=1, **kwargs)
    assert all_files(tmp_path / "c")["labels.csv"] != a["labels.csv"]


def test_labels_match_plan_and_files(tmp_path: Path, fake: None) -> None:
    out = tmp_path / "out"
    summary = generate_dataset(out, 36, 5, size=64, hip_pairs=4, fracture_rate=0.5,
                               instrument_rate=0.25, workers=1)
    rows = read_labels(out)
    assert len(rows) == summary.images == 44
    assert [r["path"] for r in rows] == [i.path for i in plan_dataset(
        36, 5, size=64, hip_pairs=4, fracture_rate=0.5, instrument_rate=0.25)]
    singles = [r for r in rows if not r["pair_role"]]
    assert Counter(r["body_part"] for r in singles) == {b: 4 for b in BODY_PARTS}
    for r in rows:
        read = load_image(out / r["path"])
        assert read.pixels.shape == (64, 64)
        assert r["instrument"] == ("1" if r["instrument_kind"] else "0")
        assert r["format"] == read.meta.format.replace("png", "png16")
        assert r["fracture"] == ("" if not r["pair_role"] else r["fracture"])
    pairs = [r for r in rows if r["pair_role"]]
    assert len(pairs) == 8
    assert sum(r["fracture"] == "1" for r in pairs) == 4
    for study in {r["study_id"] for r in pairs}:
        views = [r for r in pairs if r["study_id"] == study]
        assert sorted(r["pair_role"] for r in views) == ["AP", "LAT"]
        assert len({r["patient_id"] for r in views}) == 1
    assert summary.by_body_part["hip"] == 4 + 8


def test_refuses_foreign_folder_and_replaces_previous_output(tmp_path: Path,
                                                            fake: None) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        generate_dataset(foreign, 4, 0, size=64, workers=1)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    out = tmp_path / "out"
    generate_dataset(out, 20, 0, size=64, workers=1)
    (out / "keep.txt").write_text("keep")
    generate_dataset(out, 5, 1, size=64, workers=1)
    assert len(list((out / "images").iterdir())) == 5
    assert len(read_labels(out)) == 5
    assert (out / "keep.txt").read_text() == "keep"


def test_contact_sheet(tmp_path: Path) -> None:
    cells = sheet_specs(0, tile=48)
    assert {(s.body_part, s.view, s.instrument is not None) for s, _ in cells[:36]} == set(
        itertools.product(BODY_PARTS, VIEWS, (False, True)))
    assert any(s.fracture for s, _ in cells) and any(s.distractors for s, _ in cells)
    path = write_contact_sheet(tmp_path / "sheet.png", tile=48, renderer=fake_render)
    from PIL import Image

    with Image.open(path) as im:
        assert im.size[0] == 4 * 48
        assert im.size[1] >= 11 * 48


# --- the command ------------------------------------------------------------

def test_cli_synth_end_to_end(tmp_path: Path, fake: None) -> None:
    out = tmp_path / "synth"
    sheet = tmp_path / "sheet.png"
    result = CliRunner().invoke(app, [
        "synth", str(out), "--count", "12", "--seed", "3", "--size", "128",
        "--hip-pairs", "2", "--formats", "png16,dicom", "--contact-sheet", str(sheet)])
    assert result.exit_code == 0, result.output
    rows = read_labels(out)
    assert len(rows) == 16
    assert {r["format"] for r in rows} == {"png16", "dicom"}
    for r in rows:
        assert (out / r["path"]).is_file()
    assert sheet.is_file()
    assert "total" in result.output


def test_cli_synth_bad_format_is_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "o"), "--count", "2",
                                      "--formats", "bmp"])
    assert result.exit_code == 2
    assert "formats" in result.output
    assert not (tmp_path / "o").exists()


def test_real_renderer_round_trip(tmp_path: Path) -> None:
    """With the real renderer: deterministic across worker counts, files match the phantoms."""
    render = pytest.importorskip("xreg.synth.render").render_phantom
    kwargs = dict(size=96, hip_pairs=1, instrument_rate=0.3)
    generate_dataset(tmp_path / "a", 18, 2, workers=1, **kwargs)
    generate_dataset(tmp_path / "b", 18, 2, workers=2, **kwargs)
    assert all_files(tmp_path / "a") == all_files(tmp_path / "b")
    for item in plan_dataset(18, 2, **kwargs):
        image = render(item.spec).image
        read = load_image(tmp_path / "a" / item.path).pixels
        r = np.corrcoef(read.ravel(), image.ravel())[0, 1]
        assert r > (0.98 if item.format == "jpeg" else 0.995), (item.path, r)


def test_out_of_scope_images_are_written_apart_from_the_labels(tmp_path: Path) -> None:
    summary = generate_dataset(tmp_path / "o", 0, seed=4, size=64, workers=1, out_of_scope=6)
    assert summary.images == 0 and summary.out_of_scope == 6
    rows = list(csv.DictReader((tmp_path / "o" / "out_of_scope.csv").open()))
    assert [r["kind"] for r in rows] == ["chest", "skull", "abdomen", "blank", "photo",
                                         "chest"]
    for r in rows:
        image = load_image(tmp_path / "o" / r["path"])
        assert image.pixels.shape == (64, 64)
    # The photo is a colour JPEG: load_image turned it to grey.
    photo = load_image(tmp_path / "o" / rows[4]["path"])
    assert photo.meta.format == "jpeg"
    # A rerun replaces them (none left over from the first run).
    generate_dataset(tmp_path / "o", 0, seed=4, size=64, workers=1, out_of_scope=2)
    assert sorted(p.name for p in (tmp_path / "o" / "out_of_scope").iterdir()) == [
        "oos_000000.png", "oos_000001.jpg"]


def test_hip_pairs_csv_lists_each_study_once_with_both_views(tmp_path: Path) -> None:
    generate_dataset(tmp_path, 0, seed=9, size=64, hip_pairs=6, workers=1)
    labels = {r["path"]: r for r in csv.DictReader((tmp_path / "labels.csv").open())}
    pairs = list(csv.DictReader((tmp_path / "hip_pairs.csv").open()))
    assert len(pairs) == 6 and len({p["study"] for p in pairs}) == 6
    for p in pairs:
        ap, lat = labels[p["ap_path"]], labels[p["lateral_path"]]
        assert (ap["pair_role"], lat["pair_role"]) == ("AP", "LAT")
        assert ap["study_id"] == lat["study_id"] == p["study"]
        assert p["fracture"] == ap["fracture"] == lat["fracture"]
        assert p["patient_id"] == ap["patient_id"] == lat["patient_id"]
        if ap["format"] != "dicom":  # rasters are named as people name them
            assert p["ap_path"].split("/")[-1].startswith(f"{p['study']}_AP.")
            assert p["lateral_path"].split("/")[-1].startswith(f"{p['study']}_LAT.")
