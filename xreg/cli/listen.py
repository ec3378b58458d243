"""``xreg listen``: receive films over DICOM (C-STORE) and sort them into OUT."""

from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from xreg.cli._common import (
    EXIT_USAGE,
    RUNTIME_HELP,
    Device,
    Runtime,
    app,
    err,
    handle_errors,
)
from xreg.cli.sort import HeaderCheck

LISTEN_HELP = """Receive radiographs over DICOM and sort them into OUT, as a service.

A DICOM Storage SCP (C-ECHO, C-STORE) for CR, DX and secondary capture images
in the transfer syntaxes xreg decodes; anything else is refused at
negotiation. Each instance is written into the spool inside OUT (temp name,
fsync, rename, folder fsync) before the sender is told Success; if it cannot
be, the sender gets a failure status and keeps it. A worker sorts the spool in
batches as `xreg sort --mode move` would (same model, guard, layout and
registry), removing a spooled file only once its placement is recorded; a
restart sorts what the spool still holds first. The registry records each
source's sender (dicom:AE@address) and the run's intake (listen).

One listener holds OUT's lock for its whole life: `xreg sort` into OUT exits 3
meanwhile. SIGTERM or SIGINT closes the port, finishes the current batch and
exits 0. Logs name AE titles, addresses and counts, never patient data.
Needs the pacs extra: pip install "xreg\\[pacs]". See docs/pacs.md.

Exit codes: 0 stopped by a signal; 2 usage, config, weights or port error;
3 another run or listener holds the lock on OUT.
"""

_PACS_MODULES = ("pynetdicom",)


@app.command("listen", help=LISTEN_HELP)
def listen_cmd(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="Sorted output folder.")],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every "
                                           "interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=0, max=65535)] = 11112,
    ae_title: Annotated[str, typer.Option(help="This listener's AE title.")] = "XREG",
    allow: Annotated[list[str] | None, typer.Option(
        help="AE or AE@HOST allowed to associate (repeatable); anyone else is rejected "
             "and logged.  [default: any caller]")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS: this listener's certificate "
                                                       "(PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS: its private key (PEM).")] = None,
    tls_ca: Annotated[Path | None, typer.Option(
        help="TLS: require client certificates signed by this CA (PEM).")] = None,
    batch: Annotated[int, typer.Option(help="Spooled files sorted per batch.", min=1,
                                       max=1024)] = 32,
    flush_seconds: Annotated[float, typer.Option(
        help="Sort what is waiting at least this often, even short of a batch.",
        min=0.01)] = 2.0,
    summary_seconds: Annotated[float, typer.Option(
        help="Seconds between summary log lines.", min=1.0)] = 60.0,
    weights: Annotated[Path | None, typer.Option(
        help="Model checkpoint (.pt) to classify with.  [default: XREG_WEIGHTS, else the "
             "shipped one]", envvar="XREG_WEIGHTS")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per model batch.  "
                                                        "[default: 16]", min=1)] = None,
    workers: Annotated[int | None, typer.Option(help="Decoding threads.  [default: 2]",
                                                min=1)] = None,
    device: Annotated[Device | None, typer.Option(help="Where the model runs.  "
                                                       "[default: auto]")] = None,
    runtime: Annotated[Runtime | None, typer.Option(help=RUNTIME_HELP)] = None,
    min_confidence: Annotated[float | None, typer.Option(
        help="Body-part probability below which a film goes to _review.  [default: the "
             "model card's threshold]", min=0.0, max=1.0)] = None,
    layout: Annotated[str | None, typer.Option(
        help="Destination template under OUT, as for xreg sort.")] = None,
    registry: Annotated[Path | None, typer.Option(
        help="Registry database.  [default: OUT/registry.sqlite]")] = None,
    header_vocabulary: Annotated[Path | None, typer.Option(
        help="YAML mapping DICOM header terms to body parts, as for xreg sort.")] = None,
    header_check: Annotated[HeaderCheck | None, typer.Option(
        help="review or off, as for xreg sort.  [default: review]")] = None,
    config: Annotated[Path | None, typer.Option(
        help="YAML file with sort defaults (its 'sort:' section); options win.")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print one JSON object per event (listening, association, rejected, "
                       "refused, batch, summary, stopped) on standard output.")] = False,
) -> None:
    missing = [m for m in _PACS_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        err.print(f'error: xreg listen needs the pacs extra: pip install "xreg[pacs]" '
                  f'(missing: {", ".join(missing)})', markup=False, highlight=False)
        raise typer.Exit(EXIT_USAGE)
    from xreg.config import load_sort_options
    from xreg.pacs.listen import ListenOptions, listen

    log = _json_line if as_json else _text_line
    with handle_errors():
        sort_options = load_sort_options(config, {
            "weights": weights, "mode": "move", "batch_size": batch_size, "workers": workers,
            "device": device.value if device else None,
            "runtime": runtime.value if runtime else None, "min_confidence": min_confidence,
            "min_age": 0.0, "layout": layout, "registry": registry,
            "header_vocabulary": header_vocabulary,
            "header_check": header_check.value if header_check else None})
        options = ListenOptions(
            host=host, port=port, ae_title=ae_title, allow=tuple(allow or ()),
            tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca, batch=batch,
            flush_seconds=flush_seconds, summary_seconds=summary_seconds)
        listen(out_dir, options, sort_options, log)


_write = threading.Lock()


def _json_line(kind: str, fields: dict[str, Any]) -> None:
    line = json.dumps({"time": _now(), "event": kind, **fields}, sort_keys=True)
    with _write:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _text_line(kind: str, fields: dict[str, Any]) -> None:
    with _write:
        err.print(f"{_now()} xreg listen: {describe(kind, fields)}", markup=False,
                  highlight=False)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def describe(kind: str, fields: dict[str, Any]) -> str:
    """One human log line for an event (``--json`` prints the fields instead)."""
    f = fields
    who = f"{f.get('calling_ae')}@{f.get('address')}"
    if kind == "listening":
        tls = " over TLS" + (" (client certificates required)" if f["client_certificates"]
                             else "") if f["tls"] else ""
        allow = ", ".join(f["allow"]) or "any caller"
        return (f"listening as {f['ae_title']} on {f['host']}:{f['port']}{tls}; allowed: "
                f"{allow}; {f['waiting']} file(s) waiting in the spool, "
                f"{f['temporary_removed']} temporary name(s) removed; run {f['run_id']}")
    if kind == "rejected":
        return f"rejected association from {who}: {f['reason']}"
    if kind == "refused":
        return (f"refused presentation context from {who}: {f['sop_class']} in "
                f"{', '.join(f['transfer_syntaxes'])}")
    if kind == "association":
        return (f"association from {who}: {f['received']} received, {f['accepted']} "
                f"accepted, {f['failed']} failed")
    if kind == "store_failed":
        return f"could not spool an instance from {who}: {f['error']}"
    if kind == "batch":
        done = ", ".join(f"{k} {v}" for k, v in sorted(f["counts"].items()))
        return f"sorted a batch of {f['files']}: {done}"
    if kind in ("summary", "stopped"):
        done = ", ".join(f"{k} {v}" for k, v in sorted(f["sorted"].items()) if v) or "nothing"
        head = "stopped" if kind == "stopped" else "summary"
        return (f"{head}: {f['associations']} association(s), {f['rejected']} rejected; "
                f"{f['accepted']} instance(s) accepted, {f['failed']} failed; sorted: {done}; "
                f"{f['waiting']} waiting")
    return f"{kind}: {fields}"
