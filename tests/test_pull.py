"""``xreg pull``: Orthanc's DICOMweb plugin as the PACS, a stub proxy for what it cannot do.

The proxy stands between ``xreg pull`` and Orthanc: it records every
request's Authorization header (the bearer token must arrive, and nothing
else may show it), fails chosen retrieves (HTTP 500 a number of times, or a
body cut short), and forwards the rest to Orthanc with Orthanc's own basic
credentials.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import sqlite3
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from tests.orthanc import DICOMWEB_PLUGIN, orthanc_binary, running_orthanc
from xreg.cli import app
from xreg.errors import ConfigError
from xreg.pacs.pull import InstanceRef, PullQuery, _retrieve, plan_retrieves, public_url
from xreg.sort.folders import output_lock

runner = CliRunner()
PLUGIN = DICOMWEB_PLUGIN
USER, PASSWORD = "xreg", "s3cret-pw"
TOKEN = "tok-9f8e7d6c5b4a"
PATIENT_NAME, PATIENT_ID = "Roe^Richard", "PID-4711"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"


# -- pure pieces (no server) -----------------------------------------------------

def test_public_url_drops_credentials_query_and_fragment() -> None:
    assert public_url("https://u%40x:p%3Aw@Pacs.example:8443/dicom-web/?a=1#f") == \
        "https://pacs.example:8443/dicom-web"
    assert public_url("http://[::1]:8042/dicom-web") == "http://[::1]:8042/dicom-web"
    with pytest.raises(ConfigError, match="http:// or https://"):
        public_url("ftp://pacs/dicom-web")


def test_query_makes_one_search_per_study_and_modality() -> None:
    query = PullQuery(since=date(2023, 1, 1), modalities=("CR", "DX"), studies=("1.2.3",))
    assert query.searches() == [
        ("1.2.3", {"StudyDate": "20230101-", "Modality": "CR"}),
        ("1.2.3", {"StudyDate": "20230101-", "Modality": "DX"})]
    assert PullQuery(until=date(2004, 12, 31)).searches() == [(None, {"StudyDate": "-20041231"})]
    assert PullQuery().searches() == [(None, {})]
    with pytest.raises(ConfigError, match="after --until"):
        PullQuery(since=date(2024, 1, 2), until=date(2024, 1, 1))
    with pytest.raises(ConfigError, match="not a StudyInstanceUID"):
        PullQuery(studies=("1.2.x",))
    with pytest.raises(ConfigError, match="not a DICOM modality"):
        PullQuery(modalities=("C R",))


def test_plan_skips_held_instances() -> None:
    refs = [InstanceRef("1", "2", f"3.{i}") for i in range(4)]
    assert plan_retrieves(refs, {"3.1", "3.3", "9"}) == [refs[0], refs[2]]


def test_a_retrieve_is_retried_with_backoff_then_given_up() -> None:
    calls, waits = [], []

    def flaky() -> bytes:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError
        return b"dicom"

    assert _retrieve(flaky, 3, 0.5, waits.append) == (b"dicom", 3, None)
    assert waits == [0.5, 1.0]
    waits.clear()

    def broken() -> bytes:
        raise ValueError("the server sent another instance")

    assert _retrieve(broken, 2, 1.0, waits.append) == (None, 2, "ValueError")
    assert waits == [1.0]


# -- Orthanc and the proxy -------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class Pacs:
    """Orthanc (basic auth) and the films it holds, keyed by a short name."""

    base: str  # http://127.0.0.1:PORT, no credentials
    films: dict[str, pydicom.Dataset]

    @property
    def dicomweb(self) -> str:
        return f"{self.base}/dicom-web"

    @property
    def with_credentials(self) -> str:
        return self.dicomweb.replace("http://", f"http://{USER}:{PASSWORD}@")


def _films(root: Path) -> dict[str, pydicom.Dataset]:
    """Two CR films (JPEG 2000) of 2004, a DX film of 2023, a CT: all with a named patient."""
    films = {}
    for key, name in (("cr3", "RG3_J2KR.dcm"), ("cr1", "RG1_J2KR.dcm"), ("ct", "CT_small.dcm")):
        films[key] = pydicom.dcmread(get_testdata_file(name))
    dx = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    dx.Modality, dx.StudyDate = "DX", "20230615"
    dx.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray, for presentation
    dx.file_meta.MediaStorageSOPClassUID = dx.SOPClassUID
    dx.StudyInstanceUID = pydicom.uid.generate_uid()
    dx.SeriesInstanceUID = pydicom.uid.generate_uid()
    dx.SOPInstanceUID = dx.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    films["dx"] = dx
    for key, ds in films.items():
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        ds.save_as(root / f"{key}.dcm")
    return films


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    binary = orthanc_binary()
    if binary is None or not PLUGIN.exists():
        pytest.skip("no Orthanc with DICOMweb: install Debian's orthanc orthanc-dicomweb")
    pytest.importorskip("dicomweb_client",
                        reason='xreg pull needs dicomweb-client: pip install "xreg[pacs]"')
    root = tmp_path_factory.mktemp("orthanc")
    port = _free_port()
    config = {"Name": "xreg-pull-test", "StorageDirectory": str(root / "db"),
              "IndexDirectory": str(root / "db"), "HttpPort": port, "DicomPort": 0,
              "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
              "RegisteredUsers": {USER: PASSWORD},
              "Plugins": [str(PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    auth = {"Authorization": _basic(USER, PASSWORD)}
    with running_orthanc(binary, config, root, auth) as base:
        films = _films(root)
        for key in films:
            request = urllib.request.Request(f"{base}/instances", method="POST", headers=auth,
                                             data=(root / f"{key}.dcm").read_bytes())
            urllib.request.urlopen(request, timeout=30).read()
        yield Pacs(base, films)


@dataclass
class Proxy:
    """Forwards to Orthanc; records what arrives; fails retrieves on request."""

    target: str
    seen: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Authorization)
    fail: dict[str, int] = field(default_factory=dict)  # SOP UID -> HTTP 500s still to send
    cut: set[str] = field(default_factory=set)  # SOP UIDs whose body is always cut short
    url: str = ""

    def retrieves(self) -> list[str]:
        """The SOP Instance UIDs of the WADO-RS retrieves that reached the proxy."""
        return [path.rsplit("/", 1)[1] for path, _ in self.seen
                if "/instances/" in path and "?" not in path]


@pytest.fixture
def proxy(pacs: Pacs) -> Iterator[Proxy]:
    state = Proxy(pacs.base)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  (http.server's name)
            with lock:
                state.seen.append((self.path, self.headers.get("Authorization")))
                sop = self.path.rsplit("/", 1)[1] if "/instances/" in self.path else ""
                fail = state.fail.get(sop, 0)
                if fail:
                    state.fail[sop] = fail - 1
            if fail:
                self.send_error(500)
                return
            request = urllib.request.Request(
                state.target + self.path,
                headers={"Accept": self.headers.get("Accept", "*/*"),
                         "Authorization": _basic(USER, PASSWORD)})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    status, body = response.status, response.read()
                    ctype = response.headers.get("Content-Type", "")
            except urllib.error.HTTPError as exc:
                status, body, ctype = exc.code, exc.read(), "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if sop in state.cut:
                self.wfile.write(body[:len(body) // 2])  # then the connection closes
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _db(out: Path) -> sqlite3.Connection:
    db = sqlite3.connect(out / "registry.sqlite")
    db.row_factory = sqlite3.Row
    return db


def _held(out: Path) -> dict[str, sqlite3.Row]:
    db = _db(out)
    try:
        return {r["sop_uid"]: r for r in db.execute(
            "SELECT i.sop_uid, i.dest_path, i.status, i.modality, s.origin, r.intake"
            " FROM images i JOIN sources s USING (sha256) JOIN runs r ON r.id = s.run_id"
            " WHERE i.state = 'done'")}
    finally:
        db.close()


def _spooled(out: Path) -> list[Path]:
    spool = out / ".xreg-spool"
    return [p for p in spool.rglob("*") if p.is_file()] if spool.exists() else []


def _no_secrets(text: str) -> None:
    for secret in (PASSWORD, TOKEN, PATIENT_ID, "Roe", "Richard"):
        assert secret not in text, secret


# -- xreg pull end to end ------------------------------------------------------

def test_pull_lands_films_sorted_with_origin_and_a_second_pull_transfers_nothing(
        pacs: Pacs, proxy: Proxy, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["pull", pacs.with_credentials, str(out), "--modality", "CR",
                                 "--modality", "dx", "--json"])
    assert result.exit_code == 0, result.output
    _no_secrets(result.output)
    summary = json.loads(result.stdout)
    assert summary["origin"] == pacs.dicomweb
    assert (summary["queried"], summary["already_held"], summary["retrieved"]) == (3, 0, 3)
    assert summary["failed"] == [] and summary["sort"]["counts"]["failed"] == 0

    wanted = {pacs.films[k].SOPInstanceUID: pacs.films[k] for k in ("cr1", "cr3", "dx")}
    held = _held(out)
    assert set(held) == set(wanted)  # the CT was not asked for
    for uid, row in held.items():
        assert (row["origin"], row["intake"]) == (pacs.dicomweb, "pull")
        assert row["modality"] == wanted[uid].Modality
        placed = pydicom.dcmread(out / row["dest_path"])
        assert placed.SOPInstanceUID == uid
        assert placed.file_meta.TransferSyntaxUID == wanted[uid].file_meta.TransferSyntaxUID
        assert placed.PixelData == wanted[uid].PixelData  # the server's bytes, not re-encoded
    assert any(w.file_meta.TransferSyntaxUID == J2K_LOSSLESS for w in wanted.values())
    assert _spooled(out) == []  # each spooled file removed once placed
    db = _db(out)
    try:
        dump = "\n".join(db.iterdump())
        assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    finally:
        db.close()
    _no_secrets(dump)  # neither the password nor the patient in the registry

    # The same query again, through the proxy: QIDO only, not one retrieve.
    again = runner.invoke(app, ["pull", proxy.url, str(out), "--modality", "CR",
                                "--modality", "DX"])
    assert again.exit_code == 0, again.output
    assert "nothing to transfer: all 3 instance(s)" in again.output
    assert proxy.seen and proxy.retrieves() == []
    assert set(_held(out)) == set(wanted)
    db = _db(out)
    try:
        assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 1  # no sort, no run
    finally:
        db.close()
    dry = runner.invoke(app, ["pull", pacs.with_credentials, str(out), "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    assert (json.loads(dry.stdout)["queried"], json.loads(dry.stdout)["already_held"]) == (4, 3)


@pytest.mark.parametrize(("options", "films"), [
    (["--since", "2020-01-01"], {"dx"}),
    (["--until", "2010-12-31", "--modality", "CR"], {"cr1", "cr3"}),
    (["--modality", "CT"], {"ct"}),
    (["--since", "2004-08-26", "--until", "2004-08-26"], {"cr1", "cr3"}),
    ([], {"cr1", "cr3", "dx", "ct"}),
])
def test_filters_choose_what_is_queried(pacs: Pacs, tmp_path: Path, options: list[str],
                                        films: set[str]) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["pull", pacs.with_credentials, str(out), "--dry-run",
                                 "--json", *options])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["dry_run"], summary["queried"], summary["retrieved"]) == \
        (True, len(films), 0)
    assert not out.exists()  # a dry run writes nothing, not even OUT


def test_study_filter_and_a_wrong_password(pacs: Pacs, tmp_path: Path) -> None:
    dx = pacs.films["dx"]
    result = runner.invoke(app, ["pull", pacs.with_credentials, str(tmp_path / "o"),
                                 "--dry-run", "--json", "--study", dx.StudyInstanceUID,
                                 "--study", pacs.films["cr3"].StudyInstanceUID])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["queried"] == 2
    wrong = pacs.with_credentials.replace(PASSWORD, "nope-" + PASSWORD[::-1])
    result = runner.invoke(app, ["pull", wrong, str(tmp_path / "o"), "--dry-run"])
    assert result.exit_code == 2
    assert "HTTP 401" in result.output and "credentials" in result.output
    assert PASSWORD[::-1] not in result.output


def test_token_is_sent_retries_recover_and_a_failed_instance_is_never_half_recorded(
        pacs: Pacs, proxy: Proxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # dicomweb-client's, requests' and urllib3's too
    monkeypatch.setenv("XREG_DICOMWEB_TOKEN", TOKEN)
    cr1, cr3, dx = (pacs.films[k].SOPInstanceUID for k in ("cr1", "cr3", "dx"))
    proxy.fail[cr1] = 1  # one HTTP 500, then fine
    proxy.cut.add(dx)  # always cut short
    out = tmp_path / "out"
    result = runner.invoke(app, ["pull", proxy.url, str(out), "--modality", "CR",
                                 "--modality", "DX", "--tries", "2"])
    assert result.exit_code == 1, result.output
    _no_secrets(result.output)
    assert f"{dx}: transfer cut short after 2 tries" in result.output
    assert proxy.retrieves().count(cr1) == 2 and proxy.retrieves().count(dx) == 2
    assert proxy.retrieves().count(cr3) == 1
    assert {auth for _, auth in proxy.seen} == {f"Bearer {TOKEN}"}
    assert set(_held(out)) == {cr1, cr3}
    assert _spooled(out) == []  # no half download under any name

    proxy.cut.clear()  # the server recovers: the next pull fetches only what failed
    proxy.seen.clear()
    result = runner.invoke(app, ["pull", proxy.url, str(out), "--modality", "CR",
                                 "--modality", "DX", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["already_held"], summary["retrieved"]) == (2, 1)
    assert proxy.retrieves() == [dx]
    assert set(_held(out)) == {cr1, cr3, dx}
    assert any("retrieve instance" in r.getMessage() for r in caplog.records)
    _no_secrets("\n".join(r.getMessage() for r in caplog.records))


def test_an_undecodable_instance_keeps_its_uid_and_a_second_pull_transfers_nothing(
        pacs: Pacs, proxy: Proxy, tmp_path: Path) -> None:
    bad = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    bad.StudyInstanceUID = pydicom.uid.generate_uid()
    bad.SeriesInstanceUID = pydicom.uid.generate_uid()
    bad.SOPInstanceUID = bad.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    bad.PatientName, bad.PatientID = PATIENT_NAME, PATIENT_ID
    bad.PixelData = bytes(64)  # far less than Rows x Columns: cannot be decoded
    bad.save_as(tmp_path / "bad.dcm")
    auth = {"Authorization": _basic(USER, PASSWORD)}
    request = urllib.request.Request(f"{pacs.base}/instances", method="POST", headers=auth,
                                     data=(tmp_path / "bad.dcm").read_bytes())
    orthanc_id = json.loads(urllib.request.urlopen(request, timeout=30).read())["ID"]
    try:
        out = tmp_path / "out"
        query = ["--study", bad.StudyInstanceUID]
        result = runner.invoke(app, ["pull", proxy.url, str(out), *query, "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["retrieved"] == 1
        held = _held(out)
        assert set(held) == {bad.SOPInstanceUID}  # recorded by its UID, undecoded
        assert held[bad.SOPInstanceUID]["status"] == "unreadable"
        assert held[bad.SOPInstanceUID]["dest_path"].startswith("_unreadable/")
        assert _spooled(out) == []

        proxy.seen.clear()
        again = runner.invoke(app, ["pull", proxy.url, str(out), *query, "--json"])
        assert again.exit_code == 0, again.output
        summary = json.loads(again.stdout)
        assert (summary["queried"], summary["already_held"], summary["retrieved"]) == (1, 1, 0)
        assert proxy.seen and proxy.retrieves() == []
        db = _db(out)
        try:
            assert db.execute("SELECT count(*) FROM sources").fetchone()[0] == 1
        finally:
            db.close()
    finally:  # the module's other tests count the films Orthanc holds
        urllib.request.urlopen(urllib.request.Request(
            f"{pacs.base}/instances/{orthanc_id}", method="DELETE", headers=auth),
            timeout=30).read()


def test_credentials_come_from_the_environment_only_once(pacs: Pacs, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XREG_PULL_TEST_TOKEN", raising=False)
    result = runner.invoke(app, ["pull", pacs.dicomweb, str(tmp_path / "o"),
                                 "--token-env", "XREG_PULL_TEST_TOKEN"])
    assert result.exit_code == 2 and "XREG_PULL_TEST_TOKEN" in result.output
    monkeypatch.setenv("XREG_PULL_TEST_TOKEN", TOKEN)
    result = runner.invoke(app, ["pull", pacs.with_credentials, str(tmp_path / "o"),
                                 "--token-env", "XREG_PULL_TEST_TOKEN"])
    assert result.exit_code == 2 and "give one of them" in result.output
    _no_secrets(result.output)
    assert not (tmp_path / "o" / "registry.sqlite").exists()


def test_a_locked_out_is_exit_3_before_any_query(tmp_path: Path) -> None:
    pytest.importorskip("dicomweb_client",
                        reason='xreg pull needs dicomweb-client: pip install "xreg[pacs]"')
    out = tmp_path / "out"
    with output_lock(out):
        result = runner.invoke(app, ["pull", f"http://127.0.0.1:{_free_port()}/dicom-web",
                                     str(out)])
    assert result.exit_code == 3, result.output
    assert "another xreg run" in result.output
