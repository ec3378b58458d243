"""xreg: sort folders of musculoskeletal radiographs into a patient registry.

The public API is listed in ``__all__``; everything else is private. Names
are imported lazily so that ``xreg --help`` does not pay for PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_image": "xreg.io",
    "find_images": "xreg.io",
    "XrayImage": "xreg.io",
    "ImageMeta": "xreg.io",
    "build_model": "xreg.model.models",
    "available_archs": "xreg.model.models",
    "ModelCard": "xreg.model.checkpoint",
    "load_checkpoint": "xreg.model.checkpoint",
    "save_checkpoint": "xreg.model.checkpoint",
    "SortOptions": "xreg.config",
    "run_sort": "xreg.sort.runner",
    "SortResult": "xreg.sort.runner",
    "Registry": "xreg.registry",
    "XregError": "xreg.errors",
    "UnreadableImageError": "xreg.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'xreg' has no attribute {name!r}")
