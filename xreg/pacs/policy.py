"""Who may send to ``xreg listen``, over what, and what it offers: pure parts, no network.

The allow-list (``--allow AE[@HOST]``), the TLS context (``--tls-cert``,
``--tls-key``, ``--tls-ca``) and the presentation contexts (radiograph
storage classes with the transfer syntaxes xreg decodes) are decided here,
before any socket opens, so a bad option fails at start with exit 2.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from xreg.errors import ConfigError

__all__ = ["STORAGE_CLASSES", "Allowed", "decodable_syntaxes", "parse_allow", "permits",
           "tls_context"]

#: The radiograph storage SOP classes the listener takes (UID -> name for logs).
STORAGE_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.1": "CR Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
}

#: Transfer syntaxes offered, when this installation's pydicom can decode them.
_SYNTAXES = (
    "1.2.840.10008.1.2.1",     # Explicit VR Little Endian
    "1.2.840.10008.1.2",       # Implicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",     # RLE Lossless
)
_MAX_AE = 16


@dataclass(frozen=True)
class Allowed:
    """One ``--allow`` entry: an AE title, and the addresses it may call from (None: any)."""

    ae_title: str
    addresses: frozenset[str] | None = None


def parse_allow(values: list[str] | tuple[str, ...]) -> tuple[Allowed, ...]:
    """``AE`` or ``AE@HOST`` entries; a host name is resolved once, here."""
    allowed = []
    for value in values:
        ae, _, host = value.partition("@")
        ae = ae.strip()
        if not ae or len(ae) > _MAX_AE or "\\" in ae or not ae.isprintable():
            raise ConfigError(f"--allow {value!r}: the AE title must be 1 to {_MAX_AE} "
                              "printable characters (AE or AE@HOST)")
        addresses = None
        if host:
            try:
                infos = socket.getaddrinfo(host.strip("[]"), None)
            except OSError as exc:
                raise ConfigError(f"--allow {value!r}: cannot resolve {host} ({exc})") from None
            addresses = frozenset(str(info[4][0]) for info in infos)
        allowed.append(Allowed(ae, addresses))
    return tuple(allowed)


def permits(allowed: tuple[Allowed, ...], ae_title: str, address: str) -> bool:
    """Whether a calling AE at ``address`` may associate (no list: everyone)."""
    if not allowed:
        return True
    ae_title = ae_title.strip()
    return any(a.ae_title == ae_title and (a.addresses is None or address in a.addresses)
               for a in allowed)


def tls_context(cert: Path | None, key: Path | None, ca: Path | None) -> ssl.SSLContext | None:
    """A server TLS context; with ``ca`` a client certificate signed by it is required."""
    if cert is None and key is None and ca is None:
        return None
    if cert is None or key is None:
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
        if ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate, key or CA: {exc}") from None
    return context


def decodable_syntaxes() -> list[str]:
    """The offered transfer syntaxes this installation decodes (pydicom's decoders)."""
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import UID

    found = []
    for uid in _SYNTAXES:
        try:
            if get_decoder(UID(uid)).is_available:
                found.append(uid)
        except NotImplementedError:
            continue
    return found
