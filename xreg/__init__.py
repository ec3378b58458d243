"""xreg: sort folders of musculoskeletal radiographs into a patient registry."""

from __future__ import annotations

__version__ = "0.1.0"
