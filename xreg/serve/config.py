"""What ``xreg serve`` runs with: the folder, who may in, what they may change."""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from xreg.errors import ConfigError

__all__ = ["ServeConfig", "is_loopback", "new_token"]

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: only this machine can connect."""
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class ServeConfig:
    """One web app over one sorted folder.

    A host other than loopback must have a ``token``. ``reviewer`` names the
    person reviewing (else each browser session gives a name). ``weights``
    and ``hip_weights`` default to the shipped models.
    """

    out_root: Path
    host: str = "127.0.0.1"
    token: str | None = None
    read_only: bool = False
    reviewer: str | None = None
    weights: Path | None = None
    hip_weights: Path | None = None
    max_request_bytes: int = 200 * 1024 * 1024
    max_files: int = 64
    device: str = "cpu"
    registry: Path | None = None

    def __post_init__(self) -> None:
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(f"serving on {self.host} (not loopback) needs a --token")
        if self.token is not None and len(self.token) < 16:
            raise ConfigError("a --token must be at least 16 characters")
        if self.max_request_bytes < 1024:
            raise ConfigError("the request size limit must be at least 1 KiB")
        if not 1 <= self.max_files <= 10_000:
            raise ConfigError("the per-upload file limit must be between 1 and 10000")
        if self.reviewer is not None and not 1 <= len(self.reviewer.strip()) <= 80:
            raise ConfigError("a reviewer name has 1 to 80 characters")

    @property
    def registry_path(self) -> Path:
        return self.registry or self.out_root / "registry.sqlite"
