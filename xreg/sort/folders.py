"""The folders of a run: IN and OUT checked, IN scanned, OUT locked.

The lock is an ``flock`` on ``OUT/.xreg.lock``: every way of writing into
OUT (a sort, an upload added from the web app, an applied review) takes it,
and the kernel drops it if the process dies.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from xreg.errors import ConfigError, LockedError
from xreg.inference.predict import SourceFile
from xreg.io import find_images

__all__ = ["LOCK_NAME", "check_folders", "output_lock", "scan_inputs"]

LOCK_NAME = ".xreg.lock"


@contextmanager
def output_lock(out_root: Path, owner: str = "run") -> Iterator[None]:
    """Hold an exclusive lock on OUT; the kernel drops it if the process dies.

    The lock file names the holder (``<pid> <owner>``) so that a second writer
    can say who it is waiting for, e.g. ``listener`` for ``xreg listen``.
    """
    out_root.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(_held_by(fd, out_root)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {owner}\n".encode())
        yield
    finally:
        os.close(fd)


def _held_by(fd: int, out_root: Path) -> str:
    """The message for a second writer, naming the holder when the lock file says."""
    try:
        pid, _, owner = os.pread(fd, 200, 0).decode("ascii", "replace").strip().partition(" ")
    except OSError:
        pid, owner = "", ""
    if owner == "listener":
        return (f"a listener (xreg listen, pid {pid}) holds {out_root} and sorts what it "
                "receives; stop it (SIGTERM) to sort into this folder otherwise")
    return f"another xreg run is sorting into {out_root}; try again when it has finished"


def check_folders(in_root: Path, out_root: Path) -> list[Path]:
    if not in_root.is_dir():
        raise ConfigError(f"input folder {in_root} does not exist or is not a folder")
    if out_root.exists() and not out_root.is_dir():
        raise ConfigError(f"output {out_root} exists and is not a folder")
    if out_root.resolve() == in_root.resolve():
        raise ConfigError("the output folder must differ from the input folder")
    return [out_root.resolve()] if out_root.resolve().is_relative_to(in_root.resolve()) else []


def scan_inputs(in_root: Path, exclude: list[Path], min_age: float) -> tuple[list[SourceFile], int]:
    now = time.time()
    files, young = [], 0
    for path in find_images(in_root, exclude=exclude):
        try:
            st = path.stat()
        except OSError:
            continue  # vanished between the walk and now
        if now - st.st_mtime < min_age:
            young += 1
            continue
        files.append(SourceFile(path.absolute(), st.st_size, st.st_mtime_ns))
    return files, young
