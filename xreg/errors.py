"""The exceptions xreg raises. The library raises; only the CLI prints and exits."""

from __future__ import annotations


class XregError(Exception):
    """Base class of every error xreg raises on purpose."""


class ConfigError(XregError):
    """A configuration value or command-line option is invalid."""


class UnreadableImageError(XregError):
    """A file could not be decoded as a radiograph.

    ``reason`` is a short human phrase (``"truncated file"``,
    ``"no pixel data"``) that is safe to store in the registry: it never
    contains patient data.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class CheckpointError(XregError):
    """A weights file is missing, corrupt, or not an xreg checkpoint."""


class RegistryError(XregError):
    """The registry database is unusable (wrong schema, corrupt)."""


class LockedError(XregError):
    """Another xreg run holds the lock on the output folder."""


class PlacementError(XregError):
    """A file could not be placed at its destination (verification failed)."""


class MetricsInputError(XregError, ValueError):
    """Arrays passed to a metric function have the wrong shape or values."""
