"""Keyed hashes of identifiers (PatientID, AccessionNumber) for the registry."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

__all__ = ["Pseudonymiser"]


class Pseudonymiser:
    """Keyed hashes (HMAC-SHA256) of identifiers such as PatientID.

    The key lives beside the registry (``registry.sqlite.key``, mode 0600) or
    comes from ``XREG_PATIENT_KEY``, so the registry alone cannot be reversed
    by hashing candidate IDs, while the same patient gets the same key across
    runs.
    """

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def for_registry(cls, registry_path: Path, *, create: bool = True) -> Pseudonymiser:
        env = os.environ.get("XREG_PATIENT_KEY")
        if env:
            return cls(env.encode())
        key_path = registry_path.with_name(registry_path.name + ".key")
        if key_path.exists():
            return cls(key_path.read_bytes())
        key = secrets.token_hex(32).encode()
        if create:
            key_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(key)
                fh.flush()
                os.fsync(fh.fileno())
        return cls(key)

    def __call__(self, value: str | None) -> str | None:
        if not value:
            return None
        return hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()[:32]
