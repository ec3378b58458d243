"""The ``xreg`` command line: a thin skin over the library.

Each command parses options, makes one library call and renders the result.
Errors become messages and exit codes in ``_common.handle_errors``, and only
there. One module per command group; this package assembles them.
"""

from __future__ import annotations

from xreg.cli import (  # noqa: F401  (registers the commands)
    adapt,
    evaluate,
    explain,
    hip,
    listen,
    patients,
    pull,
    registry,
    serve,
    sort,
    synth,
    train,
    weights,
)
from xreg.cli._common import app

__all__ = ["app"]
