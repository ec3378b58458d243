"""``xreg listen``: pynetdicom's SCU and Debian's Orthanc send; the registry and spool are checked.

In-process listeners share one loaded model (the shipped default); the kill
test runs ``xreg listen`` as a subprocess so it can be SIGKILLed. Every film
carries a known patient name and ID, and no log line may show either.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

pydicom = pytest.importorskip("pydicom")
pynetdicom = pytest.importorskip(
    "pynetdicom", reason='xreg listen needs the pacs extra: pip install "xreg[pacs]"')

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from pynetdicom import AE  # noqa: E402

from tests.orthanc import orthanc_binary, running_orthanc  # noqa: E402
from xreg.cli import app  # noqa: E402
from xreg.config import SortOptions  # noqa: E402
from xreg.pacs.listen import Listener, ListenOptions  # noqa: E402
from xreg.pacs.spool import SPOOL_DIR, Spool  # noqa: E402

runner = CliRunner()
NAME, PID = "Lestrade^Inspector", "PID-90210"
SENDER = "SENDER"
CR, DX, SC = ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1",
              "1.2.840.10008.5.1.4.1.1.7")
CT = "1.2.840.10008.5.1.4.1.1.2"
SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
            "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.70")
BIG_ENDIAN = "1.2.840.10008.1.2.2"


# -- films ---------------------------------------------------------------------------

def _named(ds: Dataset) -> Dataset:
    """The known patient, and the study and series a PACS needs (some samples lack them)."""
    ds.PatientName, ds.PatientID = NAME, PID
    for key in ("StudyInstanceUID", "SeriesInstanceUID"):
        if key not in ds:
            setattr(ds, key, generate_uid())
    return ds


def pydicom_films() -> list[Dataset]:
    """pydicom's CR in JPEG 2000 (lossy and lossless), SC in JPEG-LS and JPEG lossless SV1."""
    names = ("RG3_J2KI.dcm", "RG3_J2KR.dcm", "JPEGLSNearLossless_08.dcm", "JPEG-LL.dcm")
    films = [_named(pydicom.dcmread(get_testdata_file(n))) for n in names]
    films[1].SOPInstanceUID = films[1].file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return films


def tiny_dx(seed: int) -> Dataset:
    """A 64 x 64 Digital X-Ray film (explicit little endian) with its own UIDs."""
    ds, meta = Dataset(), FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DX, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "DX"
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    pixels = np.random.default_rng(seed).integers(0, 4096, (64, 64), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    return _named(ds)


def scu(ae_title: str = SENDER, extra: tuple[tuple[str, str], ...] = (),
        timeout: float = 30) -> AE:
    ae = AE(ae_title=ae_title)
    ae.add_requested_context("1.2.840.10008.1.1")
    for sop in (CR, DX, SC):
        for ts in SYNTAXES:
            ae.add_requested_context(sop, ts)
    for sop, ts in extra:
        ae.add_requested_context(sop, ts)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    return ae


# -- an in-process listener ------------------------------------------------------------

@pytest.fixture(scope="module")
def model() -> Any:
    from xreg.inference.runtime import load_model
    from xreg.model.card import default_weights

    return load_model(default_weights())


class Running:
    def __init__(self, listener: Listener, out: Path, events: list[tuple[str, dict[str, Any]]]):
        self.listener, self.out, self.events = listener, out, events

    @property
    def port(self) -> int:
        return self.listener.port

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [f for k, f in self.events if k == kind]

    def wait_sorted(self, n: int, timeout: float = 60) -> None:
        """Until ``n`` images are placed and the spool is empty (a deadline, not a timing)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _placed(self.out) >= n and not Spool(self.out).pending():
                return
            time.sleep(0.1)
        raise AssertionError(f"only {_placed(self.out)} of {n} placed")


def _placed(out: Path) -> int:
    if not (out / "registry.sqlite").exists():
        return 0
    with sqlite3.connect(out / "registry.sqlite") as db:
        return int(db.execute("SELECT COUNT(*) FROM images WHERE state = 'done'").fetchone()[0])


def _listening(out: Path, model: Any, **options: Any) -> Iterator[Running]:
    events: list[tuple[str, dict[str, Any]]] = []
    opts = ListenOptions(port=0, flush_seconds=0.1, **options)
    with Listener(out, opts, SortOptions(), lambda k, f: events.append((k, f)),
                  loaded=model) as listener:
        yield Running(listener, out, events)
    _no_patient_data(json.dumps(events))


@pytest.fixture
def listening(tmp_path: Path, model: Any) -> Iterator[Running]:
    yield from _listening(tmp_path / "out", model, allow=(SENDER,))


def _db(out: Path) -> sqlite3.Connection:
    db = sqlite3.connect(out / "registry.sqlite")
    db.row_factory = sqlite3.Row
    return db


def _no_patient_data(text: str) -> None:
    for secret in (NAME, PID, "Lestrade", "90210"):
        assert secret not in text


def _no_temporaries(out: Path) -> None:
    left = [p for p in out.rglob("*") if p.name.startswith((".tmp-", ".xreg-tmp-"))]
    assert not left, left


# -- the tests ---------------------------------------------------------------------------

def test_echo_and_stores_land_sorted_once_with_their_origin(listening: Running) -> None:
    films = [*pydicom_films(), tiny_dx(1)]
    resent_other_bytes = films[-1].copy()
    resent_other_bytes.ImageComments = "sent again, re-encoded"
    assoc = scu().associate("127.0.0.1", listening.port, ae_title="XREG")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    statuses = [assoc.send_c_store(ds).Status for ds in films]
    statuses.append(assoc.send_c_store(films[0]).Status)  # the same bytes again
    assoc.release()
    assert statuses == [0x0000] * (len(films) + 1)
    listening.wait_sorted(len(films))
    assoc = scu().associate("127.0.0.1", listening.port, ae_title="XREG")
    assert assoc.send_c_store(resent_other_bytes).Status == 0x0000  # same SOP, other bytes
    assoc.release()
    deadline = time.monotonic() + 30
    while Spool(listening.out).pending() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Spool(listening.out).pending()

    with _db(listening.out) as db:
        rows = db.execute("SELECT sop_uid, dest_path, status FROM images").fetchall()
        sources = db.execute("SELECT origin, removed, path FROM sources").fetchall()
        runs = db.execute("SELECT intake, status, input_root FROM runs").fetchall()
    assert sorted(r["sop_uid"] for r in rows) == sorted(str(ds.SOPInstanceUID) for ds in films)
    for r in rows:
        assert (listening.out / r["dest_path"]).is_file()
        assert r["status"] in ("sorted", "review")
    assert {s["origin"] for s in sources} == {f"dicom:{SENDER}@127.0.0.1"}
    assert all(s["removed"] == 1 and SPOOL_DIR in s["path"] for s in sources)
    assert len(sources) == len(films)  # the identical resend is the same source row
    assert [(r["intake"], r["status"]) for r in runs] == [("listen", "running")]
    shown = runner.invoke(app, ["registry", "runs", str(listening.out)])
    assert shown.exit_code == 0 and f"listen dicom://XREG@127.0.0.1:{listening.port}" in \
        " ".join(shown.output.split()), shown.output
    association = listening.kinds("association")
    assert association[0] == {"calling_ae": SENDER, "address": "127.0.0.1",
                              "received": len(films) + 1, "accepted": len(films) + 1,
                              "failed": 0}


def test_success_is_sent_only_after_the_spool_file_is_durable(
    listening: Running, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pynetdicom.dimse import DIMSEServiceProvider

    order: list[tuple[str, str]] = []
    fsync, rename, send = os.fsync, os.rename, DIMSEServiceProvider.send_msg

    def spy_fsync(fd: int) -> None:
        fsync(fd)
        order.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def spy_rename(src: Any, dst: Any) -> None:
        rename(src, dst)
        order.append(("rename", str(dst)))

    def spy_send(self: Any, primitive: Any, context_id: int) -> None:
        if self.assoc.is_acceptor:  # the listener's answer, not the SCU's request
            order.append(("send", type(primitive).__name__))
        send(self, primitive, context_id)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "rename", spy_rename)
    monkeypatch.setattr(DIMSEServiceProvider, "send_msg", spy_send)
    assoc = scu().associate("127.0.0.1", listening.port, ae_title="XREG")
    assert assoc.send_c_store(tiny_dx(2)).Status == 0x0000
    assoc.release()

    folder = f"{SPOOL_DIR}/dicom%3A{SENDER}%40127.0.0.1"
    data = next(i for i, (what, path) in enumerate(order)
                if what == "fsync" and f"{folder}/.tmp-" in path)
    named = next(i for i, (what, path) in enumerate(order)
                 if what == "rename" and folder in path and path.endswith(".dcm"))
    listed = next(i for i, (what, path) in enumerate(order)
                  if i > named and what == "fsync" and path.endswith(folder))
    response = order.index(("send", "C_STORE"))
    assert data < named < listed < response, order


def test_a_caller_not_allowed_is_rejected_and_logged(tmp_path: Path, model: Any) -> None:
    for running in _listening(tmp_path / "out", model, allow=(SENDER, "PACS@10.255.0.9")):
        assert scu("INTRUDER").associate("127.0.0.1", running.port).is_rejected
        assert scu("PACS").associate("127.0.0.1", running.port).is_rejected  # wrong host
        ok = scu().associate("127.0.0.1", running.port)
        assert ok.is_established
        ok.release()
        assert running.kinds("rejected") == [
            {"calling_ae": "INTRUDER", "address": "127.0.0.1", "reason": "not in --allow"},
            {"calling_ae": "PACS", "address": "127.0.0.1", "reason": "not in --allow"}]


def test_a_summary_line_comes_every_interval_with_counts_and_no_patient(
        tmp_path: Path, model: Any) -> None:
    from xreg.cli.listen import describe

    for running in _listening(tmp_path / "out", model, summary_seconds=0.2):
        assoc = scu().associate("127.0.0.1", running.port)
        assert [assoc.send_c_store(tiny_dx(s)).Status for s in (1, 2)] == [0x0000] * 2
        assoc.release()
        running.wait_sorted(2)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen = running.kinds("summary")
            if len(seen) >= 2 and seen[-1]["waiting"] == 0 and \
                    sum(seen[-1]["sorted"].values()) == 2:
                break
            time.sleep(0.1)
        summaries = running.kinds("summary")
        assert len(summaries) >= 2  # periodic, not once
        last = summaries[-1]
        assert (last["associations"], last["accepted"], last["failed"], last["waiting"]) == \
            (1, 2, 0, 0)
        assert sum(last["sorted"].values()) == 2
        line = describe("summary", last)
        assert line.startswith("summary: 1 association(s), 0 rejected; 2 instance(s) accepted")
        _no_patient_data(line)
    # _listening has checked every event, the summaries included, for the patient


def test_an_unwritable_spool_answers_a_failure_status(tmp_path: Path, model: Any) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / SPOOL_DIR).write_text("not a folder")  # every write into the spool fails
    for running in _listening(out, model):
        assoc = scu().associate("127.0.0.1", running.port, ae_title="XREG")
        assert assoc.send_c_store(tiny_dx(3)).Status == 0xA700
        assoc.release()
        time.sleep(0.3)
        assert running.kinds("store_failed")[0]["calling_ae"] == SENDER
    assert _placed(out) == 0


def test_other_classes_and_syntaxes_are_refused_at_negotiation(listening: Running) -> None:
    ae = AE(ae_title=SENDER)
    ae.add_requested_context(CT, ExplicitVRLittleEndian)
    ae.add_requested_context(CR, BIG_ENDIAN)
    ae.add_requested_context(DX, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", listening.port, ae_title="XREG")
    assert assoc.is_established
    accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
    assert accepted == {(DX, ExplicitVRLittleEndian)}
    with pytest.raises(ValueError, match="No presentation context"):
        assoc.send_c_store(_named(pydicom.dcmread(get_testdata_file("CT_small.dcm"))))
    assoc.release()
    time.sleep(0.3)
    refused = {(r["sop_class"], tuple(r["transfer_syntaxes"])) for r in listening.kinds("refused")}
    assert refused == {("CT Image Storage", (ExplicitVRLittleEndian,)),
                       ("Computed Radiography Image Storage", (BIG_ENDIAN,))}


def test_a_sort_into_out_while_listening_exits_3_naming_the_listener(
    listening: Running, tmp_path: Path,
) -> None:
    (tmp_path / "in").mkdir()
    tiny_dx(4).save_as(tmp_path / "in" / "a.dcm", enforce_file_format=True)
    result = runner.invoke(app, ["sort", str(tmp_path / "in"), str(listening.out),
                                 "--min-age", "0"])
    assert result.exit_code == 3, result.output
    assert "listener (xreg listen" in " ".join(result.output.split())


def test_a_spool_is_neither_scanned_nor_kept_by_a_folder_sort(tmp_path: Path) -> None:
    out = tmp_path / "out"
    spool = Spool(out)
    tiny_dx(5).save_as(tmp_path / "a.dcm", enforce_file_format=True)
    spooled = spool.put((tmp_path / "a.dcm").read_bytes(), "dicom:X@127.0.0.1")
    (spooled.parent / ".tmp-left-by-a-kill").write_bytes(b"half")
    assert spool.pending() == [spooled] and Spool.origin_of(spooled) == "dicom:X@127.0.0.1"
    result = runner.invoke(app, ["sort", str(out), str(tmp_path / "elsewhere"),
                                 "--min-age", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["files"] == []  # OUT as IN: the spool is not a source
    assert spool.clean_temporary() == 1 and spool.pending() == [spooled]


def test_listen_without_the_pacs_extra_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pynetdicom" else real(name, *a))
    result = runner.invoke(app, ["listen", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert 'pip install "xreg[pacs]"' in result.output
    assert not (tmp_path / "out").exists()


# -- a listener killed while films arrive ----------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_listener(out: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``xreg listen`` in a process of its own: JSON lines to ``log``.out, the rest to ``log``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "xreg", "listen", str(out), "--port", str(port), "--json",
         "--batch", "8", "--flush-seconds", "0.2", "--allow", f"{SENDER}@127.0.0.1"],
        stdout=Path(f"{log}.out").open("wb"), stderr=log.open("wb"))
    deadline = time.monotonic() + 60
    while '"event": "listening"' not in Path(f"{log}.out").read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the listener did not start"
        time.sleep(0.1)
    return proc


def _push(port: int, films: list[Dataset], acked: set[str], stop: threading.Event) -> None:
    """Send until done or the association breaks; ``acked`` gets each Success.

    A short DIMSE timeout: a killed listener answers nothing, and the sender
    should give up on it soon (a response normally takes milliseconds).
    """
    assoc = scu(timeout=5).associate("127.0.0.1", port, ae_title="XREG")
    if not assoc.is_established:
        return
    for ds in films:
        if stop.is_set() or not assoc.is_established:
            break
        try:
            status = assoc.send_c_store(ds)
        except (RuntimeError, ValueError, OSError):
            break
        if status and status.Status == 0x0000:
            acked.add(str(ds.SOPInstanceUID))
    if assoc.is_established:
        assoc.release()


def test_sigkill_while_films_arrive_loses_nothing_acknowledged_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    out, port = tmp_path / "out", _free_port()
    logs = [tmp_path / "killed.log", tmp_path / "restarted.log"]
    films = [tiny_dx(100 + i) for i in range(100)]
    acked: set[str] = set()
    proc = _start_listener(out, port, logs[0])
    sender = threading.Thread(target=_push, args=(port, films, acked, threading.Event()))
    sender.start()
    deadline = time.monotonic() + 60
    while len(acked) < 40 and sender.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    sender.join(timeout=60)
    acknowledged_at_kill = len(acked)
    assert 0 < acknowledged_at_kill < len(films)

    proc = _start_listener(out, port, logs[1])  # sorts what the spool kept, then takes the rest
    try:
        _push(port, [ds for ds in films if str(ds.SOPInstanceUID) not in acked], acked,
              threading.Event())
        _push(port, films[:5], acked, threading.Event())  # a sender that resends a few
        deadline = time.monotonic() + 90
        while (_placed(out) < len(films) or Spool(out).pending()) and \
                time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0

    with _db(out) as db:
        per_sop = dict(db.execute(
            "SELECT sop_uid, COUNT(*) FROM images WHERE state = 'done' GROUP BY sop_uid"))
        runs = db.execute("SELECT intake, status FROM runs ORDER BY id").fetchall()
        sources = db.execute("SELECT COUNT(*) FROM sources").fetchone()[0]
    doubled = sum(n > 1 for n in per_sop.values())
    print(f"\nSIGKILL: {acknowledged_at_kill} acknowledged at the kill, {len(acked)} in all; "
          f"{len(per_sop)} in the registry, {doubled} doubled, "
          f"{sum(1 for _ in out.rglob('.tmp-*'))} temporary files left")
    assert acked == {str(ds.SOPInstanceUID) for ds in films}
    assert set(per_sop) == acked and doubled == 0 and sources == len(films)
    _no_temporaries(out)
    assert not Spool(out).pending()
    assert [tuple(r) for r in runs] == [("listen", "running"), ("listen", "finished")]
    lines = Path(f"{logs[1]}.out").read_text().splitlines()
    events = [json.loads(line)["event"] for line in lines]
    assert {"listening", "association", "batch", "stopped"} <= set(events)
    assert json.loads(lines[0])["waiting"] > 0  # the spool kept what the kill left
    _no_patient_data("".join(Path(f"{log}{ext}").read_text()
                             for log in logs for ext in ("", ".out")))


# -- Orthanc as the sending PACS -----------------------------------------------------------

def test_orthanc_sends_to_the_listener_end_to_end(tmp_path: Path, model: Any) -> None:
    binary = orthanc_binary()
    if binary is None:
        pytest.skip("no Orthanc: install Debian's orthanc")
    http_port = _free_port()
    out = tmp_path / "out"
    for running in _listening(out, model, allow=("ORTHANC@127.0.0.1",)):
        config = {"Name": "xreg-test", "StorageDirectory": str(tmp_path / "db"),
                  "IndexDirectory": str(tmp_path / "db"), "HttpPort": http_port,
                  "DicomPort": 0, "DicomAet": "ORTHANC",  # it only sends
                  "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
                  "DicomModalities": {"xreg": ["XREG", "127.0.0.1", running.port]},
                  "Plugins": []}
        with running_orthanc(binary, config, tmp_path) as base:
            films = [pydicom_films()[0], pydicom_films()[2], tiny_dx(7)]
            ids = []
            for i, ds in enumerate(films):
                ds.save_as(tmp_path / f"f{i}.dcm", enforce_file_format=True)
                request = urllib.request.Request(f"{base}/instances", method="POST",
                                                 data=(tmp_path / f"f{i}.dcm").read_bytes())
                with urllib.request.urlopen(request, timeout=30) as response:
                    ids.append(json.load(response)["ID"])
            request = urllib.request.Request(f"{base}/modalities/xreg/store", method="POST",
                                             data=json.dumps(ids).encode())
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.load(response)
            assert answer["InstancesCount"] == len(films) and answer["FailedInstancesCount"] == 0
            running.wait_sorted(len(films))
        with _db(out) as db:
            sops = {r[0] for r in db.execute("SELECT sop_uid FROM images")}
            origins = {r[0] for r in db.execute("SELECT origin FROM sources")}
        assert sops == {str(ds.SOPInstanceUID) for ds in films}
        assert origins == {"dicom:ORTHANC@127.0.0.1"}
    # Orthanc may open an association per instance; each is logged when it closes.
    associations = running.kinds("association")
    assert {a["calling_ae"] for a in associations} == {"ORTHANC"}
    assert sum(a["accepted"] for a in associations) == len(films)


# -- TLS -------------------------------------------------------------------------------------

def _certificates(folder: Path) -> dict[str, Path]:
    """A CA, and a server and a client certificate it signed (openssl, one day)."""
    folder.mkdir()

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
        "ca.pem", "-days", "1", "-subj", "/CN=xreg-test-ca")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
            f"{name}.csr", "-subj", "/CN=localhost")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "1")
    return {p.stem + p.suffix: p for p in folder.iterdir()}


def test_tls_with_client_certificates_admits_only_a_certified_sender(
    tmp_path: Path, model: Any,
) -> None:
    import ssl

    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make test certificates")
    certs = _certificates(tmp_path / "certs")

    def client(with_certificate: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=certs["ca.pem"])
        if with_certificate:
            context.load_cert_chain(certs["client.pem"], certs["client.key"])
        return context

    for running in _listening(tmp_path / "out", model, tls_cert=certs["server.pem"],
                              tls_key=certs["server.key"], tls_ca=certs["ca.pem"]):
        assoc = scu().associate("127.0.0.1", running.port, ae_title="XREG",
                                tls_args=(client(True), "localhost"))
        assert assoc.is_established
        assert assoc.send_c_store(tiny_dx(8)).Status == 0x0000
        assoc.release()
        running.wait_sorted(1)
        refused = scu(timeout=5).associate("127.0.0.1", running.port, ae_title="XREG",
                                           tls_args=(client(False), "localhost"))
        assert not refused.is_established
        plain = scu(timeout=5).associate("127.0.0.1", running.port, ae_title="XREG")
        assert not plain.is_established
    assert _placed(tmp_path / "out") == 1


def test_the_sort_path_never_imports_pynetdicom(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    tiny_dx(9).save_as(tmp_path / "in" / "a.dcm", enforce_file_format=True)
    code = ("import sys; from typer.testing import CliRunner; from xreg.cli import app\n"
            "r = CliRunner().invoke(app, ['sort', sys.argv[1], sys.argv[2], '--min-age', '0'])\n"
            "assert r.exit_code == 0, r.output\n"
            "print(sorted(m for m in ('pynetdicom', 'dicomweb_client', 'torch')"
            " if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "in"),
                           str(tmp_path / "out")], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
