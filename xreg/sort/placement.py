"""Where files go (``plan_moves``, pure) and putting them there (``apply_move``).

Planning is plain data so ``--dry-run`` is free and the rules are testable
without a disk. Applying is the one place that writes into the output
folder: temp name in the destination folder, fsync, verify, then a
no-replace link into place, so nothing is ever overwritten and a killed run
leaves at most a temp file that the next run removes. A ``move`` within one
filesystem gives the source a second name instead of copying it; the
source's own name goes only once the placement is recorded.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from xreg.errors import ConfigError, PlacementError
from xreg.hashing import file_sha256

DEFAULT_LAYOUT = "{body_part}/{instrument}/{name}"
REVIEW_DIR = "_review"
UNREADABLE_DIR = "_unreadable"
MODES = ("copy", "move", "link", "hardlink")
LAYOUT_FIELDS = (
    "body_part", "instrument", "fracture", "view", "laterality", "study_date", "year",
    "modality", "study_uid", "name", "stem", "ext", "sha8", "header_agrees",
)
TEMP_PREFIX = ".xreg-tmp-"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# A filesystem (or a pair of them) that cannot give a file a second name.
_NO_LINK = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK,
            errno.ENOSYS)


@dataclass(frozen=True)
class Move:
    """One planned placement of a source file under the output folder.

    ``duplicate_of`` is set when the same content appears earlier in the same
    plan: it is stored once and this source is only recorded.
    """

    source: Path
    sha256: str
    dest: PurePosixPath
    status: str  # sorted | review | unreadable
    duplicate_of: Path | None = None


@dataclass(frozen=True)
class PlanItem:
    """What the planner needs to know about one input file."""

    source: Path
    sha256: str
    status: str
    fields: Mapping[str, str]


def sanitise(value: object) -> str:
    """Turn a header or label value into one safe path component.

    Only letters, digits, ``.``, ``_`` and ``-`` survive; separators, ``..``
    and leading dots cannot, so no value can climb out of the output folder
    or hide a file.
    """
    text = _UNSAFE.sub("_", str(value or "")).strip("._-")
    return text[:80] or "unknown"


def validate_layout(template: str) -> str:
    """Check a ``--layout`` template; return it or raise ConfigError saying why."""
    if not template or template.startswith(("/", "\\")) or "\\" in template:
        raise ConfigError(f"layout {template!r} must be a relative path with '/' separators")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"layout {template!r} is not a valid template: {exc}") from None
    for literal, field, spec, conv in parsed:
        if field is not None and field not in LAYOUT_FIELDS:
            raise ConfigError(
                f"layout field {{{field}}} is unknown; use {', '.join(LAYOUT_FIELDS)}"
            )
        if spec or conv:
            raise ConfigError(f"layout field {{{field}}} takes no format spec or conversion")
    parts = template.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ConfigError(f"layout {template!r} has an empty, '.' or '..' component")
    if not any(f in parts[-1] for f in ("{name}", "{stem}", "{sha8}")):
        raise ConfigError("the last layout component must contain {name}, {stem} or {sha8}")
    if parts[0].startswith("_"):
        raise ConfigError("layout must not start with '_' (reserved for _review, _unreadable)")
    return template


def render_layout(template: str, fields: Mapping[str, str]) -> PurePosixPath:
    """Fill a validated template with sanitised values."""
    values = {k: sanitise(fields.get(k)) for k in LAYOUT_FIELDS}
    # The file name keeps its extension; only its characters are cleaned.
    rel = PurePosixPath(template.format(**values))
    if rel.is_absolute() or any(p in ("..", ".") or not p for p in rel.parts):
        raise ConfigError(f"layout produced an unsafe path {rel}")  # unreachable by design
    return rel


def plan_moves(items: Iterable[PlanItem], *, layout: str) -> list[Move]:
    """Decide a destination for each item; pure, deterministic.

    Sorted images follow ``layout``; review and unreadable ones go flat into
    ``_review/`` and ``_unreadable/``. Two different files that would share a
    name in this plan get a content-derived suffix; the same content twice is
    planned once and the repeat marked ``duplicate_of``.
    """
    moves: list[Move] = []
    first_by_sha: dict[str, Path] = {}
    taken: dict[PurePosixPath, str] = {}
    for item in items:
        if item.sha256 in first_by_sha:
            original = next(m for m in moves if m.source == first_by_sha[item.sha256])
            moves.append(Move(item.source, item.sha256, original.dest, original.status,
                              duplicate_of=original.source))
            continue
        if item.status == "sorted":
            dest = render_layout(layout, item.fields)
        else:
            folder = REVIEW_DIR if item.status == "review" else UNREADABLE_DIR
            dest = PurePosixPath(folder, sanitise(item.fields.get("name")))
        if taken.get(dest, item.sha256) != item.sha256:
            dest = suffixed(dest, item.sha256)
        taken[dest] = item.sha256
        first_by_sha[item.sha256] = item.source
        moves.append(Move(item.source, item.sha256, dest, item.status))
    return moves


def suffixed(dest: PurePosixPath, sha256: str, length: int = 8) -> PurePosixPath:
    """``a/b/name.png`` -> ``a/b/name__<sha[:length]>.png`` (deterministic)."""
    name = dest.name
    stem, dot, ext = name.partition(".") if not name.startswith(".") else (name, "", "")
    return dest.with_name(f"{stem}__{sha256[:length]}{dot}{ext}")


def temp_path(final: Path, sha256: str) -> Path:
    """The temp name a placement of ``sha256`` uses in ``final``'s folder."""
    return final.parent / f"{TEMP_PREFIX}{sha256[:16]}"


def holds(final: Path, sha256: str, source: Path, mode: str) -> bool:
    """True when ``final`` already is this placement (so a rerun can adopt it)."""
    if mode == "link":
        return final.is_symlink() and os.readlink(final) == str(source.absolute())
    if final.is_symlink() or not final.is_file():
        return False
    return file_sha256(final) == sha256


def _candidates(dest: PurePosixPath, sha256: str) -> tuple[PurePosixPath, ...]:
    return (dest, suffixed(dest, sha256), suffixed(dest, sha256, 64))


def find_placed(out_root: Path, dest: str, sha256: str, source: Path, mode: str) -> str | None:
    """Where a journalled placement already landed, if it completed before a kill."""
    for rel in _candidates(PurePosixPath(dest), sha256):
        final = out_root / rel
        if os.path.lexists(final) and holds(final, sha256, source, mode):
            return str(rel)
    return None


def apply_move(
    move: Move, out_root: Path, mode: str, expected: tuple[int, int] | None = None
) -> PurePosixPath:
    """Place ``move.source`` under ``out_root`` and return where it went (relative).

    Never overwrites: if the planned name holds other content, a suffixed
    name is used; if it already holds this content (a rerun after a kill), it
    is adopted. The source itself is never touched here. ``expected`` is the
    source's (size, mtime_ns) when it was hashed: a copy is refused if the
    source changed since.
    """
    for rel in _candidates(move.dest, move.sha256):
        final = out_root / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(final):
            if holds(final, move.sha256, move.source, mode):
                return rel
            continue
        tmp = temp_path(final, move.sha256)
        _remove_quietly(tmp)
        try:
            _write_temp(move.source, tmp, move.sha256, mode, expected)
            if _place_no_replace(tmp, final):
                _fsync_dir(final.parent)
                return rel
        finally:
            _remove_quietly(tmp)
    raise PlacementError(f"no free name for {move.dest}")


def _write_temp(
    source: Path, tmp: Path, sha256: str, mode: str, expected: tuple[int, int] | None
) -> None:
    if mode == "link":
        os.symlink(source.absolute(), tmp)
        return
    if mode == "hardlink":
        try:
            os.link(source, tmp)
        except OSError as exc:
            raise PlacementError(
                f"cannot hard-link into the output folder ({exc.strerror}); use --mode copy"
            ) from None
        if not os.path.samestat(os.stat(source), os.stat(tmp)):
            raise PlacementError("hard link does not point at the source")
        return
    if mode == "move" and _link_for_move(source, tmp, expected):
        return
    # The kernel copies (sendfile); the content was hashed when it was read
    # for the model, so an unchanged size and mtime is enough for a copy.
    # A move also reads the copy back, since its source is about to go.
    shutil.copyfile(source, tmp)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    if expected is not None and _stat_key(source) != expected:
        raise PlacementError("source changed while it was being sorted; it will be retried")
    if (mode == "move" or expected is None) and file_sha256(tmp) != sha256:
        raise PlacementError("copy failed verification")


def _link_for_move(source: Path, tmp: Path, expected: tuple[int, int] | None) -> bool:
    """Give a move's source a second name at ``tmp`` instead of copying it.

    On the same filesystem the placed file is then the source's own inode:
    nothing is copied, so nothing needs reading back, and the source's name
    is removed only after the placement is recorded (``remove_source``), so a
    kill leaves one name or both, never neither. The inode is fsynced, since
    the source may never have been. False (nothing done) where there are no
    hard links across the two folders: the caller copies.
    """
    if expected is None:
        return False  # unhashed content: copy and verify
    try:
        os.link(source, tmp)
    except OSError as exc:
        if exc.errno in _NO_LINK:
            return False
        raise
    st = os.stat(tmp)
    if not os.path.samestat(os.stat(source), st):
        raise PlacementError("hard link does not point at the source")
    if (st.st_size, st.st_mtime_ns) != expected:
        raise PlacementError("source changed while it was being sorted; it will be retried")
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _stat_key(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _place_no_replace(tmp: Path, final: Path) -> bool:
    """Atomically give ``tmp`` the name ``final`` unless ``final`` exists."""
    try:
        os.link(tmp, final, follow_symlinks=False)
    except FileExistsError:
        return False
    except OSError as exc:
        # Some shares (SMB, FAT) have no hard links: fall back to rename,
        # safe because we hold the output folder's lock.
        if exc.errno not in _NO_LINK:
            raise
        if os.path.lexists(final):
            return False
        os.rename(tmp, final)
    return True


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_source(source: Path, sha256: str, placed: Path | None = None) -> bool:
    """Delete a source for ``--mode move`` only if it still holds ``sha256``.

    ``placed`` is where its content was placed: when that is the source's own
    inode (a move by hard link), the content is safe there and the name goes
    without reading the file again.
    """
    try:
        if placed is not None and _same_file(source, placed):
            os.unlink(source)
            return True
        if file_sha256(source) != sha256:
            return False
        os.unlink(source)
    except FileNotFoundError:
        return True
    return True


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samestat(os.stat(a), os.lstat(b))
    except FileNotFoundError:
        return False


def clean_temps(out_root: Path, dests: Sequence[str], hashes: Sequence[str]) -> int:
    """Remove temp files left by a killed run; returns how many."""
    removed = 0
    for dest, sha in zip(dests, hashes):
        tmp = temp_path(out_root / dest, sha)
        if os.path.lexists(tmp):
            _remove_quietly(tmp)
            removed += 1
    return removed
