"""``xreg serve``: the web app over a sorted folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from xreg.cli._common import EXIT_USAGE, app, err, handle_errors


@app.command("serve")
def serve(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="A sorted folder (its "
                                            "registry.sqlite); created if absent.")],
    host: Annotated[str, typer.Option(help="Address to listen on. Anything but loopback "
                                      "needs a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    token: Annotated[str | None, typer.Option(
        help="Every request must carry it (?token=, cookie or Bearer header). Generated and "
             "printed when serving beyond loopback without one.", envvar="XREG_SERVE_TOKEN",
        show_envvar=True)] = None,
    read_only: Annotated[bool, typer.Option(
        "--read-only", help="Browse only: no adding uploads, no reviews, no applying.")] = False,
    reviewer: Annotated[str | None, typer.Option(
        help="Name recorded with every review (else each browser gives one).")] = None,
    weights: Annotated[Path | None, typer.Option(
        help="Classifier checkpoint (default: the shipped one).", envvar="XREG_WEIGHTS")] = None,
    hip_weights: Annotated[Path | None, typer.Option(
        help="Two-view hip checkpoint (default: the shipped one).")] = None,
    max_upload_mb: Annotated[int, typer.Option(
        help="Largest request body, in MB (413 above).", min=1, max=100_000)] = 200,
    max_files: Annotated[int, typer.Option(
        help="Most files in one upload (413 above).", min=1, max=10_000)] = 64,
) -> None:
    """Start the web app on OUT: upload films and see what the model says (with the
    heatmap), upload an AP + lateral hip pair for the fracture score, browse the
    registry (counts, gallery, each film's page), and review what the model was
    unsure of, least confident first. Reviews are rows of their own; "apply" moves
    a film with the same no-overwrite, kill-safe placement as `xreg sort`, under
    the same lock (409 while a sort runs).

    Binds to 127.0.0.1 by default. Stop with Ctrl-C.
    """
    from xreg.serve import require_extra

    missing = require_extra()
    if missing:
        err.print("[bold red]error:[/] " + escape(missing))
        raise typer.Exit(EXIT_USAGE)
    import uvicorn

    from xreg.serve.app import create_app
    from xreg.serve.config import ServeConfig, is_loopback, new_token

    generated = token is None and not is_loopback(host)
    if generated:
        token = new_token()
    with handle_errors():
        config = ServeConfig(out_root=out_dir, host=host, token=token, read_only=read_only,
                             reviewer=reviewer, weights=weights, hip_weights=hip_weights,
                             max_request_bytes=max_upload_mb * 1024 * 1024,
                             max_files=max_files)
        web = create_app(config)
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    err.print(f"xreg serve: {out_dir} at {url}" + (" (token generated)" if generated else "")
              + (" read-only" if read_only else ""), highlight=False)
    uvicorn.run(web, host=host, port=port, log_level="warning", access_log=False)
