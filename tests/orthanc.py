"""Debian's Orthanc as a real PACS for tests: found, started on the caller's ports,
waited for, stopped."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_binary() -> str | None:
    """The Orthanc executable, or None where it is not installed."""
    return shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)


@contextmanager
def running_orthanc(binary: str, config: Mapping[str, Any], folder: Path,
                    headers: Mapping[str, str] | None = None) -> Iterator[str]:
    """Orthanc with ``config`` (its ``HttpPort`` chosen by the caller) until the block
    ends; yields its REST base URL once ``/system`` answers (within 60 s)."""
    (folder / "orthanc.json").write_text(json.dumps(dict(config)))
    proc = subprocess.Popen([binary, str(folder / "orthanc.json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{config['HttpPort']}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                request = urllib.request.Request(f"{base}/system", headers=dict(headers or {}))
                urllib.request.urlopen(request, timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "no Orthanc"
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
