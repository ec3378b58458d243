"""``xreg listen``: a DICOM Storage SCP that spools what it receives and sorts the spool.

One process holds OUT's lock for its whole life (the lock file names it a
``listener``). Association threads (pynetdicom's) only write into the spool:
a C-STORE is answered Success only once its file is durable there
(``Spool.put``), a failure status (0xA700, out of resources) otherwise, so
the sender keeps it and retries. One worker thread sorts the spool in
batches with ``--mode move`` semantics, all batches adding to one run row
(``intake`` ``listen``). A stop (SIGTERM, SIGINT) closes the port, aborts the
associations still open (nothing they sent unacknowledged is lost: the
sender retries), lets the worker finish its batch and records the run.

Events go to ``on_event(kind, fields)``: plain values, AE titles, addresses,
counts and SOP class names; never a patient name or ID.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xreg.config import SortOptions
from xreg.errors import ConfigError, XregError
from xreg.pacs.policy import (
    STORAGE_CLASSES,
    Allowed,
    decodable_syntaxes,
    parse_allow,
    permits,
    tls_context,
)
from xreg.pacs.spool import Spool, SpoolError, sort_spool
from xreg.sort.folders import output_lock
from xreg.sort.runner import REGISTRY_NAME, start_sort_run
from xreg.sort.scope import new_site_notice

if TYPE_CHECKING:
    from xreg.inference.runtime import Model

__all__ = ["EventSink", "ListenOptions", "Listener", "listen"]

EventSink = Callable[[str, dict[str, Any]], None]

_SUCCESS, _OUT_OF_RESOURCES = 0x0000, 0xA700
_VERIFICATION = "1.2.840.10008.1.1"
_MAX_PDU = 1 << 20


@dataclass(frozen=True)
class ListenOptions:
    """Everything the listener needs besides OUT and the sort's options."""

    host: str = "127.0.0.1"
    port: int = 11112  # 0: any free port (tests)
    ae_title: str = "XREG"
    allow: tuple[str, ...] = ()  # AE or AE@HOST; empty: any caller
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None  # require client certificates signed by it
    batch: int = 32
    flush_seconds: float = 2.0
    summary_seconds: float = 60.0
    max_associations: int = 16

    def __post_init__(self) -> None:
        if not self.ae_title.strip() or len(self.ae_title) > 16:
            raise ConfigError("--ae-title must be 1 to 16 characters")
        if not 0 <= self.port <= 65535:
            raise ConfigError("--port must be between 0 and 65535")
        if not 1 <= self.batch <= 1024:
            raise ConfigError("--batch must be between 1 and 1024")
        if self.flush_seconds <= 0 or self.summary_seconds <= 0:
            raise ConfigError("--flush-seconds and the summary interval must be positive")


@dataclass
class _Association:
    calling_ae: str
    address: str
    received: int = 0
    accepted: int = 0
    failed: int = 0


@dataclass
class _Totals:
    associations: int = 0
    rejected: int = 0
    received: int = 0
    accepted: int = 0
    failed: int = 0
    batches: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    predicted: int = 0
    held_back: int = 0


class Listener:
    """A running listener; ``with Listener(...) as ln: ln.stop(); ln.wait()``.

    Entering takes OUT's lock, removes spool temporary names, loads the model,
    opens the port and starts the worker (which sorts what the spool still
    holds first). ``port`` is the bound port (``--port 0`` picks one).
    """

    def __init__(self, out_root: Path, options: ListenOptions, sort_options: SortOptions,
                 on_event: EventSink | None = None, *, loaded: Model | None = None) -> None:
        self.out_root = Path(out_root)
        self.options = options
        self.sort_options = sort_options
        self.port = options.port
        self._emit = on_event or (lambda kind, fields: None)
        self._allowed: tuple[Allowed, ...] = parse_allow(options.allow)
        self._tls = tls_context(options.tls_cert, options.tls_key, options.tls_ca)
        self._loaded = loaded
        self._spool = Spool(self.out_root)
        self._stack = ExitStack()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._open: dict[int, _Association] = {}
        self.totals = _Totals()
        self._run_id = 0
        self._ae: Any = None
        self._server: Any = None
        self._worker: threading.Thread | None = None

    # -- life ----------------------------------------------------------------
    def __enter__(self) -> Listener:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._finish(interrupted=exc[0] is not None and exc[0] is not KeyboardInterrupt)

    def stop(self) -> None:
        """Ask the listener to stop (safe from a signal handler or any thread)."""
        self._stop.set()
        self._wake.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until ``stop``; True if stopped."""
        return self._stop.wait(timeout)

    def _start(self) -> None:
        from xreg.model.card import default_weights
        from xreg.registry import Registry

        self._stack.enter_context(output_lock(self.out_root, "listener"))
        cleaned = self._spool.clean_temporary()
        if self._loaded is None:
            from xreg.inference.runtime import load_model

            weights = self.sort_options.weights or default_weights()
            self._loaded = load_model(weights, runtime=self.sort_options.runtime,
                                      device=self.sort_options.device)
        self._server = self._open_port()
        self.port = int(self._server.server_address[1])
        registry = self._stack.enter_context(
            Registry(self.sort_options.registry or self.out_root / REGISTRY_NAME))
        self._registry = registry
        self._run_id = start_sort_run(
            registry, self.out_root, self.sort_options, self._loaded, intake="listen",
            input_root=self._where())
        self._emit("listening", {
            "ae_title": self.options.ae_title, "host": self.options.host, "port": self.port,
            "tls": self._tls is not None, "client_certificates": self.options.tls_ca is not None,
            "allow": list(self.options.allow), "waiting": len(self._spool.pending()),
            "temporary_removed": cleaned, "run_id": self._run_id})
        self._worker = threading.Thread(target=self._work, name="xreg-listen-sort", daemon=True)
        self._worker.start()

    def _where(self) -> str:
        scheme = "dicom+tls" if self._tls is not None else "dicom"
        return f"{scheme}://{self.options.ae_title}@{self.options.host}:{self.port}"

    def _open_port(self) -> Any:
        from pynetdicom import AE, evt

        ae = AE(ae_title=self.options.ae_title)
        ae.maximum_associations = self.options.max_associations
        # Larger PDUs than pynetdicom's 16 KiB: a film arrives in a few fragments, not
        # hundreds decoded one by one in Python (500 films of 512 KiB: 0.78 -> see
        # benchmarks/listen_throughput.py).
        ae.maximum_pdu_size = _MAX_PDU
        syntaxes = decodable_syntaxes()
        for uid in STORAGE_CLASSES:
            ae.add_supported_context(uid, syntaxes)
        ae.add_supported_context(_VERIFICATION)
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested), (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_ECHO, self._on_echo), (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_CONN_CLOSE, self._on_closed)]
        try:
            server = ae.start_server((self.options.host, self.options.port), block=False,
                                     evt_handlers=handlers, ssl_context=self._tls)
        except OSError as exc:
            raise XregError(f"cannot listen on {self.options.host}:{self.options.port}: "
                            f"{exc.strerror or exc}") from None
        self._ae = ae
        self._stack.callback(self._close_port)
        return server

    def _close_port(self) -> None:
        with contextlib.suppress(Exception):
            self._server.shutdown()
        for assoc in list(self._ae.active_associations):
            with contextlib.suppress(Exception):
                assoc.abort()

    def _finish(self, interrupted: bool) -> None:
        """Close the port, let the worker finish its batch, record the run, unlock."""
        try:
            self._close_port()
            if self._worker is not None:
                self._worker.join()
            totals = self.totals
            notice = new_site_notice(totals.predicted, totals.held_back, out=str(self.out_root))
            share = totals.held_back / totals.predicted if totals.predicted else 0.0
            self._registry.finish_run(
                self._run_id, totals.counts, status="interrupted" if interrupted else "finished",
                shift_held=totals.held_back, shift_share=round(share, 4),
                new_site=notice is not None)
            self._emit("stopped", self._summary())
        finally:
            self._stack.close()

    # -- association events (pynetdicom's threads) ---------------------------
    def _on_requested(self, event: Any) -> None:
        assoc = event.assoc
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        address = str(assoc.requestor.address)
        if permits(self._allowed, calling, address):
            return
        with self._lock:
            self.totals.rejected += 1
        self._emit("rejected", {"calling_ae": calling, "address": address,
                                "reason": "not in --allow"})
        assoc.acse.send_reject(0x01, 0x01, 0x03)  # permanent: calling AE not recognised
        assoc.kill()

    def _on_accepted(self, event: Any) -> None:
        assoc = event.assoc
        info = _Association(str(assoc.requestor.ae_title).strip(), str(assoc.requestor.address))
        with self._lock:
            self._open[id(assoc)] = info
            self.totals.associations += 1
        for cx in assoc.rejected_contexts:
            self._emit("refused", {
                "calling_ae": info.calling_ae, "address": info.address,
                "sop_class": _uid_name(str(cx.abstract_syntax)),
                "transfer_syntaxes": [str(ts) for ts in cx.transfer_syntax]})

    def _on_echo(self, event: Any) -> int:
        return _SUCCESS

    def _on_store(self, event: Any) -> int:
        info = self._info(event.assoc)
        try:
            self._spool.put(event.encoded_dataset(), f"dicom:{info.calling_ae}@{info.address}")
        except SpoolError as exc:
            with self._lock:
                info.received += 1
                info.failed += 1
                self.totals.received += 1
                self.totals.failed += 1
            self._emit("store_failed", {"calling_ae": info.calling_ae, "address": info.address,
                                        "error": str(exc)})
            return _OUT_OF_RESOURCES
        with self._lock:
            info.received += 1
            info.accepted += 1
            self.totals.received += 1
            self.totals.accepted += 1
            full = self.totals.accepted % self.options.batch == 0
        if full:
            self._wake.set()  # a batch is waiting: no need to wait for the flush
        return _SUCCESS

    def _on_closed(self, event: Any) -> None:
        with self._lock:
            info = self._open.pop(id(event.assoc), None)
        if info is not None:
            self._emit("association", {
                "calling_ae": info.calling_ae, "address": info.address,
                "received": info.received, "accepted": info.accepted, "failed": info.failed})

    def _info(self, assoc: Any) -> _Association:
        with self._lock:
            info = self._open.get(id(assoc))
            if info is None:  # accepted before our handler saw it
                info = self._open[id(assoc)] = _Association(
                    str(assoc.requestor.ae_title).strip(), str(assoc.requestor.address))
        return info

    # -- the worker ------------------------------------------------------------
    def _work(self) -> None:
        last_summary = time.monotonic()
        self._wake.set()  # what the spool still holds goes first
        while True:
            self._wake.wait(self.options.flush_seconds)
            self._wake.clear()
            stopping = self._stop.is_set()
            try:
                self._sort_batches(once=stopping)
            except XregError as exc:
                self._emit("sort_failed", {"error": str(exc)})
            if stopping:
                return
            if time.monotonic() - last_summary >= self.options.summary_seconds:
                last_summary = time.monotonic()
                self._emit("summary", self._summary())

    def _sort_batches(self, once: bool) -> None:
        """Sort full batches while there are any (one only when stopping)."""
        while True:
            result = sort_spool(self.out_root, self.sort_options, intake="listen",
                                lock_held=True, loaded=self._loaded, run_id=self._run_id,
                                limit=self.options.batch, input_root=self._where())
            if result is None:
                return
            shift = result.new_site()
            with self._lock:
                totals = self.totals
                totals.batches += 1
                for status, n in result.counts.items():
                    if n:
                        totals.counts[status] = totals.counts.get(status, 0) + n
                totals.predicted += shift.predicted
                totals.held_back += shift.held_back
                counts = dict(totals.counts)
            self._registry_counts(counts)
            self._emit("batch", {"files": len(result.outcomes),
                                 "counts": {k: v for k, v in result.counts.items() if v}})
            if once or self._stop.is_set() or len(result.outcomes) < self.options.batch:
                return

    def _registry_counts(self, counts: dict[str, int]) -> None:
        # The worker's own connection: sqlite3 objects stay in the thread that uses them.
        from xreg.registry import Registry

        with Registry(self.sort_options.registry or self.out_root / REGISTRY_NAME) as reg:
            reg.record_counts(self._run_id, counts)

    def _summary(self) -> dict[str, Any]:
        with self._lock:
            t = self.totals
            return {"associations": t.associations, "rejected": t.rejected,
                    "received": t.received, "accepted": t.accepted, "failed": t.failed,
                    "batches": t.batches, "sorted": dict(t.counts),
                    "waiting": len(self._spool.pending()), "run_id": self._run_id}


def listen(out_root: Path, options: ListenOptions, sort_options: SortOptions,
           on_event: EventSink | None = None) -> dict[str, Any]:
    """Run the listener until SIGTERM or SIGINT; the final summary."""
    with Listener(out_root, options, sort_options, on_event) as listener, \
            _stop_on_signals(listener.stop):
        while not listener.wait(1.0):
            pass
    return listener._summary()


@contextlib.contextmanager
def _stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: stop())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _uid_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name != uid else f"unknown SOP class {uid}"
