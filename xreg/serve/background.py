"""Serve an app with uvicorn in a background thread, for scripts, tests and benchmarks."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from xreg.errors import XregError

__all__ = ["serve_in_background"]


@contextmanager
def serve_in_background(app: Any, host: str = "127.0.0.1", *,
                        timeout: float = 30.0) -> Iterator[str]:
    """Run ``app`` on a free port of ``host`` while the block runs; yields its base URL.

    Port 0 lets the kernel pick the port, read back once bound, so two runs
    never race for one.
    """
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, name="xreg-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise XregError("the web server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout)
        if thread.is_alive():
            raise XregError("the web server did not stop")
