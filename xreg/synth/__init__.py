"""Phantom radiographs: plan, render and write labelled synthetic datasets.

Public names are imported lazily so that importing ``xreg.synth`` costs
nothing until one is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PhantomSpec": "xreg.synth.spec",
    "Phantom": "xreg.synth.spec",
    "render_phantom": "xreg.synth.render",
    "plan_dataset": "xreg.synth.plan",
    "Item": "xreg.synth.plan",
    "generate_dataset": "xreg.synth.generate",
    "SynthSummary": "xreg.synth.generate",
    "write_contact_sheet": "xreg.synth.sheet",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'xreg.synth' has no attribute {name!r}")
