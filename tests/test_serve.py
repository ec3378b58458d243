"""``xreg serve`` through FastAPI's TestClient: every page, the gate, reviews, apply, upload."""

from __future__ import annotations

import hashlib
import re
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason='xreg serve needs pip install "xreg[serve]"')

from fastapi.testclient import TestClient  # noqa: E402

from tests.conftest import biased_checkpoint, write_inputs  # noqa: E402
from xreg.config import SortOptions  # noqa: E402
from xreg.model.models import BODY_PARTS  # noqa: E402
from xreg.serve.app import create_app  # noqa: E402
from xreg.serve.config import ServeConfig  # noqa: E402
from xreg.sort.folders import output_lock  # noqa: E402
from xreg.sort.runner import run_sort  # noqa: E402


@pytest.fixture(scope="module")
def knee_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Every film "knee" at about 0.71 (margin 3 over 8 others): min_confidence 0.8
    # sends all to _review, 0.5 sorts all.
    return biased_checkpoint(tmp_path_factory.mktemp("w") / "knee.pt", BODY_PARTS, "knee",
                             fracture=-2.0, margin=3.0)


@pytest.fixture(scope="module")
def sorted_base(tmp_path_factory: pytest.TempPathFactory, knee_model: Path) -> Path:
    root = tmp_path_factory.mktemp("served")
    write_inputs(root / "in")
    run_sort(root / "in", root / "out", SortOptions(weights=knee_model, min_age=0,
                                                    min_confidence=0.8))
    return root


@pytest.fixture
def out(sorted_base: Path, tmp_path: Path) -> Path:
    target = tmp_path / "out"
    shutil.copytree(sorted_base / "out", target)
    return target


def client(out: Path, weights: Path, **kwargs: object) -> Iterator[TestClient]:
    config = ServeConfig(out_root=out, weights=weights, **kwargs)  # type: ignore[arg-type]
    with TestClient(create_app(config, heatmaps=False), base_url="http://127.0.0.1") as c:
        c.get("/")  # the CSRF cookie
        yield c


@pytest.fixture
def web(out: Path, knee_model: Path) -> Iterator[TestClient]:
    yield from client(out, knee_model, reviewer="Dr Test")


def csrf(c: TestClient) -> str:
    value = c.cookies.get("xreg_csrf")
    assert value
    return value


def rows(out: Path, sql: str, *args: object) -> list[sqlite3.Row]:
    db = sqlite3.connect(out / "registry.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def first_review_sha(out: Path) -> str:
    return str(rows(out, "SELECT sha256 FROM images WHERE status = 'review' AND body_part"
                         " IS NOT NULL ORDER BY dest_path")[0]["sha256"])


# ----------------------------------------------------------------- pages


def test_every_page_renders_and_is_also_json(web: TestClient, out: Path) -> None:
    for url in ("/", "/gallery", "/gallery?status=review&page=1", "/review", "/reviews",
                "/upload"):
        page = web.get(url)
        assert page.status_code == 200, url
        assert "text/html" in page.headers["content-type"]
        assert "<script" not in page.text  # no JavaScript, nothing from a CDN
        assert "http://" not in page.text.replace("http://127.0.0.1", "")
    stats = web.get("/?format=json").json()
    placed = rows(out, "SELECT COUNT(*) AS n FROM images WHERE state = 'done'")[0]["n"]
    assert stats["total"] == placed
    assert stats["counts"]["status"]["review"] == len(rows(
        out, "SELECT 1 FROM images WHERE status = 'review'"))
    gallery = web.get("/gallery?status=unreadable&format=json").json()
    assert gallery["total"] == 2 and {i["status"] for i in gallery["items"]} == {"unreadable"}


def test_image_page_thumbnail_and_preview(web: TestClient, out: Path) -> None:
    sha = first_review_sha(out)
    page = web.get(f"/image/{sha}?format=json").json()["image"]
    assert page["body_part"] == "knee" and page["probabilities"]["body_part"]["knee"] > 0.5
    assert page["sources"] and page["run"]["model_sha256"] == page["model_sha256"]
    assert "PatientName" not in str(page) and "patient_id" not in page["header"]
    thumb = web.get(f"/image/{sha}/thumb.jpg")
    assert thumb.status_code == 200 and thumb.content[:3] == b"\xff\xd8\xff"
    cached = list((out / "_thumbs").rglob(f"{sha}.jpg"))
    assert len(cached) == 1
    again = web.get(f"/image/{sha}/thumb.jpg", headers={"If-None-Match": thumb.headers["etag"]})
    assert again.status_code == 304 and not again.content
    assert web.get(f"/image/{sha}/preview.jpg").status_code == 200
    # Never inside a class folder.
    assert all(p.parts[len(out.parts)] == "_thumbs" for p in out.rglob("*.jpg")
               if sha in p.name)


def test_pages_are_addressed_by_hash_never_by_path(web: TestClient) -> None:
    for url in ("/image/..%2F..%2Fetc%2Fpasswd", "/image/../../etc/passwd",
                "/image/" + "a" * 63, "/image/" + "g" * 64, "/image/" + "a" * 64,
                "/image/" + "a" * 64 + "/thumb.jpg", "/upload/" + "a" * 64 + "/overlay.png",
                "/static/../registry.sqlite", "/static/%2e%2e/%2e%2e/registry.sqlite"):
        assert web.get(url).status_code == 404, url


# ----------------------------------------------------------------- gate


def test_a_token_is_required_beyond_loopback(out: Path, knee_model: Path) -> None:
    from xreg.errors import ConfigError

    with pytest.raises(ConfigError, match="needs a --token"):
        ServeConfig(out_root=out, host="0.0.0.0")
    token = "t" * 24
    app = create_app(ServeConfig(out_root=out, host="0.0.0.0", token=token,
                                 weights=knee_model), heatmaps=False)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        assert c.get("/").status_code == 401
        assert c.get("/gallery?token=wrong" + "x" * 20).status_code == 401
        assert c.get("/", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert c.get(f"/?token={token}").status_code == 200  # sets the cookie
        assert c.get("/gallery").status_code == 200  # the cookie carries it
        assert c.get("/static/style.css").status_code == 200


def test_posts_need_the_csrf_token_and_the_same_origin(web: TestClient, out: Path) -> None:
    sha = first_review_sha(out)
    form = {"body_part": "hip"}
    assert web.post(f"/review/{sha}", data=form).status_code == 422  # no field at all
    assert web.post(f"/review/{sha}", data={**form, "csrf": "forged"}).status_code == 403
    assert web.post(f"/review/{sha}", data={**form, "csrf": csrf(web)},
                    headers={"Origin": "http://evil.example"}).status_code == 403
    assert rows(out, "SELECT COUNT(*) AS n FROM reviews")[0]["n"] == 0
    assert web.post("/apply", data={"csrf": "forged"}).status_code == 403


def test_oversized_and_overfull_uploads_get_413(out: Path, knee_model: Path) -> None:
    for c in client(out, knee_model, max_request_bytes=64 * 1024, max_files=2):
        big = {"files": ("big.png", b"\x89PNG\r\n\x1a\n" + b"0" * 100_000, "image/png")}
        response = c.post("/upload", data={"csrf": csrf(c)}, files=big)
        assert response.status_code == 413 and "limit" in response.text
        # Streamed without a length (chunked): counted as it arrives.
        boundary = b"xregboundary"
        body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="csrf"\r\n\r\n'
                + csrf(c).encode() + b"\r\n--" + boundary
                + b'\r\nContent-Disposition: form-data; name="files"; filename="a.png"'
                + b"\r\n\r\n" + b"0" * 200_000 + b"\r\n--" + boundary + b"--\r\n")
        streamed = c.post("/upload", content=(body[i:i + 8192]
                                              for i in range(0, len(body), 8192)),
                          headers={"content-type": "multipart/form-data; boundary="
                                                   + boundary.decode()})
        assert "content-length" not in streamed.request.headers
        assert streamed.status_code == 413 and "limit" in streamed.text
        png = (out / "_review").glob("*.png").__next__().read_bytes()
        many = [("files", (f"f{i}.png", png, "image/png")) for i in range(3)]
        response = c.post("/upload", data={"csrf": csrf(c)}, files=many)
        assert response.status_code == 413 and "too many files" in response.text


# ----------------------------------------------------------------- review and apply


def test_a_review_is_a_row_of_its_own_and_apply_moves_the_file(
        web: TestClient, out: Path) -> None:
    sha = first_review_sha(out)
    before = rows(out, "SELECT * FROM images WHERE sha256 = ?", sha)[0]
    data = (out / before["dest_path"]).read_bytes()
    queue = web.get("/review?format=json").json()
    assert sha in [i["sha256"] for i in queue["items"]]
    response = web.post(f"/review/{sha}", data={"csrf": csrf(web), "body_part": "hip",
                                                "instrument": "1", "fracture": "0",
                                                "note": "<b>hardware</b> seen"})
    assert response.status_code == 200  # redirected back to the queue
    review = rows(out, "SELECT * FROM reviews")[0]
    assert (review["reviewer"], review["body_part"], review["instrument"],
            review["fracture"]) == ("Dr Test", "hip", 1, 0)
    assert (review["model_body_part"], review["model_sha256"]) == ("knee",
                                                                  before["model_sha256"])
    assert review["apply_state"] is None
    assert sha not in [i["sha256"] for i in web.get("/review?format=json").json()["items"]]
    assert "&lt;b&gt;hardware" in web.get(f"/image/{sha}").text  # escaped, never markup
    applied = web.post("/apply", data={"csrf": csrf(web)})
    assert applied.status_code == 200
    after = rows(out, "SELECT * FROM images WHERE sha256 = ?", sha)[0]
    assert after["dest_path"].startswith("hip/instrument/")
    assert (after["status"], after["body_part"], after["body_part_prob"]) == (
        "sorted", "knee", before["body_part_prob"])  # what the model said stays
    assert (out / after["dest_path"]).read_bytes() == data
    assert not (out / before["dest_path"]).exists()
    assert rows(out, "SELECT apply_state FROM reviews")[0]["apply_state"] == "done"


def test_not_msk_stays_in_review_and_a_bad_label_is_refused(web: TestClient,
                                                            out: Path) -> None:
    sha = first_review_sha(out)
    bad = web.post(f"/review/{sha}", data={"csrf": csrf(web), "body_part": "../etc"})
    assert bad.status_code == 422
    web.post(f"/review/{sha}", data={"csrf": csrf(web), "body_part": "not_msk"})
    web.post("/apply", data={"csrf": csrf(web)})
    image = rows(out, "SELECT * FROM images WHERE sha256 = ?", sha)[0]
    assert image["dest_path"].startswith("_review/") and image["status"] == "review"
    assert rows(out, "SELECT apply_state FROM reviews")[0]["apply_state"] == "done"


def test_a_held_lock_answers_409_and_changes_nothing(web: TestClient, out: Path) -> None:
    sha = first_review_sha(out)
    web.post(f"/review/{sha}", data={"csrf": csrf(web), "body_part": "hip"})
    dest = rows(out, "SELECT dest_path FROM images WHERE sha256 = ?", sha)[0]["dest_path"]
    png = (out / "_review").glob("*.png").__next__().read_bytes()
    with output_lock(out):  # what a cron `xreg sort` holds
        assert web.get("/gallery").status_code == 200  # reading works meanwhile
        response = web.post("/apply", data={"csrf": csrf(web)})
        assert response.status_code == 409 and "a sort is running" in response.text
        analysed = web.post("/upload", data={"csrf": csrf(web)},
                            files={"files": ("x.png", png, "image/png")})
        keep = re.findall(r'name="sha" value="([0-9a-f]{64})"', analysed.text)
        added = web.post("/upload/add", data={"csrf": csrf(web), "sha": keep})
        assert added.status_code == 409
    assert rows(out, "SELECT dest_path FROM images WHERE sha256 = ?", sha)[0][
        "dest_path"] == dest
    assert rows(out, "SELECT apply_state FROM reviews")[0]["apply_state"] is None


def test_read_only_refuses_every_change(out: Path, knee_model: Path) -> None:
    sha = first_review_sha(out)
    for c in client(out, knee_model, read_only=True, reviewer="R"):
        assert "review-form" not in c.get("/review").text
        assert c.post(f"/review/{sha}", data={"csrf": csrf(c), "body_part": "hip"}
                      ).status_code == 403
        assert c.post("/apply", data={"csrf": csrf(c)}).status_code == 403
        assert c.post("/upload/add", data={"csrf": csrf(c), "sha": sha}).status_code == 403
    assert rows(out, "SELECT COUNT(*) AS n FROM reviews")[0]["n"] == 0


def test_a_reviewer_names_themselves_per_session(out: Path, knee_model: Path) -> None:
    sha = first_review_sha(out)
    for c in client(out, knee_model):
        assert c.post(f"/review/{sha}", data={"csrf": csrf(c), "body_part": "hip"}
                      ).status_code == 422
        c.post("/reviewer", data={"csrf": csrf(c), "name": "Ana  Lima"})
        assert "Ana Lima" in c.get("/review").text
        c.post(f"/review/{sha}", data={"csrf": csrf(c), "body_part": "hip"})
    assert rows(out, "SELECT reviewer FROM reviews")[0]["reviewer"] == "Ana Lima"


# ----------------------------------------------------------------- upload


def test_upload_is_judged_by_content_and_kept_only_on_request(
        web: TestClient, out: Path, inputs: tuple[Path, dict[str, Path]]) -> None:
    from pydicom.data import get_testdata_file

    _, files = inputs
    before = rows(out, "SELECT COUNT(*) AS n FROM images")[0]["n"]
    dicom = Path(get_testdata_file("MR_small.dcm")).read_bytes()  # not placed yet
    new_png = files["png16_1.png"].read_bytes()  # same content as a placed one
    upload = [("files", ("../../evil name;rm -rf.png", dicom, "image/png")),
              ("files", ("notes.dcm", b"just some text, not a film" * 10, "text/plain")),
              ("files", ("again.png", new_png, "image/png"))]
    response = web.post("/upload", data={"csrf": csrf(web)}, files=upload)
    assert response.status_code == 200
    results = web.post("/upload?format=json", data={"csrf": csrf(web)},
                       files=upload).json()["results"]
    # The card's min_confidence (0.5) sorts a knee at 0.71: the sort of OUT used 0.8.
    assert [r["status"] for r in results] == ["sorted", "refused", "sorted"]
    assert results[0]["format"] == "dicom" and results[0]["labels"]["body_part"] == "knee"
    assert results[0]["name"] == "evil_name_rm_-rf.png"
    assert "judged by its content" in results[1]["reason"]
    assert rows(out, "SELECT COUNT(*) AS n FROM images")[0]["n"] == before  # nothing kept
    assert not list(out.rglob("evil*"))
    keep = re.findall(r'name="sha" value="([0-9a-f]{64})"', response.text)
    assert len(keep) == 2
    added = web.post("/upload/add?format=json", data={"csrf": csrf(web), "sha": keep}).json()
    statuses = sorted(f["status"] for f in added["result"]["files"])
    assert statuses == ["duplicate", "sorted"]
    placed = rows(out, "SELECT * FROM images WHERE sha256 = ?",
                  hashlib.sha256(dicom).hexdigest())[0]
    assert placed["dest_path"] == "knee/no_instrument/evil_name_rm_-rf.png"
    assert (out / placed["dest_path"]).read_bytes() == dicom
    run = rows(out, "SELECT * FROM runs ORDER BY id DESC")[0]
    assert run["input_root"].startswith("web upload")


def test_cli_serve_refuses_a_public_host_without_the_extra_or_token(
        tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from xreg.cli import app

    result = CliRunner().invoke(app, ["serve", str(tmp_path), "--token", "short"])
    assert result.exit_code == 2 and "at least 16" in result.output


def test_no_page_shows_a_patient_name_id_or_birth_date(web: TestClient, out: Path,
                                                       tmp_path: Path) -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "PID-734215", "19610704"
    path = tmp_path / "named.dcm"
    ds.save_as(path)
    analysed = web.post("/upload", data={"csrf": csrf(web)},
                        files={"files": ("named.dcm", path.read_bytes(), "application/dicom")})
    keep = re.findall(r'name="sha" value="([0-9a-f]{64})"', analysed.text)
    web.post("/upload/add", data={"csrf": csrf(web), "sha": keep})
    sha = keep[0]
    pages = [analysed.text, web.get(f"/image/{sha}").text,
             web.get(f"/image/{sha}?format=json").text, web.get("/gallery").text,
             web.get("/review?format=json").text, web.get("/?format=json").text]
    image = web.get(f"/image/{sha}?format=json").json()["image"]
    assert image["header"]["patient_key"]  # the keyed hash stands in for the ID
    for page in pages:
        for secret in ("Doe", "Jane", "PID-734215", "19610704"):
            assert secret not in page


def test_a_decompression_bomb_upload_is_refused_before_decoding(web: TestClient) -> None:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    # A 60000 x 60000 PNG header (3.6 gigapixels) over a few bytes of data.
    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8,
                                                               0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))
    result = web.post("/upload?format=json", data={"csrf": csrf(web)},
                      files={"files": ("bomb.png", bomb, "image/png")}).json()["results"][0]
    assert result["status"] == "unreadable" and result["reason"] == "image too large"


def test_cli_serve_prints_a_generated_token_beyond_loopback(out: Path,
                                                            knee_model: Path) -> None:
    import json
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "xreg", "serve", str(out), "--host", "0.0.0.0", "--port",
         str(port), "--weights", str(knee_model), "--read-only"],
        stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # printed before the server starts
        token = re.search(r"\?token=([\w-]+)", line)
        assert token and "token generated" in line and "read-only" in line, line
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/static/style.css", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.2)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/?format=json", timeout=5)
        assert refused.value.code == 401
        with urllib.request.urlopen(f"{base}/?format=json&token={token.group(1)}",
                                    timeout=5) as page:
            assert json.load(page)["total"] > 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ----------------------------------------------------------------- review at speed


def queue_shas(out: Path) -> list[str]:
    """The queue in its default order, recomputed from the registry (every film here is
    "knee" at one confidence, so the order falls to the content hash)."""
    return [r["sha256"] for r in rows(
        out, "SELECT sha256 FROM images WHERE state = 'done' AND status IN ('review',"
             " 'sorted') AND body_part IS NOT NULL AND sha256 NOT IN (SELECT sha256 FROM"
             " reviews) ORDER BY body_part_prob, sha256")]


def test_review_at_speed_walks_the_queue_as_html_and_json(web: TestClient, out: Path) -> None:
    order = queue_shas(out)
    assert len(order) > 3
    first = web.get("/review/next?format=json").json()
    assert first["film"]["sha256"] == order[0] and first["film"]["body_part"] == "knee"
    assert (first["position"], first["total"], first["prev"], first["next"]) == (
        1, len(order), None, order[1])
    assert "dest_path" not in first["film"]  # a path may carry a patient folder's name
    keys = {k["key"]: k["label"] for k in first["keys"]}
    assert {keys[k] for k in "aefhpksvwn"} == {"ankle", "elbow", "foot", "hand", "hip",
                                               "knee", "shoulder", "spine", "wrist",
                                               "not_msk"}
    assert len(keys) == len(first["keys"]) and not set(keys) & set("iux")
    second = web.get(f"/review/film/{order[1]}?format=json").json()
    assert (second["prev"], second["next"], second["position"]) == (order[0], order[2], 2)
    page = web.get(f"/review/film/{order[1]}")
    assert page.status_code == 200
    assert '<script src="/static/review.js"' in page.text and "<script>" not in page.text
    assert f'src="/image/{order[1]}/preview.jpg"' in page.text
    assert 'data-key="h"' in page.text and 'name="accept" value="1"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    script = web.get("/static/review.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "keydown" in script.text
    assert web.get(f"/review/film/{'0' * 64}?format=json").status_code == 404
    assert web.get("/review/film/..%2Fregistry.sqlite").status_code == 404


def test_a_keystroke_decision_is_a_review_and_names_the_next_film(
        web: TestClient, out: Path) -> None:
    order = queue_shas(out)
    done = web.post(f"/review/film/{order[0]}?format=json",
                    data={"csrf": csrf(web), "body_part": "hand", "instrument": "1"})
    assert done.status_code == 200
    assert (done.json()["sha256"], done.json()["next"]) == (order[0], order[1])
    model = rows(out, "SELECT instrument, fracture FROM images WHERE sha256 = ?", order[1])[0]
    accepted = web.post(f"/review/film/{order[1]}?format=json", data={
        "csrf": csrf(web), "accept": "1", "instrument": str(model["instrument"]),
        # a held-back film's fracture is unknown (NULL): the form then sends nothing
        "fracture": "" if model["fracture"] is None else str(model["fracture"])}).json()
    assert accepted["body_part"] == "knee" and accepted["next"] == order[2]
    # Without JavaScript: the same form posts and is sent on to the next film.
    plain = web.post(f"/review/film/{order[2]}", data={"csrf": csrf(web),
                                                       "body_part": "not_msk"},
                     follow_redirects=False)
    assert plain.status_code == 303 and plain.headers["location"] == f"/review/film/{order[3]}"
    got = [tuple(r) for r in rows(out, "SELECT sha256, reviewer, body_part, instrument,"
                                       " fracture FROM reviews ORDER BY id")]
    assert got == [(order[0], "Dr Test", "hand", 1, None),
                   (order[1], "Dr Test", "knee", model["instrument"], model["fracture"]),
                   (order[2], "Dr Test", "not_msk", None, None)]
    after = web.get("/review/next?format=json").json()
    assert after["film"]["sha256"] == order[3] and after["total"] == len(order) - 3
    # A reviewed film still opens, says how it was reviewed, and leads on to the queue.
    again = web.get(f"/review/film/{order[0]}?format=json").json()
    assert again["position"] is None and again["review"]["body_part"] == "hand"
    assert again["next"] == order[3]


def test_review_at_speed_refuses_bad_tokens_origins_and_keys(web: TestClient,
                                                             out: Path) -> None:
    sha = queue_shas(out)[0]
    url = f"/review/film/{sha}?format=json"
    assert web.post(url, data={"csrf": "wrong" * 5, "body_part": "hand"}).status_code == 403
    assert web.post(url, data={"csrf": csrf(web), "body_part": "hand"},
                    headers={"Origin": "http://evil.example"}).status_code == 403
    assert web.post("/reviews/undo", data={"csrf": "wrong" * 5}).status_code == 403
    for bad in ({"body_part": "femur"}, {"body_part": "../etc"}, {},
                {"body_part": "hand", "accept": "1"}, {"accept": "2"},
                {"body_part": "hand", "instrument": "2"}, {"accept": "1", "fracture": "y"}):
        response = web.post(url, data={"csrf": csrf(web), **bad})
        assert response.status_code == 422, bad
        assert "error" in response.json()
    assert web.post(f"/review/film/{'0' * 64}?format=json",
                    data={"csrf": csrf(web), "body_part": "hand"}).status_code == 404
    assert rows(out, "SELECT COUNT(*) AS n FROM reviews")[0]["n"] == 0


def test_undo_takes_back_the_last_decision_but_not_an_applied_one(
        web: TestClient, out: Path) -> None:
    order = queue_shas(out)
    web.post(f"/review/film/{order[0]}", data={"csrf": csrf(web), "body_part": "hip"})
    web.post(f"/review/film/{order[1]}", data={"csrf": csrf(web), "body_part": "hand"})
    undone = web.post("/reviews/undo?format=json", data={"csrf": csrf(web)}).json()["undone"]
    assert (undone["sha256"], undone["body_part"]) == (order[1], "hand")
    assert [r["sha256"] for r in rows(out, "SELECT sha256 FROM reviews")] == [order[0]]
    plain = web.post("/reviews/undo", data={"csrf": csrf(web)}, follow_redirects=False)
    assert plain.status_code == 303 and plain.headers["location"] == f"/review/film/{order[0]}"
    nothing = web.post("/reviews/undo?format=json", data={"csrf": csrf(web)})
    assert nothing.status_code == 409 and "no review to undo" in nothing.json()["error"]
    web.post(f"/review/film/{order[0]}", data={"csrf": csrf(web), "body_part": "hip"})
    assert web.post("/apply", data={"csrf": csrf(web)}).status_code == 200
    refused = web.post("/reviews/undo?format=json", data={"csrf": csrf(web)})
    assert refused.status_code == 409 and "has been applied" in refused.json()["error"]
    assert [(r["sha256"], r["apply_state"]) for r in rows(
        out, "SELECT sha256, apply_state FROM reviews")] == [(order[0], "done")]


def test_review_at_speed_is_read_only_when_the_server_is(out: Path, knee_model: Path) -> None:
    sha = queue_shas(out)[0]
    for c in client(out, knee_model, read_only=True, reviewer="R"):
        page = c.get(f"/review/film/{sha}")
        assert page.status_code == 200 and 'id="decide"' not in page.text
        assert c.post(f"/review/film/{sha}", data={"csrf": csrf(c), "body_part": "hip"}
                      ).status_code == 403
        assert c.post("/reviews/undo", data={"csrf": csrf(c)}).status_code == 403
    assert rows(out, "SELECT COUNT(*) AS n FROM reviews")[0]["n"] == 0
