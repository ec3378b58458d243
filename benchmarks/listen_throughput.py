"""Throughput of `xreg listen` (films pushed over DICOM) against `xreg sort` of the same films.

In one run, on the same films (Digital X-Ray, 16-bit, explicit little endian,
each with its own UIDs):

- **folder**: `run_sort` of a folder holding them, in a child process, timed
  from the call (model loading included) to its return;
- **listen**: `xreg listen` in a child process; once it is listening, films are
  pushed over ``--associations`` concurrent associations by pynetdicom's SCU,
  timed from the first C-STORE to the moment every film is placed in the
  registry and the spool is empty (the listener's start-up is not counted: a
  service starts once).

It then checks that every instance answered Success is in the registry exactly
once, and prints both rates and their ratio (the target is at least 0.8).

    python benchmarks/listen_throughput.py [--films 500] [--size 512] [--associations 4]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

DX = "1.2.840.10008.5.1.4.1.1.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def write_films(folder: Path, n: int, size: int) -> list[Path]:
    """``n`` DX films of ``size`` x ``size`` pixels, a smooth pattern plus noise."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    paths = []
    for i in range(n):
        cx = rng.uniform(0.3, 0.7)
        bone = np.exp(-((x - cx) ** 2) / 0.01) * (0.6 + 0.4 * np.sin(8 * y))
        pixels = np.clip(bone + rng.normal(0, 0.03, bone.shape), 0, 1) * 4095
        ds, meta = Dataset(), FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID = DX, EXPLICIT_LE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = DX, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.Modality, ds.PatientID = "DX", f"BENCH{i % 50}"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = pixels.astype(np.uint16).tobytes()
        path = folder / f"film{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    past = time.time() - 3600
    for path in paths:
        os.utime(path, (past, past))
    return paths


def time_folder_sort(films: Path, out: Path) -> float:
    """Seconds `run_sort` takes in a fresh process (model loading included)."""
    code = (
        "import json, sys, time; from pathlib import Path\n"
        "from xreg.config import SortOptions; from xreg.sort.runner import run_sort\n"
        "t = time.perf_counter()\n"
        "r = run_sort(Path(sys.argv[1]), Path(sys.argv[2]), SortOptions(min_age=0))\n"
        "print(json.dumps({'seconds': time.perf_counter() - t, 'counts': dict(r.counts)}))\n")
    done = subprocess.run([sys.executable, "-c", code, str(films), str(out)],
                          check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"folder sort counts: {result['counts']}")
    return float(result["seconds"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _placed(out: Path) -> int:
    try:
        with sqlite3.connect(out / "registry.sqlite") as db:
            return int(db.execute(
                "SELECT COUNT(*) FROM images WHERE state = 'done'").fetchone()[0])
    except sqlite3.Error:
        return 0


def _push(port: int, films: list[tuple[Path, str]], acked: list[str],
          lock: threading.Lock) -> None:
    """One association sending files as they are (pynetdicom reads and sends the
    encoded file without decoding it: the sender, on this same machine, stays cheap)."""
    from pynetdicom import AE

    ae = AE(ae_title="BENCH")
    ae.add_requested_context(DX, EXPLICIT_LE)
    assoc = ae.associate("127.0.0.1", port, ae_title="XREG")
    assert assoc.is_established, "no association"
    for path, uid in films:
        status = assoc.send_c_store(path)
        if status and status.Status == 0x0000:
            with lock:
                acked.append(uid)
    assoc.release()


def _sop_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def time_listen(paths: list[Path], out: Path, associations: int,
                batch: int) -> tuple[float, list[str]]:
    """Seconds from the first C-STORE until all are placed; the acknowledged SOP UIDs."""
    from xreg.pacs.spool import Spool

    port = _free_port()
    log = out.parent / "listen.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "xreg", "listen", str(out), "--port", str(port), "--json",
         "--batch", str(batch), "--flush-seconds", "0.5"],
        stdout=log.open("wb"), stderr=subprocess.DEVNULL)
    try:
        while '"event": "listening"' not in log.read_text():
            if proc.poll() is not None:
                raise SystemExit("xreg listen did not start")
            time.sleep(0.1)
        acked: list[str] = []
        lock = threading.Lock()
        films = [(p, _sop_uid(p)) for p in paths]
        shares = [films[i::associations] for i in range(associations)]
        threads = [threading.Thread(target=_push, args=(port, share, acked, lock))
                   for share in shares]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        while _placed(out) < len(acked) or Spool(out).pending():
            time.sleep(0.05)
        seconds = time.perf_counter() - start
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    return seconds, acked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--films", type=int, default=500)
    parser.add_argument("--size", type=int, default=512, help="pixels per side")
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32, help="the listener's --batch")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="xreg-listen-bench-") as tmp:
        root = Path(tmp)
        paths = write_films(root / "films", args.films, args.size)
        mb = sum(p.stat().st_size for p in paths) / 1e6
        print(f"{args.films} DX films of {args.size}x{args.size}, {mb:.0f} MB; "
              f"{os.cpu_count()} CPUs")
        folder_s = time_folder_sort(root / "films", root / "out_folder")
        listen_s, acked = time_listen(paths, root / "out_listen", args.associations,
                                      args.batch)
        with sqlite3.connect(root / "out_listen" / "registry.sqlite") as db:
            per_sop = dict(db.execute("SELECT sop_uid, COUNT(*) FROM images"
                                      " WHERE state = 'done' GROUP BY sop_uid"))
        missing = [uid for uid in acked if per_sop.get(uid, 0) != 1]
        folder_rate, listen_rate = args.films / folder_s, len(acked) / listen_s
        print(f"xreg sort (folder):   {folder_s:7.1f} s  {folder_rate:6.1f} films/s")
        print(f"xreg listen ({args.associations} assoc): {listen_s:7.1f} s  "
              f"{listen_rate:6.1f} films/s  ({len(acked)} acknowledged)")
        print(f"ratio listen / folder: {listen_rate / folder_rate:.2f}  (target >= 0.8)")
        print(f"acknowledged in the registry exactly once: {len(acked) - len(missing)} of "
              f"{len(acked)}; doubled or missing: {len(missing)}")
        if missing or len(acked) != args.films:
            raise SystemExit("FAILED: not every acknowledged film is in the registry once")


if __name__ == "__main__":
    main()
