"""``xreg serve``: the thesis's upload app, a registry browser and a review queue.

Optional: needs ``pip install "xreg[serve]"`` (FastAPI, uvicorn, Jinja2,
python-multipart, and the ``train`` extra for the heatmaps).
:func:`xreg.serve.app.create_app` builds the app; the sort path never imports
this package.
"""

from __future__ import annotations

__all__ = ["MISSING_EXTRA", "require_extra"]

MISSING_EXTRA = 'xreg serve needs its extra: pip install "xreg[serve]"'


def require_extra() -> str | None:
    """None when the web extra is installed; else what to install (before any work)."""
    import importlib.util

    for module in ("fastapi", "uvicorn", "jinja2", "multipart", "torch", "captum"):
        if importlib.util.find_spec(module) is None:
            return f"{MISSING_EXTRA} (missing: {module})"
    return None
