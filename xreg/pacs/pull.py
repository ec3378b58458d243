"""``xreg pull``: query a DICOMweb server, retrieve what OUT lacks, sort it.

QIDO-RS finds the instances (``--since``/``--until`` on StudyDate,
``--modality``, ``--study``); instances whose SOP Instance UID the registry
already holds, or the spool already has, are not transferred again; WADO-RS
retrieves the rest one instance at a time, each retried with backoff, and
only a complete, parsed instance is handed to the spool (temp name, fsync,
rename), so a cut-off download never reaches it. Then the spool is sorted
like a listener batch. OUT's lock is held from the first query to the last
placement.

Credentials: HTTP basic from the URL's userinfo, or a bearer token from an
environment variable; neither ever reaches a log line, the registry or an
error message: what is recorded as the origin is the URL without userinfo,
query and fragment (``public_url``).
"""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlsplit

from xreg.config import SortOptions
from xreg.errors import ConfigError, XregError
from xreg.registry import Registry
from xreg.sort.runner import REGISTRY_NAME

if TYPE_CHECKING:
    from dicomweb_client import DICOMwebClient

    from xreg.sort.result import SortResult

__all__ = ["DEFAULT_TOKEN_ENV", "InstanceRef", "PullQuery", "PullResult", "Retrieved",
           "held_sop_uids", "plan_retrieves", "public_url", "pull", "require_dicomweb"]

DEFAULT_TOKEN_ENV = "XREG_DICOMWEB_TOKEN"
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_MODALITY = re.compile(r"^[A-Z0-9_]{1,16}$")
# Tags of a QIDO-RS instance result (DICOM JSON keys).
_STUDY_UID, _SERIES_UID, _SOP_UID = "0020000D", "0020000E", "00080018"


def require_dicomweb() -> None:
    """Raise, saying what to install, when dicomweb-client is missing (before any work)."""
    import importlib.util

    if importlib.util.find_spec("dicomweb_client") is None:
        raise ConfigError('xreg pull needs dicomweb-client: pip install "xreg[pacs]"')


# -- what to ask for (pure) --------------------------------------------------

@dataclass(frozen=True)
class PullQuery:
    """Which instances to look for: a StudyDate range, modalities, studies (all optional)."""

    since: date | None = None
    until: date | None = None
    modalities: tuple[str, ...] = ()
    studies: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.since and self.until and self.since > self.until:
            raise ConfigError(f"--since {self.since} is after --until {self.until}")
        for m in self.modalities:
            if not _MODALITY.match(m):
                raise ConfigError(f"--modality {m!r} is not a DICOM modality (e.g. CR, DX)")
        for uid in self.studies:
            if len(uid) > 64 or not _UID.match(uid):
                raise ConfigError(f"--study {uid!r} is not a StudyInstanceUID")

    def searches(self) -> list[tuple[str | None, dict[str, str]]]:
        """One QIDO-RS instance search per (study, modality): the study to search
        under (None: all) and the search filters. One value per search, since not
        every server reads comma lists."""
        base: dict[str, str] = {}
        if self.since or self.until:
            base["StudyDate"] = (f"{self.since:%Y%m%d}" if self.since else "") + "-" + \
                                (f"{self.until:%Y%m%d}" if self.until else "")
        return [(study, base | ({"Modality": m} if m else {}))
                for study in (self.studies or (None,)) for m in (self.modalities or (None,))]


@dataclass(frozen=True)
class InstanceRef:
    """Where one instance lives on the server (UIDs only, never patient data)."""

    study: str
    series: str
    sop: str


def instance_refs(results: Iterable[dict[str, Any]]) -> list[InstanceRef]:
    """The UIDs of QIDO-RS results, first occurrence kept; everything else is dropped
    here (results carry patient names and IDs, which go no further)."""
    refs: dict[str, InstanceRef] = {}
    for item in results:
        try:
            uids = [str(item[tag]["Value"][0]) for tag in (_STUDY_UID, _SERIES_UID, _SOP_UID)]
        except (KeyError, IndexError, TypeError):
            continue  # a result without its three UIDs cannot be retrieved
        refs.setdefault(uids[2], InstanceRef(*uids))
    return list(refs.values())


def plan_retrieves(found: list[InstanceRef], held: set[str]) -> list[InstanceRef]:
    """The instances to transfer: those whose SOP Instance UID OUT does not hold."""
    return [ref for ref in found if ref.sop not in held]


def public_url(url: str) -> str:
    """``url`` as it may be shown and recorded: no userinfo, query or fragment."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("the DICOMweb URL must start with http:// or https:// and name a host")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        raise ConfigError("the DICOMweb URL has a bad port") from None
    return f"{parts.scheme}://{host}{port}{parts.path.rstrip('/')}"


# -- what OUT already holds --------------------------------------------------

def held_sop_uids(registry_path: Path, uids: Iterable[str], *,
                  readonly: bool = False) -> set[str]:
    """Those of ``uids`` whose film the registry holds (placed and recorded).

    ``readonly`` for a dry run: the registry is read, never created or migrated.
    """
    wanted = sorted(set(uids))
    if not wanted or not registry_path.exists():
        return set()
    with Registry(registry_path, readonly=readonly) as registry:
        return set(registry.placed_sop_uids(wanted))


def _spooled_sop_uids(paths: Iterable[Path]) -> set[str]:
    """SOP Instance UIDs of files waiting in the spool (retrieved, not yet sorted)."""
    import pydicom

    uids = set()
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
            uids.add(str(ds.SOPInstanceUID))
        except Exception:  # noqa: BLE001  not DICOM or unreadable: the sort will say so
            continue
    return uids


# -- talking to the server ---------------------------------------------------

@contextmanager
def _client(url: str, token: str | None, timeout: float) -> Iterator[DICOMwebClient]:
    """A DICOMweb client with the credentials in its session, not in any URL."""
    import requests
    from dicomweb_client import DICOMwebClient

    parts = urlsplit(url.strip())
    session = requests.Session()
    if parts.username is not None:
        if token:
            raise ConfigError("credentials in the URL and a bearer token: give one of them")
        session.auth = (unquote(parts.username), unquote(parts.password or ""))
    elif token:
        session.headers["Authorization"] = f"Bearer {token}"
    try:
        client = DICOMwebClient(public_url(url), session=session, timeout=(10, timeout))
        # Retries are ours (per instance, any failure); the client's would nest inside.
        client.set_http_retry_params(retry=False)
        yield client
    finally:
        session.close()


def _reason(exc: BaseException) -> str:
    """A failure in words that can be shown: no URL, header or server text."""
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "transfer cut short"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    return type(exc).__name__


def _search(client: DICOMwebClient, query: PullQuery, origin: str) -> list[InstanceRef]:
    results: list[dict[str, Any]] = []
    for study, filters in query.searches():
        try:
            results += client.search_for_instances(study_instance_uid=study,
                                                   search_filters=filters, get_remaining=True)
        except Exception as exc:  # noqa: BLE001  requests', JSON's or the client's
            hint = " (check the URL's credentials or the token)" \
                if _reason(exc) in ("HTTP 401", "HTTP 403") else ""
            raise XregError(f"QIDO-RS search at {origin} failed: {_reason(exc)}{hint}") from None
    return instance_refs(results)


def _fetch(client: DICOMwebClient, ref: InstanceRef) -> bytes:
    """One instance as a DICOM file, in the transfer syntax the server holds it in."""
    import pydicom

    ds = client.retrieve_instance(ref.study, ref.series, ref.sop,
                                  media_types=(("application/dicom", "*"),))
    if str(ds.get("SOPInstanceUID", "")) != ref.sop:
        raise ValueError("the server sent another instance")
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


@dataclass(frozen=True)
class Retrieved:
    """One retrieve: the instance, how many tries it took, why it failed (None: it did not)."""

    sop: str
    tries: int
    error: str | None = None


class RetrieveReporter(Protocol):
    """How a pull tells its caller about retrieves (the CLI draws a bar)."""

    def start(self, total: int) -> None: ...
    def advance(self, outcome: Retrieved) -> None: ...


def _retrieve(fetch: Callable[[], bytes], tries: int, backoff: float,
              sleep: Callable[[float], None]) -> tuple[bytes | None, int, str | None]:
    """Call ``fetch`` up to ``tries`` times, waiting backoff, 2*backoff, ... between."""
    reason = "not tried"
    for attempt in range(1, tries + 1):
        try:
            return fetch(), attempt, None
        except Exception as exc:  # noqa: BLE001  any failure of one instance is retried
            reason = _reason(exc)
        if attempt < tries:
            sleep(backoff * 2 ** (attempt - 1))
    return None, tries, reason


# -- one pull ------------------------------------------------------------------

@dataclass
class PullResult:
    """What a pull did: counts of the query and transfers, and the sort of the spool."""

    origin: str
    dry_run: bool = False
    queried: int = 0
    held: int = 0  # already in the registry or the spool: not transferred
    retrieved: int = 0
    retried: int = 0  # retrieves that needed more than one try and then succeeded
    failed: list[Retrieved] = field(default_factory=list)
    sort: SortResult | None = None  # None: nothing to sort (or a dry run)

    @property
    def to_retrieve(self) -> int:
        return self.queried - self.held

    def to_dict(self) -> dict[str, Any]:
        return {"origin": self.origin, "dry_run": self.dry_run, "queried": self.queried,
                "already_held": self.held, "retrieved": self.retrieved,
                "retried": self.retried,
                "failed": [{"sop_instance_uid": f.sop, "tries": f.tries, "error": f.error}
                           for f in self.failed],
                "sort": self.sort.to_dict() if self.sort is not None else None}


class _Silent:
    def start(self, total: int) -> None:
        pass

    def advance(self, outcome: Any) -> None:
        pass


def pull(
    url: str, out_root: Path, query: PullQuery, options: SortOptions, *,
    token_env: str | None = None, reporter: RetrieveReporter | None = None,
    sort_reporter: Any = None, tries: int = 3, backoff: float = 1.0, timeout: float = 120.0,
    sleep: Callable[[float], None] = time.sleep,
) -> PullResult:
    """Query ``url`` (a DICOMweb root), retrieve what OUT lacks into its spool, sort it.

    ``token_env`` names the environment variable holding a bearer token;
    None reads ``XREG_DICOMWEB_TOKEN`` if it is set, a name given must be
    set. With ``options.dry_run`` only the query runs: nothing is retrieved,
    locked or written.
    """
    require_dicomweb()
    if tries < 1:
        raise ConfigError("tries must be at least 1")
    origin = public_url(url)
    token = _token(token_env)
    registry_path = options.registry or out_root / REGISTRY_NAME
    result = PullResult(origin, dry_run=options.dry_run)
    lock = nullcontext() if options.dry_run else _locked(out_root)
    with lock, _client(url, token, timeout) as client:
        from xreg.pacs.spool import Spool

        spool = Spool(out_root)
        if not options.dry_run:
            spool.clean_temporary()  # what a killed writer left; we hold the lock
        waiting = spool.pending()
        found = _search(client, query, origin)
        held = _spooled_sop_uids(waiting) | held_sop_uids(
            registry_path, (ref.sop for ref in found), readonly=options.dry_run)
        todo = plan_retrieves(found, held)
        result.queried, result.held = len(found), len(found) - len(todo)
        if options.dry_run:
            return result
        reporter = reporter or _Silent()
        reporter.start(len(todo))
        for ref in todo:
            data, used, error = _retrieve(partial(_fetch, client, ref), tries, backoff, sleep)
            if data is not None:
                spool.put(data, origin)  # SpoolError: stop; the spool keeps what it has
                result.retrieved += 1
                result.retried += used > 1
            outcome = Retrieved(ref.sop, used, error)
            if error is not None:
                result.failed.append(outcome)
            reporter.advance(outcome)
        if todo or waiting:
            from xreg.pacs.spool import sort_spool

            result.sort = sort_spool(out_root, options, intake="pull",
                                     reporter=sort_reporter, lock_held=True)
    return result


def _token(token_env: str | None) -> str | None:
    name = token_env or DEFAULT_TOKEN_ENV
    token = os.environ.get(name) or None
    if token is None and token_env is not None:
        raise ConfigError(f"--token-env {token_env}: that environment variable is not set")
    return token


@contextmanager
def _locked(out_root: Path) -> Iterator[None]:
    from xreg.sort.folders import output_lock

    if out_root.exists() and not out_root.is_dir():
        raise ConfigError(f"output {out_root} exists and is not a folder")
    with output_lock(out_root, "pull"):
        yield
