"""``xreg serve``'s patient and study pages through FastAPI's TestClient.

The data: small DICOMs (pydicom's ``CT_small.dcm`` with a PatientID, a name and
a StudyDate set) sorted by the real ``run_sort`` with two biased tiny
checkpoints, so one patient's films land in ``knee`` (no fracture) and the
other's in ``hand`` (fracture): the filters have something to narrow.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason='xreg serve needs pip install "xreg[serve]"')

from fastapi.testclient import TestClient  # noqa: E402

from tests.conftest import biased_checkpoint, make_old  # noqa: E402
from xreg.config import SortOptions  # noqa: E402
from xreg.model.models import BODY_PARTS  # noqa: E402
from xreg.serve.app import create_app  # noqa: E402
from xreg.serve.config import ServeConfig  # noqa: E402
from xreg.sort.runner import run_sort  # noqa: E402

#: (PatientID, name, StudyDate, study number, view) per film; the IDs and names
#: must appear on no page.
KNEE_FILMS = (("PID-734215-A", "Doe^Jane", "20230105", 1, "AP"),
              ("PID-734215-A", "Doe^Jane", "20230105", 1, "LAT"),
              ("PID-734215-A", "Doe^Jane", "20230610", 2, "AP"))
HAND_FILMS = (("PID-998877-B", "Roe^Rick", "20230220", 3, "PA"),
              ("PID-998877-B", "Roe^Rick", "20240301", 4, "PA"))
SECRETS = ("PID-734215-A", "PID-998877-B", "734215", "998877", "Doe", "Jane", "Roe", "Rick")


def write_films(folder: Path, films: tuple[tuple[str, str, str, int, str], ...]) -> None:
    """One small DICOM per film spec, with the patient's header fields set."""
    import pydicom
    from pydicom.data import get_testdata_file

    folder.mkdir(parents=True, exist_ok=True)
    for i, (pid, name, date, study, view) in enumerate(films):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.PatientID, ds.PatientName, ds.StudyDate = pid, name, date
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.99.{study}"
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.99.{study}.{i}"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.99.{study}.{i}.1"
        ds.ViewPosition = view
        path = folder / f"{study}_{i}"
        ds.save_as(path)
        make_old(path)


def sort_patients(root: Path) -> tuple[Path, Path]:
    """OUT with both patients sorted into it, and the weights to serve it with."""
    knee = biased_checkpoint(root / "knee.pt", BODY_PARTS, "knee", fracture=-4.0, margin=10.0)
    hand = biased_checkpoint(root / "hand.pt", BODY_PARTS, "hand", fracture=4.0, margin=10.0)
    write_films(root / "in_knee", KNEE_FILMS)
    write_films(root / "in_hand", HAND_FILMS)
    out = root / "out"
    run_sort(root / "in_knee", out, SortOptions(weights=knee, min_age=0))
    run_sort(root / "in_hand", out, SortOptions(weights=hand, min_age=0))
    return out, knee


def serve(out: Path, weights: Path, *, raise_errors: bool = True) -> Iterator[TestClient]:
    """A client of the gated app; ``client.gate`` is the app it talks to."""
    gate = create_app(ServeConfig(out_root=out, weights=weights), heatmaps=False)
    with TestClient(gate, base_url="http://127.0.0.1",
                    raise_server_exceptions=raise_errors) as c:
        c.gate = gate  # type: ignore[attr-defined]
        c.get("/")  # the CSRF cookie
        yield c


def patient_keys(out: Path) -> dict[str, str]:
    """Body part -> the keyed patient hash of the films sorted there."""
    db = sqlite3.connect(out / "registry.sqlite")
    try:
        return {str(r[0]): str(r[1]) for r in db.execute(
            "SELECT DISTINCT body_part, patient_key FROM images WHERE state = 'done'")}
    finally:
        db.close()


@pytest.fixture(scope="module")
def sorted_out(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return sort_patients(tmp_path_factory.mktemp("patients"))


@pytest.fixture(scope="module")
def web(sorted_out: tuple[Path, Path]) -> Iterator[TestClient]:
    yield from serve(*sorted_out)
