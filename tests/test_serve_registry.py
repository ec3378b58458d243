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


def keys(out: Path) -> tuple[str, str]:
    found = patient_keys(out)
    return found["knee"], found["hand"]


# ----------------------------------------------------------------- pages


def test_the_pages_render_with_data_and_link_from_the_nav(
        web: TestClient, sorted_out: tuple[Path, Path]) -> None:
    knee, hand = keys(sorted_out[0])
    for url in ("/patients", "/studies", f"/patient/{knee}", f"/patient/{hand}"):
        page = web.get(url)
        assert page.status_code == 200, url
        assert "text/html" in page.headers["content-type"]
        assert "<script" not in page.text and " style=" not in page.text  # the CSP allows neither
        assert 'href="/patients"' in page.text and 'href="/studies"' in page.text
    listing = web.get("/patients").text
    assert f'href="/patient/{knee}"' in listing and f'href="/patient/{hand}"' in listing
    studies = web.get("/studies").text
    table = studies[studies.index('id="studies"'):]
    assert table[:table.index("</table>")].count("<tr>") - 1 == 4  # 4 studies, 1 header row
    assert 'id="per-month"' in studies


def test_the_timeline_lists_studies_by_date_with_their_films(
        web: TestClient, sorted_out: tuple[Path, Path]) -> None:
    out = sorted_out[0]
    knee, _ = keys(out)
    timeline = web.get(f"/patient/{knee}?format=json").json()["patient"]
    assert timeline["patient"] == knee
    assert [s["date"] for s in timeline["studies"]] == ["2023-01-05", "2023-06-10"]
    assert [len(s["films"]) for s in timeline["studies"]] == [2, 1]
    film = timeline["studies"][0]["films"][0]
    assert {"sha256", "dest_path", "body_part", "instrument", "fracture", "view_position",
            "status"} <= set(film)
    assert {f["view_position"] for f in timeline["studies"][0]["films"]} == {"AP", "LAT"}
    page = web.get(f"/patient/{knee}").text
    shas = [f["sha256"] for s in timeline["studies"] for f in s["films"]]
    for sha in shas:  # a thumbnail (and a link) per film, in date order
        assert f'src="/image/{sha}/thumb.jpg"' in page
    assert page.index(shas[0]) < page.index(shas[2])
    thumb = web.get(f"/image/{shas[0]}/thumb.jpg")
    assert thumb.status_code == 200 and thumb.content[:3] == b"\xff\xd8\xff"


def test_filters_narrow_the_rows(web: TestClient, sorted_out: tuple[Path, Path]) -> None:
    knee, hand = keys(sorted_out[0])

    def patients(query: str) -> list[str]:
        return [r["patient"] for r in web.get(f"/patients?{query}&format=json").json()["rows"]]

    def study_dates(query: str) -> list[str]:
        return [r["date"] for r in web.get(f"/studies?{query}&format=json").json()["rows"]]

    assert sorted(patients("")) == sorted([knee, hand])
    assert patients("body_part=knee") == [knee]
    assert patients("fracture=1") == [hand] and patients("fracture=0") == [knee]
    assert patients("instrument=1") == []
    assert patients("since=2024-01-01") == [hand]
    assert study_dates("") == ["2023-01-05", "2023-02-20", "2023-06-10", "2024-03-01"]
    assert study_dates("body_part=hand") == ["2023-02-20", "2024-03-01"]
    assert study_dates("since=2023-02-01&until=2023-12-31") == ["2023-02-20", "2023-06-10"]
    # The form keeps what was chosen, and the page says so.
    page = web.get("/studies?body_part=hand&fracture=1").text
    assert '<option value="hand" selected>' in page
    assert '<option value="1" selected>fracture</option>' in page
    assert f'href="/patient/{knee}"' not in page


def test_json_shapes(web: TestClient) -> None:
    listing = web.get("/patients?format=json").json()
    assert {"rows", "total", "page", "pages", "per_page", "filters"} <= set(listing)
    assert listing["total"] == 2 and listing["page"] == 1 and listing["pages"] == 1
    assert set(listing["filters"]) == {"body_part", "instrument", "fracture", "since", "until"}
    assert {"patient", "first_study", "last_study", "studies", "films", "body_parts",
            "hardware", "fractures"} <= set(listing["rows"][0])
    studies = web.get("/studies?body_part=knee&format=json").json()
    assert studies["filters"]["body_part"] == "knee" and studies["total"] == 2
    assert {"study", "patient", "date", "films", "body_parts", "views", "fracture"} <= set(
        studies["rows"][0])
    assert studies["per_month"] == [{"month": "2023-01", "body_part": "knee", "studies": 1},
                                    {"month": "2023-06", "body_part": "knee", "studies": 1}]
    assert "chart" not in studies  # drawing coordinates are the HTML page's business


def test_pages_of_patients(web: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from xreg.serve import routes_registry

    monkeypatch.setattr(routes_registry, "PER_PAGE", 1)
    first = web.get("/patients?format=json").json()
    second = web.get("/patients?page=2&format=json").json()
    assert first["pages"] == 2 and first["total"] == second["total"] == 2
    assert len(first["rows"]) == len(second["rows"]) == 1
    assert first["rows"][0]["patient"] != second["rows"][0]["patient"]
    assert web.get("/patients?page=3&format=json").json()["rows"] == []
    assert 'href="/studies?body_part=knee&amp;page=2"' in web.get("/studies?body_part=knee").text


def test_unknown_or_malformed_patient_keys_are_404(web: TestClient,
                                                   sorted_out: tuple[Path, Path]) -> None:
    knee, _ = keys(sorted_out[0])
    for key in ("0" * 32, knee.upper(), knee + "0", knee[:-1], "PID-734215-A", "x' OR 1=1"):
        assert web.get(f"/patient/{key}").status_code == 404, key
        answer = web.get(f"/patient/{key}?format=json")
        assert answer.status_code == 404 and answer.json() == {"error": "no such patient"}


def test_bad_filters_are_422(web: TestClient) -> None:
    for query in ("body_part=nose", "since=2023-13-45", "since=2024-01-01&until=2023-01-01",
                  "instrument=2", "fracture=yes", "since=yesterday", "page=0"):
        for url in (f"/patients?{query}", f"/studies?{query}"):
            assert web.get(url).status_code == 422, url


def test_the_raw_patient_id_appears_on_no_page(web: TestClient,
                                               sorted_out: tuple[Path, Path]) -> None:
    out = sorted_out[0]
    knee, hand = keys(out)
    db = sqlite3.connect(out / "registry.sqlite")
    shas = [r[0] for r in db.execute("SELECT sha256 FROM images WHERE state = 'done'")]
    db.close()
    urls = ["/patients", "/studies", f"/patient/{knee}", f"/patient/{hand}", "/gallery", "/",
            *[f"/image/{sha}" for sha in shas]]
    for url in urls:
        for suffix in ("", "&format=json" if "?" in url else "?format=json"):
            page = web.get(url + suffix)
            assert page.status_code == 200, url
            for secret in SECRETS:
                assert secret not in page.text, (url, secret)


def test_the_chart_draws_a_segment_per_month_and_body_part(web: TestClient) -> None:
    per_month = web.get("/studies?format=json").json()["per_month"]
    page = web.get("/studies").text
    svg = page[page.index('id="per-month"'):]
    svg = svg[:svg.index("</svg>")]
    assert svg.count("<rect ") == len(per_month) == 4
    assert web.get("/studies?body_part=knee").text.count('class="series-') == 2 + 1  # + legend


def test_month_bars_fill_gaps_and_stack_to_scale() -> None:
    from xreg.serve.charts import month_bars, months_between

    assert months_between("2023-11", "2024-02") == ["2023-11", "2023-12", "2024-01", "2024-02"]
    chart = month_bars([{"month": "2023-11", "body_part": "knee", "studies": 2},
                        {"month": "2023-11", "body_part": "hand", "studies": 1},
                        {"month": "2024-01", "body_part": "knee", "studies": 1}],
                       ("hand", "knee"))
    assert chart["months"] == ["2023-11", "2023-12", "2024-01"] and chart["top"] == 3
    first, gap, last = chart["bars"]
    assert [s["body_part"] for s in first["segments"]] == ["hand", "knee"]
    assert first["segments"][1]["height"] == pytest.approx(2 * first["segments"][0]["height"],
                                                         abs=0.02)
    assert first["segments"][1]["y"] == pytest.approx(chart["plot_top"], abs=0.02)  # tallest
    assert gap["segments"] == [] and last["segments"][0]["series"] == 1
    assert month_bars([], ("knee",))["bars"] == []
