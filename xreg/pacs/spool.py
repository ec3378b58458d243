"""The spool: films that came over the network, on disk before anyone is told so.

``xreg listen`` and ``xreg pull`` never sort straight from a socket. Each
instance is first written into the spool inside OUT, and only a durable file
is acknowledged (a C-STORE Success, a retrieve counted as done):

1. write the bytes to ``.tmp-<random>`` in the origin's folder and ``fsync`` it;
2. ``rename`` it to ``<sha256>.dcm`` (the content hash: the same bytes sent
   twice are one spooled file);
3. ``fsync`` the folder, so the name survives a crash too.

Layout::

    OUT/.xreg-spool/<origin, percent-quoted>/<sha256>.dcm

The origin is kept as the folder name: ``dicom:AE@host`` for a sender over
DICOM (``dicom%3AAE%40host``), the DICOMweb URL without credentials for a
pull. One folder per sender costs nothing per file (no sidecar to write and
fsync) and a file cannot lose its origin. The spool is a hidden folder, so
no scan of OUT (``find_images`` skips hidden folders) ever takes a spooled
file for a film to sort.

``sort_spool`` sorts what the spool holds with ``--mode move`` semantics:
the journal, placement and registry of ``xreg sort``; a spooled file is
removed only once its placement (or, for content already placed, its source
row) is recorded, with its origin in ``sources.origin``. A file whose SOP
Instance UID is already placed with other bytes (the same instance sent
again in another transfer syntax) is a duplicate: the first copy stays, the
spooled one is removed. Temporary names are removed by ``clean_temporary``,
which only the holder of OUT's lock calls (no writer is then half-way).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
import threading
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from xreg.config import SortOptions
from xreg.errors import XregError
from xreg.inference.predict import SourceFile
from xreg.sort.folders import output_lock
from xreg.sort.result import FileOutcome, SortResult
from xreg.sort.runner import REGISTRY_NAME, Reporter, sort_sources

if TYPE_CHECKING:
    from xreg.inference.runtime import Model

__all__ = ["INTAKES", "SPOOL_DIR", "Spool", "SpoolError", "sort_spool"]

SPOOL_DIR = ".xreg-spool"
TEMP_PREFIX = ".tmp-"
SUFFIX = ".dcm"
#: How a run's films arrived (``runs.intake``).
INTAKES = ("folder", "listen", "pull")
_MAX_ORIGIN = 200  # a quoted folder name stays well under NAME_MAX (255)


class SpoolError(XregError):
    """An instance could not be written durably into the spool."""


class Spool:
    """The spool folder of one OUT. ``put`` is safe from many threads at once."""

    def __init__(self, out_root: Path) -> None:
        self.out_root = Path(out_root)
        self.folder = self.out_root / SPOOL_DIR
        self._made: set[Path] = set()
        self._mkdir_lock = threading.Lock()

    def put(self, data: bytes, origin: str) -> Path:
        """Write ``data`` durably (temp name, fsync, rename, folder fsync); its final path.

        Raises ``SpoolError`` when any step fails; nothing is then acknowledged
        and no partial file keeps a final name.
        """
        try:
            folder = self._origin_folder(origin)
            final = folder / (hashlib.sha256(data).hexdigest() + SUFFIX)
            tmp = folder / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, final)
            except BaseException:
                _unlink_quietly(tmp)
                raise
            _fsync_dir(folder)
        except OSError as exc:
            raise SpoolError(f"cannot write into the spool {self.folder}: "
                             f"{exc.strerror or exc}") from None
        return final

    def pending(self) -> list[Path]:
        """Spooled files waiting to be sorted, oldest first (temporary names excluded)."""
        found: list[tuple[int, Path]] = []
        for folder in self._origin_folders():
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith(".") or not entry.name.endswith(SUFFIX):
                    continue
                try:
                    found.append((entry.stat().st_mtime_ns, Path(entry.path)))
                except OSError:
                    continue  # sorted and removed meanwhile
        return [path for _, path in sorted(found)]

    def clean_temporary(self) -> int:
        """Remove temporary names a killed writer left; how many. Call with OUT locked."""
        removed = 0
        for folder in self._origin_folders():
            for path in folder.glob(TEMP_PREFIX + "*"):
                _unlink_quietly(path)
                removed += 1
        return removed

    @staticmethod
    def origin_of(path: Path) -> str:
        """The origin a spooled file came from (its folder's name, unquoted)."""
        return unquote(path.parent.name)

    def _origin_folders(self) -> list[Path]:
        try:
            return sorted(p for p in self.folder.iterdir()
                          if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return []

    def _origin_folder(self, origin: str) -> Path:
        name = quote(origin, safe="")
        if not origin or len(name) > _MAX_ORIGIN:
            raise SpoolError(f"an origin must be 1 to {_MAX_ORIGIN} characters once quoted")
        folder = self.folder / name
        if folder in self._made:
            return folder
        with self._mkdir_lock:
            for made in (self.folder, folder):
                if not made.is_dir():
                    made.mkdir(parents=True, exist_ok=True)
                    _fsync_dir(made.parent)  # the new folder's own name is durable too
            self._made.add(folder)
        return folder


def sort_spool(
    out_root: Path, options: SortOptions, *, intake: str, reporter: Reporter | None = None,
    lock_held: bool = False, loaded: Model | None = None, run_id: int | None = None,
    limit: int | None = None, input_root: str | None = None,
) -> SortResult | None:
    """Sort what the spool of ``out_root`` holds (None when it holds nothing).

    ``options`` are the sort's; the mode is always ``move`` and ``min_age``
    0 (a spooled file is complete once it has its name). ``intake`` goes into
    the run row (``listen`` or ``pull``), each file's origin into its source
    row. ``lock_held``: the caller holds ``output_lock(out_root)``; otherwise
    it is taken here, and temporary names a killed writer left are removed.
    ``loaded``, ``run_id`` (add to a running run), ``limit`` (the oldest
    files first) and ``input_root`` (the run row's) are for a long-lived caller.
    """
    if intake not in INTAKES:
        raise XregError(f"intake must be one of {', '.join(INTAKES)}, not {intake!r}")
    options = dataclasses.replace(options, mode="move", min_age=0.0, dry_run=False,
                                  group_by=None)
    spool = Spool(out_root)
    lock = nullcontext() if lock_held else output_lock(out_root, intake)
    with lock:
        if not lock_held:
            spool.clean_temporary()
        paths = spool.pending()[:limit]
        if not paths:
            return None
        files, dropped = _drop_resent(paths, options.registry or out_root / REGISTRY_NAME)
        result = sort_sources(
            files, out_root, options, input_root=input_root or str(spool.folder.absolute()),
            reporter=reporter, loaded=loaded, intake=intake, lock_held=True, run_id=run_id,
            origins={f.path: Spool.origin_of(f.path) for f in files})
    for path in dropped:
        result.add(FileOutcome(str(path), "duplicate"))
    return result


def _drop_resent(paths: list[Path], registry_path: Path) -> tuple[list[SourceFile], list[Path]]:
    """The spooled files to sort, and those removed as an instance already placed.

    Identical bytes are the sort's own duplicates (one image row, the source
    row updated); here only an instance placed before *with other bytes*.
    """
    from xreg.registry import Registry

    uids = {path: _sop_uid(path) for path in paths}
    placed: dict[str, str] = {}
    if registry_path.exists() and any(uids.values()):
        with Registry(registry_path) as registry:
            placed = registry.placed_sop_uids(sorted({u for u in uids.values() if u}))
    files, dropped, batch = [], [], set()
    for path in paths:
        uid = uids[path]
        if uid is not None and uid in placed and placed[uid] + SUFFIX != path.name:
            _unlink_quietly(path)
            dropped.append(path)
            continue
        if uid is not None and uid in batch:
            continue  # the same instance in other bytes: the next batch drops it
        batch.add(uid)
        try:
            st = path.stat()
        except OSError:
            continue  # gone: sorted by an earlier batch
        files.append(SourceFile(path.absolute(), st.st_size, st.st_mtime_ns))
    return files, dropped


def _sop_uid(path: Path) -> str | None:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        uid = ds.get("SOPInstanceUID")
    except (OSError, InvalidDicomError, ValueError, EOFError):
        return None
    return str(uid) if uid else None


def _fsync_dir(folder: Path) -> None:
    """fsync a folder so the names in it are durable; errors are the caller's."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
